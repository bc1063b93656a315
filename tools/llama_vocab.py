"""Helpers the tokenizer fixture tools share. Runs under a Python with llama-cpp-python, not minigpt.

detokenize and token_piece call llama.cpp's C API with a growing buffer; copy_metadata writes a
metadata-only copy of a GGUF with one key's value replaced, to run the same vocabulary under another
setting without touching the original file.
"""

import ctypes
import struct
from pathlib import Path

import llama_cpp

# GGUF metadata value type -> byte size (8 = string, 9 = array: variable)
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def detokenize(vocab, ids: list[int]) -> str:
    """llama_detokenize(remove_special=False, unparse_special=False)."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 64 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, False)
        if n >= 0:
            return buf.raw[:n].decode("utf-8", "replace")
        size = -n + 1


def token_piece(vocab, token: int) -> bytes:
    """llama_token_to_piece(lstrip=0, special=False): the bytes a token renders as."""
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def copy_metadata(src: Path, dst: Path, key: str, value: bytes) -> None:
    """Write the metadata of GGUF `src` (no tensors) to `dst`, with `key`'s value bytes (after its type)
    replaced by `value`, encoded as that type is: e.g. struct.pack('<Q', len(s)) + s for a string."""
    data = Path(src).read_bytes()
    magic, version, _, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF", src

    def skip(pos: int, vtype: int) -> int:
        if vtype == 8:
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype in _SCALAR_SIZE:
                return pos + count * _SCALAR_SIZE[etype]
            for _ in range(count):
                pos = skip(pos, etype)
            return pos
        return pos + _SCALAR_SIZE[vtype]

    out = bytearray(struct.pack("<4sIQQ", magic, version, 0, n_kv))
    pos, found = 24, False
    for _ in range(n_kv):
        key_end = skip(pos, 8)
        vtype = struct.unpack_from("<I", data, key_end)[0]
        end = skip(key_end + 4, vtype)
        if data[pos + 8:key_end].decode() == key:
            out += data[pos:key_end + 4] + value
            found = True
        else:
            out += data[pos:end]
        pos = end
    assert found, f"{src} has no {key} to replace"
    Path(dst).write_bytes(bytes(out))
