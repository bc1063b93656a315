# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled backend: checks every array at the boundary, then calls csrc/ with the GIL released.

C trusts every size it is given, so nothing reaches it unchecked: dtype, dimensions, C-contiguity,
alignment, shapes that agree, ids in range, and an `out` that overlaps no input. A mismatch is a
ValueError naming the bad value. Same functions and contracts as numpy_ref.

The instruction set (csrc/cpu.c) is chosen once, at import: the best this CPU has, or the one named
by $MINIGPT_ISA ('scalar' forces the portable C; 'auto' or unset is the default). isa() tells which.
"""

import atexit
import os

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uintptr_t

cnp.import_array()

cdef extern from "kernels.h" nogil:
    int MG_OK, MG_EQTYPE, MG_ENOMEM, MG_MAX_THREADS, MG_QK, MG_Q8_BLOCK_BYTES
    int MG_F32, MG_F16, MG_Q8_0, MG_Q4_0, MG_Q4_1
    int MG_ISA_SCALAR, MG_ISA_AVX2, MG_ISA_NEON
    int mg_matmul(const float *x, const void *w, float *out, int qtype,
                  int64_t n, int64_t rows, int64_t cols)
    int mg_matmul_q8(const float *x, const void *w, float *out, int qtype,
                     int64_t n, int64_t rows, int64_t cols)
    void mg_quantize_act(const float *x, int64_t n, int64_t cols, void *out)
    int mg_cpu_best()
    int mg_cpu_init(int isa)
    const char *mg_isa_name()
    int mg_get_rows(const void *w, int qtype, const int64_t *ids, int64_t n_ids,
                    int64_t cols, float *out)
    int mg_dequantize(const void *w, int qtype, int64_t rows, int64_t cols, float *out)
    int mg_set_threads(int n)
    int mg_get_threads()
    void mg_shutdown()

name = "c"

# name -> (code in kernels.h, elements per block, bytes per block, numpy dtype of the stored array)
_QTYPES = {
    "f32": (MG_F32, 1, 4, np.dtype(np.float32)),
    "f16": (MG_F16, 1, 2, np.dtype(np.float16)),
    "q8_0": (MG_Q8_0, 32, 34, np.dtype(np.uint8)),
    "q4_0": (MG_Q4_0, 32, 18, np.dtype(np.uint8)),
    "q4_1": (MG_Q4_1, 32, 20, np.dtype(np.uint8)),
}

# --- instruction set: chosen once, here ------------------------------------------------------------

ISA_ENV_VAR = "MINIGPT_ISA"
_ISAS = {"scalar": MG_ISA_SCALAR, "avx2": MG_ISA_AVX2, "neon": MG_ISA_NEON}


def _init_isa():
    want = os.environ.get(ISA_ENV_VAR, "").strip().lower() or "auto"
    if want != "auto" and want not in _ISAS:
        raise ValueError(f"{ISA_ENV_VAR}={want!r} is not one of auto, {', '.join(_ISAS)}")
    cdef int code = mg_cpu_best() if want == "auto" else _ISAS[want]
    if mg_cpu_init(code) != MG_OK:
        raise ValueError(f"{ISA_ENV_VAR}={want!r}: this CPU or build does not support it")


_init_isa()


def isa():
    """The instruction set the kernels run on: 'avx2', 'neon' or 'scalar'."""
    return mg_isa_name().decode()

# --- boundary checks -------------------------------------------------------------------------------

cdef int _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a)
    cdef uintptr_t b0 = <uintptr_t>cnp.PyArray_DATA(b)
    cdef uintptr_t a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
    cdef uintptr_t b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
    return a0 < b1 and b0 < a1 and a0 != a1 and b0 != b1


cdef cnp.ndarray _check_array(object a, str what, object dtype, int writeable=False):
    """a must be a 2-D, C-contiguous, aligned ndarray of dtype."""
    if not isinstance(a, cnp.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != dtype.num or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise ValueError(f"{what} must have dtype {dtype}, got {a.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {a.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{what} is not aligned for {dtype}")
    if writeable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what} is read-only")
    return arr


cdef tuple _check_weight(object w, object qtype):
    """-> (array, code, rows, cols) for a stored weight of qtype."""
    info = _QTYPES.get(qtype) if isinstance(qtype, str) else None
    if info is None:
        raise ValueError(f"unknown qtype {qtype!r}; expected one of {', '.join(_QTYPES)}")
    code, block, block_bytes, dtype = info
    cdef cnp.ndarray arr = _check_array(w, "w", dtype)
    cdef int64_t rows = arr.shape[0], width = arr.shape[1]
    if block == 1:
        return arr, code, rows, width
    if width % block_bytes:
        raise ValueError(f"a {qtype} weight row of {width} bytes is not a multiple of {block_bytes}")
    return arr, code, rows, width // block_bytes * block


cdef cnp.ndarray _check_out(object out, int64_t n, int64_t cols, tuple inputs):
    if out is None:
        return np.empty((n, cols), dtype=np.float32)
    cdef cnp.ndarray arr = _check_array(out, "out", np.dtype(np.float32), writeable=True)
    if arr.shape[0] != n or arr.shape[1] != cols:
        raise ValueError(f"out has shape {out.shape}, expected {(n, cols)}")
    for a in inputs:
        if _overlap(arr, <cnp.ndarray>a):
            raise ValueError("out overlaps an input array")
    return arr


cdef void _raise_for(int err) except *:
    if err == MG_ENOMEM:
        raise MemoryError("out of memory for matmul scratch space")
    if err != MG_OK:
        raise RuntimeError(f"kernel error {err}")

# --- kernels ---------------------------------------------------------------------------------------

cdef object _matmul(object x, object w, object qtype, object out, bint q8):
    warr, code, rows, cols = _check_weight(w, qtype)
    cdef cnp.ndarray xarr = _check_array(x, "x", np.dtype(np.float32))
    if xarr.shape[1] != cols:
        raise ValueError(f"x has {x.shape[1]} columns, the {qtype} weight has {cols}")
    cdef int64_t n = xarr.shape[0]
    cdef cnp.ndarray oarr = _check_out(out, n, rows, (xarr, warr))
    cdef const float *xp = <const float *>cnp.PyArray_DATA(xarr)
    cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>warr)
    cdef float *op = <float *>cnp.PyArray_DATA(oarr)
    cdef int c = code, err
    cdef int64_t r = rows, k = cols
    with nogil:
        if q8:
            err = mg_matmul_q8(xp, wp, op, c, n, r, k)
        else:
            err = mg_matmul(xp, wp, op, c, n, r, k)
    _raise_for(err)
    return oarr


def matmul(x, w, qtype, out=None):
    """x: float32 [n, cols], w: stored [rows, ...] -> out float32 [n, rows] = x @ W^T."""
    return _matmul(x, w, qtype, out, False)


def matmul_q8(x, w, qtype, out=None):
    """matmul with x quantized to int8 blocks first (quant.quantize_act) and integer dot products:
    out = dequant(quantize_act(x)) @ W^T up to float32 rounding. f32/f16 weights: exactly matmul."""
    return _matmul(x, w, qtype, out, True)


def _quantize_act(x):
    """x: float32 [n, cols], cols a multiple of 32 -> uint8 [n, cols/32 * 40]: the q8 blocks
    (float32 d, float32 s, int8 q[32]) matmul_q8 computes with. For tests against quant.quantize_act."""
    cdef cnp.ndarray xarr = _check_array(x, "x", np.dtype(np.float32))
    cdef int64_t n = xarr.shape[0], cols = xarr.shape[1]
    if cols % MG_QK:
        raise ValueError(f"x has {cols} columns, not a multiple of {MG_QK}")
    cdef cnp.ndarray oarr = np.empty((n, cols // MG_QK * MG_Q8_BLOCK_BYTES), dtype=np.uint8)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(xarr)
    cdef void *op = cnp.PyArray_DATA(oarr)
    with nogil:
        mg_quantize_act(xp, n, cols, op)
    return oarr


def get_rows(w, qtype, ids, out=None):
    """Embedding lookup: float32 [len(ids), cols], row i = W[ids[i]]."""
    warr, code, rows, cols = _check_weight(w, qtype)
    ids_in = np.asarray(ids)
    if ids_in.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {np.shape(ids_in)}")
    if ids_in.size and not np.issubdtype(ids_in.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids_in.dtype}")
    cdef cnp.ndarray idarr = np.ascontiguousarray(ids_in, dtype=np.int64)
    cdef const int64_t *idp = <const int64_t *>cnp.PyArray_DATA(idarr)
    cdef int64_t n_ids = idarr.shape[0], i, nrows = rows
    for i in range(n_ids):
        if idp[i] < 0 or idp[i] >= nrows:
            raise ValueError(f"id {idp[i]} at position {i} is out of range for {nrows} rows")
    cdef cnp.ndarray oarr = _check_out(out, n_ids, cols, (warr,))
    cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>warr)
    cdef float *op = <float *>cnp.PyArray_DATA(oarr)
    cdef int c = code, err
    cdef int64_t k = cols
    with nogil:
        err = mg_get_rows(wp, c, idp, n_ids, k, op)
    _raise_for(err)
    return oarr


def dequantize(w, qtype):
    """Stored weight -> float32 [rows, cols]."""
    warr, code, rows, cols = _check_weight(w, qtype)
    cdef cnp.ndarray oarr = np.empty((rows, cols), dtype=np.float32)
    cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>warr)
    cdef float *op = <float *>cnp.PyArray_DATA(oarr)
    cdef int c = code, err
    cdef int64_t r = rows, k = cols
    with nogil:
        err = mg_dequantize(wp, c, r, k, op)
    _raise_for(err)
    return oarr

# --- threads ---------------------------------------------------------------------------------------

def set_threads(n):
    """Worker threads used by matmul, the calling thread included (1..MG_MAX_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"threads must be an integer, got {n!r}")
    if n < 1 or n > MG_MAX_THREADS:
        raise ValueError(f"threads={n} is out of range 1..{MG_MAX_THREADS}")
    cdef int nn = n, err
    with nogil:
        err = mg_set_threads(nn)
    if err:
        raise OSError(err, f"could only start {mg_get_threads()} of {n} threads")


def get_threads():
    """Threads matmul runs on, the calling thread included."""
    cdef int n
    with nogil:
        n = mg_get_threads()
    return n


def _shutdown():
    with nogil:
        mg_shutdown()


atexit.register(_shutdown)
include "_forward.pxi"
