"""Make the benchmark model: SmolLM2-135M-Instruct requantized to Q4_0 by llama.cpp's own quantizer.

Q4_0 is the type llama.cpp's CPU kernels are best at, so it is the fair ground for a speed comparison.
Both runtimes then read the same weights: llama.cpp the GGUF, minigpt its lossless .mgpt copy.

    $MINIGPT_LLAMA_PYTHON bench/make_model.py        # a venv with llama-cpp-python (see bench/compare.py), never a minigpt dependency

Input:   ~/.cache/minigpt/gguf/SmolLM2-135M-Instruct.Q4_1.gguf  (`minigpt pull smollm2-135m-instruct --keep-source` fetches it)
Outputs: ~/.cache/minigpt/bench/SmolLM2-135M-Instruct.Q4_0.gguf
         ~/.cache/minigpt/bench/SmolLM2-135M-Instruct.Q4_0.mgpt   (`minigpt convert`, q4_0 carried over bit for bit)
Options: --src GGUF, --out-dir DIR, --python PY (the interpreter that runs `-m minigpt convert`; default `python3`
         on PATH with this repository on PYTHONPATH), --force (remake files that exist).
"""

import argparse
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")
SRC = CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT_DIR = CACHE / "bench"
STEM = "SmolLM2-135M-Instruct.Q4_0"


def quantize(src, dst, threads):
    """llama.cpp's quantizer with its default parameters, except: Q4_0, requantizing allowed."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed with code {rc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--python", default="python3", help="Interpreter for `-m minigpt convert`.")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if not a.src.is_file():
        raise SystemExit(f"no source GGUF at {a.src}; run `minigpt pull smollm2-135m-instruct --keep-source` first")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    gguf, mgpt = a.out_dir / f"{STEM}.gguf", a.out_dir / f"{STEM}.mgpt"
    if a.force or not gguf.exists():
        print(f"quantizing {a.src} -> {gguf} (llama-cpp-python {llama_cpp.__version__})", file=sys.stderr)
        quantize(a.src, gguf, os.cpu_count() or 1)
    if a.force or not mgpt.exists():
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        subprocess.run([a.python, "-m", "minigpt", "convert", str(gguf), "-o", str(mgpt)], env=env, check=True)
    print(gguf)
    print(mgpt)


if __name__ == "__main__":
    main()
