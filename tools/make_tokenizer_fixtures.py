"""Write tests/fixtures/smollm2_tokens.json: llama.cpp's tokenization of tests/fixtures/tokenizer_corpus.json.

Ground truth for tests/test_tokenizer.py. Runs under a Python that has llama-cpp-python (it does not
import minigpt), from the repo root:

    /work/venvs/llama/bin/python tools/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

The GGUF defaults to the minigpt cache (~/.cache/minigpt/src/, or $MINIGPT_CACHE/src/). For every
corpus text it records llama_tokenize's ids with parse_special off and on (no BOS), and
llama_detokenize(remove_special=False, unparse_special=False) of both. It also records vocab facts:
BOS/EOS, add_bos, the end-of-generation ids, and a digest of every token's piece.

The same vocabulary is then run under other pre-tokenizers (a metadata-only copy of the GGUF with
tokenizer.ggml.pre replaced, in a temporary directory); only the texts whose results differ from
smollm's are stored, under "pre_variants".
"""

import ctypes
import hashlib
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "tokenizer_corpus.json"
OUT = ROOT / "tests" / "fixtures" / "smollm2_tokens.json"
DEFAULT_GGUF = (Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt"))
                / "src" / "SmolLM2-135M-Instruct.Q4_1.gguf")
PRE_VARIANTS = ("gpt-2", "llama-bpe", "qwen2", "default")
FIELDS = ("ids", "ids_special", "detok", "detok_special")

# GGUF metadata value type -> byte size (8 = string, 9 = array: variable)
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def copy_with_pre(src: Path, dst: Path, pre: str) -> None:
    """Write the metadata of GGUF `src` (no tensors) to `dst`, with tokenizer.ggml.pre = `pre`."""
    data = Path(src).read_bytes()
    magic, version, _, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF", src

    def skip_string(pos: int) -> int:
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    def skip_value(pos: int, vtype: int) -> int:
        if vtype == 8:
            return skip_string(pos)
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype in _SCALAR_SIZE:
                return pos + count * _SCALAR_SIZE[etype]
            for _ in range(count):
                pos = skip_value(pos, etype)
            return pos
        return pos + _SCALAR_SIZE[vtype]

    out = bytearray(struct.pack("<4sIQQ", magic, version, 0, n_kv))
    pos = 24
    for _ in range(n_kv):
        key_end = skip_string(pos)
        key = data[pos + 8:key_end].decode()
        vtype = struct.unpack_from("<I", data, key_end)[0]
        end = skip_value(key_end + 4, vtype)
        if key == "tokenizer.ggml.pre":
            value = pre.encode()
            out += data[pos:key_end + 4] + struct.pack("<Q", len(value)) + value
        else:
            out += data[pos:end]
        pos = end
    Path(dst).write_bytes(bytes(out))


def detokenize(vocab, ids: list[int]) -> str:
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, False)
        if n >= 0:
            return buf.raw[:n].decode("utf-8", "replace")
        size = -n + 1


def token_piece(vocab, token: int) -> bytes:
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


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
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    texts = json.loads(CORPUS.read_text(encoding="utf-8"))["texts"]
    cases = run_corpus(gguf, texts)

    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_VARIANTS:
            copy = Path(tmp) / f"{pre}.gguf"
            copy_with_pre(gguf, copy, pre)
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

    text = line(out)[:-1] + ',\n "pre_variants": {\n'
    text += ",\n".join(f"  {line(pre)}: {{\n"
                       + ",\n".join(f"   {line(i)}: {line(c)}" for i, c in changed.items()) + "\n  }"
                       for pre, changed in variants.items())
    text += '\n },\n "cases": [\n' + ",\n".join("  " + line(c) for c in cases) + "\n ]\n}\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} texts, {OUT.stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
