"""Write a byte-level BPE tokenizer fixture: llama.cpp's tokenization of tests/fixtures/tokenizer_corpus.json
(plus the preset's own texts).

Ground truth for tests/test_tokenizer.py (smollm2_tokens.json) and tests/test_qwen2.py (qwen2_tokens.json).
Runs under a Python that has llama-cpp-python (it does not import minigpt), from the repo root:

    $MINIGPT_LLAMA_VENV/bin/python tools/make_tokenizer_fixtures.py [--model-name smollm2|qwen2] [GGUF]

The GGUF defaults to the preset's in the minigpt cache (~/.cache/minigpt/, or $MINIGPT_CACHE/). For every
text it records llama_tokenize's ids with parse_special off and on (no BOS), and
llama_detokenize(remove_special=False, unparse_special=False) of both. It also records vocab facts:
BOS/EOS, add_bos, the end-of-generation ids, and a digest of every token's piece.

For smollm2 the same vocabulary is then run under other pre-tokenizers (a metadata-only copy of the GGUF
with tokenizer.ggml.pre replaced, in a temporary directory); only the texts whose results differ from
smollm's are stored, under "pre_variants".
"""

import argparse
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_vocab import copy_metadata, detokenize, token_piece

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "tokenizer_corpus.json"
CACHE = Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt"))
FIELDS = ("ids", "ids_special", "detok", "detok_special")

# Qwen2.5's own cases: its ChatML and tool markup, fill-in-the-middle and repo tokens, '</s>' (a normal
# token llama.cpp makes an end-of-generation one), single digits, Chinese, code and whitespace runs.
QWEN2_TEXTS = [
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n北京是哪个国家的首都？<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n写一个 Python 函数，计算斐波那契数列。<|im_end|>\n<|im_start|>assistant\n```python\n"
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```<|im_end|>",
    "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}\n</tools>\n"
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"上海\"}}\n</tool_call>",
    "<tool_response>\n{\"temperature\": 21}\n</tool_response>",
    "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n<|fim_middle|>return a + b<|fim_pad|>",
    "<|repo_name|>minigpt\n<|file_sep|>minigpt/__init__.py\nimport numpy as np<|endoftext|>",
    "</s> is text here, <s> too; <|im_start|> <|im_end|><|im_end|>",
    "<|IM_START|> <|im_start <|vision_start|><|vision_pad|><|image_pad|><|video_pad|><|box_start|>",
    "<|object_ref_start|>猫<|object_ref_end|><|quad_start|>(1,2)<|quad_end|><|vision_end|>",
    "12345678901234567890 3.14159 2024年12月3日 第1章 ２０２４",
    "人工智能（AI）是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "我爱北京天安门。今天天气很好，我们去公园散步吧！你觉得呢？",
    "繁體中文：電腦、軟體、網路。簡體中文：电脑、软件、网络。",
    "混合 mixed 文本 text，中英文 punctuation：「引号」『双引号』《书名号》……——",
    "日本語のテキスト、한국어 텍스트, русский текст, ελληνικά, العربية, עברית, हिन्दी",
    "    def forward(self, x):\n        return self.proj(F.silu(self.gate(x)) * self.up(x))\n",
    "\t\tif (n <= 1) {\n\t\t\treturn n;\n\t\t}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "SELECT id, name FROM users WHERE created_at >= '2024-01-01' ORDER BY id DESC LIMIT 10;",
    "const f = async (x) => { await fetch(`/api/${x}`); };  // 注释：异步请求",
    "x = [i ** 2 for i in range(10) if i % 2 == 0]  # 列表推导式",
    "   \n\n\n    \t \r\n\r\n          end",
    " " * 33 + "x" + "\n" * 7 + "\t" * 5,
    "emoji: 😀😃😄😁 🤖 👩‍👩‍👧‍👦 🏳️‍🌈 🇨🇳🇫🇷 ❤️ 👍🏽 🐍",
    "zero\u200bwidth\u200cjoiners\u200d and nbsp\u00a0here \ufeffbom",
    "\x00\x01\x1d control bytes \x7f and ß é ñ ø",
]


@dataclass(frozen=True)
class Preset:
    gguf: str                  # the GGUF in the minigpt cache
    out: str                   # tests/fixtures/<out>
    texts: tuple               # beyond tokenizer_corpus.json
    pre_variants: tuple        # other tokenizer.ggml.pre values to run the vocabulary under


PRESETS = {
    "smollm2": Preset("gguf/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2_tokens.json", (),
                      ("gpt-2", "llama-bpe", "qwen2", "default")),
    "qwen2": Preset("gguf/qwen2.5-coder-0.5b-instruct.gguf", "qwen2_tokens.json", tuple(QWEN2_TEXTS), ()),
}

def run_corpus(gguf: Path, texts: list[str]) -> list[dict]:
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    cases = []
    for text in texts:
        data = text.encode("utf-8")
        plain = llm.tokenize(data, add_bos=False, special=False)
        special = llm.tokenize(data, add_bos=False, special=True)
        cases.append({"text": text, "ids": plain, "ids_special": special,
                      "detok": detokenize(vocab, plain), "detok_special": detokenize(vocab, special)})
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", nargs="?", help="the GGUF (default: the preset's in the minigpt cache)")
    ap.add_argument("--model-name", choices=list(PRESETS), default="smollm2")
    args = ap.parse_args()
    preset = PRESETS[args.model_name]
    gguf = Path(args.gguf) if args.gguf else CACHE / preset.gguf
    out_path = ROOT / "tests" / "fixtures" / preset.out
    texts = json.loads(CORPUS.read_text(encoding="utf-8"))["texts"] + list(preset.texts)
    cases = run_corpus(gguf, texts)

    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in preset.pre_variants:
            copy = Path(tmp) / f"{pre}.gguf"
            copy_metadata(gguf, copy, "tokenizer.ggml.pre", struct.pack("<Q", len(pre)) + pre.encode())
            changed = {}
            for i, (case, base) in enumerate(zip(run_corpus(copy, texts), cases)):
                if any(case[k] != base[k] for k in FIELDS):
                    changed[str(i)] = {k: case[k] for k in FIELDS}
            variants[pre] = changed

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    # every token's piece, length-prefixed, hashed: checks token_bytes over the whole vocabulary
    digest = hashlib.sha256()
    for t in range(n_vocab):
        piece = token_piece(vocab, t)
        digest.update(len(piece).to_bytes(4, "little") + piece)

    def token_or_none(t: int):
        return None if t == llama_cpp.LLAMA_TOKEN_NULL else t

    out = {
        "comment": "Generated by tools/make_tokenizer_fixtures.py; do not edit.",
        "llama_cpp_python": llama_cpp.__version__,
        "gguf": gguf.name,
        "n_vocab": n_vocab,
        "bos_id": token_or_none(llama_cpp.llama_vocab_bos(vocab)),
        "eos_id": token_or_none(llama_cpp.llama_vocab_eos(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "pieces_sha256": digest.hexdigest(),
    }
    # one line per case keeps the file small and its diffs readable
    def line(obj) -> str:
        return json.dumps(obj, ensure_ascii=False)

    text = line(out)[:-1]
    if variants:
        text += ',\n "pre_variants": {\n'
        text += ",\n".join(f"  {line(pre)}: {{\n"
                           + ",\n".join(f"   {line(i)}: {line(c)}" for i, c in changed.items()) + "\n  }"
                           for pre, changed in variants.items())
        text += "\n }"
    text += ',\n "cases": [\n' + ",\n".join("  " + line(c) for c in cases) + "\n ]\n}\n"
    out_path.write_text(text, encoding="utf-8")
    print(f"wrote {out_path.relative_to(ROOT)}: {len(cases)} texts, {out_path.stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
