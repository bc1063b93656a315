"""Digests of ggml's own Q4_K / Q6_K reference quantizers, for tests/test_quant.py's GOLDEN_SHA256.

minigpt.quant's q4_k and q6_k quantizers follow quantize_row_q4_K_ref and quantize_row_q6_K_ref
(ggml-quants.c) bit for bit. This calls those two C functions in llama.cpp's libggml-base (from the
llama-cpp-python install) through ctypes, on the test's golden input, and prints their sha256. It does
not import minigpt.

    $MINIGPT_LLAMA_VENV/bin/python tools/kquant_golden.py [--check N]

--check N also quantizes N random rows of 1024 (normal, heavy-tailed, rows of very different scale)
and compares ggml's bytes with minigpt.quant's (importing minigpt from this checkout: run it with a
Python that has both, e.g. PYTHONPATH=. and the venv's numpy).
"""

import argparse
import ctypes
import glob
import hashlib
import os
import sys

import numpy as np

BLOCK_BYTES = {"q4_k": 144, "q6_k": 210}


def libggml():
    import llama_cpp
    found = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so*"))
    if not found:
        sys.exit("libggml-base not found in the llama_cpp package")
    return ctypes.CDLL(sorted(found)[0])


def ggml_quantize(lib, x, qtype):
    fn = {"q4_k": lib.quantize_row_q4_K_ref, "q6_k": lib.quantize_row_q6_K_ref}[qtype]
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // 256 * BLOCK_BYTES[qtype]), np.uint8)
    for r in range(x.shape[0]):
        fn(ctypes.c_void_p(x[r].ctypes.data), ctypes.c_void_p(out[r].ctypes.data), ctypes.c_int64(x.shape[1]))
    return out


def golden_input():
    # tests/test_quant.py's golden_input, the same float32s on every platform
    i = np.arange(8 * 256, dtype=np.int64)
    x = (((i * 7919) % 1000 - 500) / 37.0).astype(np.float32).reshape(8, 256)
    x[1, 32:64] = 0
    x[2, :32] = 3.0
    x[3, :32] *= np.float32(1e-6)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", type=int, default=0, help="also compare N random rows with minigpt.quant")
    args = ap.parse_args()
    lib = libggml()
    for qtype in BLOCK_BYTES:
        digest = hashlib.sha256(ggml_quantize(lib, golden_input(), qtype).tobytes()).hexdigest()
        print(f'    "{qtype}": "{digest}",')
    if args.check:
        from minigpt import quant
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.standard_normal((args.check // 2, 1024)),
                            rng.standard_t(2, (args.check - args.check // 2, 1024))]).astype(np.float32)
        x *= rng.uniform(1e-4, 1e4, size=(len(x), 1)).astype(np.float32)
        for qtype in BLOCK_BYTES:
            bad = (ggml_quantize(lib, x, qtype) != quant.quantize(x, qtype)).any(axis=1).sum()
            print(f"{qtype}: {bad} of {len(x)} rows differ from ggml's")


if __name__ == "__main__":
    main()
