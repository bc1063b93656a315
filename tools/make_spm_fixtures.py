"""Write tests/fixtures/gemma3_tokens.json: llama.cpp's tokenization with Gemma 3's SentencePiece vocab.

Ground truth for tests/test_spm.py. Runs under a Python that has llama-cpp-python (it does not import
minigpt), from the repo root:

    $MINIGPT_LLAMA_VENV/bin/python tools/make_spm_fixtures.py [path/to/gemma-3-270m-q4_k_m.gguf]

The GGUF defaults to the minigpt cache (~/.cache/minigpt/gguf/, or $MINIGPT_CACHE/gguf/). The texts
are tests/fixtures/tokenizer_corpus.json (shared with the BPE fixtures) plus GEMMA_TEXTS below. For
every text it records llama_tokenize's ids with parse_special off and on, without and with BOS
(add_special), and llama_detokenize(remove_special=False, unparse_special=False) of them. It also
records vocab facts: BOS/EOS, add_bos, the end-of-generation ids, a digest of every token's piece.

The same vocabulary is then run with tokenizer.ggml.add_space_prefix = true (a metadata-only copy of
the GGUF in a temporary directory, as Llama 2 vocabularies have it), stored under "space_prefix".
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import llama_cpp
from llama_vocab import copy_metadata, detokenize, token_piece

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "tokenizer_corpus.json"
OUT = ROOT / "tests" / "fixtures" / "gemma3_tokens.json"
DEFAULT_GGUF = (Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt"))
                / "gguf" / "gemma-3-270m-q4_k_m.gguf")

GEMMA_TEXTS = [
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<start_of_turn>user\nTranslate to French: good morning<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn> spaced <end_of_turn>",
    "<bos>",
    "<eos><pad><unk><mask>",
    "<start_of_image><end_of_image>[multimodal]",
    "<unused0><unused17> unused tokens",
    "<START_OF_TURN> is not special",
    "<start_of_turn",
    "text<end_of_turn>text<end_of_turn>",
    " ",
    "  ",
    "     ",
    "a  b   c    d     e",
    "   leading spaces",
    "trailing spaces   ",
    "\n\n\n\n",
    "\t\t\tindented\n\t\t\t\tmore",
    "line one\nline two\r\nline three\rfour",
    "    def f(x):\n        return x * 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "我爱自然语言处理。今天天气很好，我们去公园散步吧！",
    "繁體中文與简体中文混合，還有標點符號「引號」。",
    "日本語のテキスト、한국어 텍스트, and English.",
    "emoji: 😀😃😄😁 🤖 👩‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵",
    "rare: ꙮ 𓀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⸻ 🜲 𐍈 ᚠᛇᚻ",
    "math: ∀x∈ℝ, ∃y: x²+y² ≤ 1 ⇒ |x| ≤ 1; ∑ᵢ aᵢ ∫₀¹ f(t) dt",
    "\u2581 literal lower one eighth block \u2581\u2581",
    "<0x41> is literal text, not a byte token",
    "\x00\x01\x02 control bytes \x7f",
    "zero\u200bwidth\u200cjoiners\u200d and nbsp\u00a0here",
    "Ünïcödé àccénts ñ ç ø å ß",
    "ALL CAPS TEXT AND MiXeD cAsE",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "https://example.com/path?query=1&b=two#frag",
    "user@example.com, +1 (555) 123-4567",
    "3.14159265358979 2.718281828 1e-10 0xDEADBEEF",
    "a" * 50,
    "The quick brown fox jumps over the lazy dog. " * 3,
]


def run(gguf: Path, texts: list[str]) -> tuple[list[dict], object]:
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    cases = []
    for text in texts:
        data = text.encode("utf-8")
        case = {"text": text}
        for name, bos, special in (("ids", False, False), ("ids_special", False, True),
                                   ("ids_bos", True, False), ("ids_bos_special", True, True)):
            case[name] = llm.tokenize(data, add_bos=bos, special=special)
        case["detok"] = detokenize(vocab, case["ids"])
        case["detok_special"] = detokenize(vocab, case["ids_special"])
        case["detok_bos_special"] = detokenize(vocab, case["ids_bos_special"])
        cases.append(case)
    return cases, (llm, vocab)


def main() -> None:
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    texts = json.loads(CORPUS.read_text(encoding="utf-8"))["texts"] + GEMMA_TEXTS
    cases, (llm, vocab) = run(gguf, texts)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    # every token's piece, length-prefixed, hashed: checks token_bytes over the whole vocabulary
    digest = hashlib.sha256()
    for t in range(n_vocab):
        piece = token_piece(vocab, t)
        digest.update(len(piece).to_bytes(4, "little") + piece)

    def token_or_none(t: int):
        return None if t == llama_cpp.LLAMA_TOKEN_NULL else t

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "space_prefix.gguf"
        copy_metadata(gguf, copy, "tokenizer.ggml.add_space_prefix", b"\x01")   # a bool
        prefixed, _ = run(copy, texts)
    keep = ("ids", "ids_special", "ids_bos_special", "detok", "detok_special", "detok_bos_special")
    prefixed = [{k: c[k] for k in keep} for c in prefixed]

    out = {
        "comment": "Generated by tools/make_spm_fixtures.py; do not edit.",
        "llama_cpp_python": llama_cpp.__version__,
        "gguf": gguf.name,
        "n_vocab": n_vocab,
        "bos_id": token_or_none(llama_cpp.llama_vocab_bos(vocab)),
        "eos_id": token_or_none(llama_cpp.llama_vocab_eos(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "pieces_sha256": digest.hexdigest(),
    }

    def line(obj) -> str:      # one line per case keeps the file small and its diffs readable
        return json.dumps(obj, ensure_ascii=False)

    text = line(out)[:-1] + ',\n "cases": [\n' + ",\n".join("  " + line(c) for c in cases)
    text += '\n ],\n "space_prefix": [\n' + ",\n".join("  " + line(c) for c in prefixed) + "\n ]\n}\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} texts, {OUT.stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
