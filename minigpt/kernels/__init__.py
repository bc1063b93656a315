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
    set_threads(n) / get_threads()     threads the kernels use (the numpy backend only records n)
    name, isa()                        the backend's name; the instruction set it runs on (or None)

Backends: 'c' (compiled, minigpt/kernels/_core.pyx over csrc/; the default when it is built),
'numba' (numba_.py, JIT-compiled; listed when numba is installed, imported on first use since importing
numba takes ~0.5 s) and 'numpy' (numpy_ref.py, the oracle). Stored weight layouts: minigpt/quant.py.
"""

import importlib.util
import os

from minigpt.errors import MinigptError
from minigpt.kernels import numpy_ref

try:
    from minigpt.kernels import _core
except ImportError as e:  # not built: python setup.py build_ext --inplace, or pip install .
    _core = None
    _core_error = e

ENV_VAR = "MINIGPT_BACKEND"
PROTOCOL = ("name", "isa", "matmul", "matmul_q8", "matmul_q16", "prepare", "attention", "get_rows", "dequantize",
            "set_threads", "get_threads")   # what every backend module has (tests/test_kernels.py checks)

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


def get_backend(name=None):
    """The backend module called `name`; None reads $MINIGPT_BACKEND, else the default."""
    if name is None:
        name = os.environ.get(ENV_VAR) or default_backend()
    if name in _BACKENDS and _BACKENDS[name] is None:  # numba: imported on first use
        try:
            from minigpt.kernels import numba_
        except ImportError as e:
            raise MinigptError(f"the numba backend cannot be imported ({e})") from None
        _BACKENDS[name] = numba_
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name == "c":
        raise MinigptError(f"the compiled backend 'c' is not built ({_core_error}); "
                           f"available: {', '.join(available_backends())}")
    raise MinigptError(f"unknown kernel backend {name!r}; available: {', '.join(available_backends())}")
