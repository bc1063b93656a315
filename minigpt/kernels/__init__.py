"""Kernel backends: the same functions on each, over arrays and shapes only (a leaf: no file, config,
tensor or architecture is known below this line).

    matmul(x, w, qtype, out=None)      x: float32 [n, cols], w: stored [rows, ...] -> float32 [n, rows] = x @ W^T
    matmul_q8(x, w, qtype, out=None)   the same with x rounded to int8 blocks first (quant.quantize_act)
    matmul_q16(x, w, qtype, out=None)  ... to int16 blocks
    prepare(w, qtype, bits)            -> (array, qtype): the form matmul at `bits` reads (x8-packed in C)
    attention(q, k_cache, v_cache, start, scale=None, window=0)
                                       causal grouped-query attention over a cache -> float32 [n, heads * hd]
    get_rows(w, qtype, ids, out=None)  -> float32 [len(ids), cols]   (embedding lookup)
    dequantize(w, qtype)               -> float32 [rows, cols]
    set_threads(n) / get_threads()     threads the kernels use, 1..MAX_THREADS (the numpy backend only records n)
    name, isa()                        the backend's name; the instruction set it runs on (or None)

The compiled backend also has pack_x8, matmul_screened and row_norms, which the engine uses for a
screened head (csrc/screen.c; numpy_ref has twins of the last two).

Backends: 'c' (compiled, minigpt/kernels/_core.pyx over csrc/; the default when it is built),
'numba' (numba_.py, JIT-compiled; listed when numba is installed, imported on first use since importing
numba takes ~0.5 s) and 'numpy' (numpy_ref.py, the oracle). Stored weight layouts: minigpt/quant.py.
When the compiled backend is missing, choosing the default backend says so once on stderr.
"""

import importlib
import importlib.util
import os
import sys

from minigpt.errors import CLIP_ARG, ArgumentError, MinigptError, clip
from minigpt.kernels import numpy_ref

try:
    _core = importlib.import_module(__name__ + "._core")
    _core_missing = None
except ImportError as e:  # not built: python setup.py build_ext --inplace, or pip install .
    _core = None
    _core_missing = (f"not built in {os.path.dirname(os.path.abspath(__file__))}"
                     if isinstance(e, ModuleNotFoundError) and e.name == __name__ + "._core"
                     else " ".join(str(e).split()))   # e.g. built for another Python: one line

ENV_VAR = "MINIGPT_BACKEND"
PROTOCOL = ("name", "isa", "matmul", "matmul_q8", "matmul_q16", "prepare", "attention", "get_rows", "dequantize",
            "set_threads", "get_threads")   # what every backend module has (tests/test_kernels.py checks)

# The most threads a backend takes (numba: fewer when $NUMBA_NUM_THREADS is lower); minigpt.load checks it
MAX_THREADS = numpy_ref.MAX_THREADS

_BACKENDS = {"numpy": numpy_ref}
if _core is not None:
    _BACKENDS["c"] = _core
if importlib.util.find_spec("numba") is not None:
    _BACKENDS["numba"] = None  # imported by get_backend


def available_backends():
    """Names of the backends that can be used here, the default first."""
    return sorted(_BACKENDS, key=lambda name: name != default_backend())


def default_backend():
    return "c" if "c" in _BACKENDS else "numpy"


def core_missing():
    """Why the compiled backend cannot be imported here (one line), or None when it can."""
    return _core_missing


_warned = False


def _warn_once():
    # a missing build makes every token much slower: say so when it starts mattering, never in silence
    global _warned
    if _core_missing is not None and not _warned:
        _warned = True
        print(f"minigpt: the compiled kernels are not available ({_core_missing}); running on the slow numpy "
              "backend. Reinstall with `pip install .` (or build in place: python setup.py build_ext --inplace)",
              file=sys.stderr, flush=True)


def get_backend(name=None):
    """The backend module called `name`; None reads $MINIGPT_BACKEND, else the default (with a warning on
    stderr, once, when the default is numpy because the compiled kernels are missing)."""
    if name is None:
        name = os.environ.get(ENV_VAR)
        if not name:
            name = default_backend()
            _warn_once()
    if name in _BACKENDS and _BACKENDS[name] is None:  # numba: imported on first use
        try:
            from minigpt.kernels import numba_
        except ImportError as e:
            raise MinigptError(f"the numba backend cannot be imported ({e})") from None
        _BACKENDS[name] = numba_
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name == "c":
        raise MinigptError(f"the compiled backend 'c' is not built ({_core_missing}); "
                           f"available: {', '.join(available_backends())}")
    raise ArgumentError(f"unknown kernel backend {clip(name, CLIP_ARG)}; available: {', '.join(available_backends())}")
