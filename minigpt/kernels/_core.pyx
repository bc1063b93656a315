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

from minigpt import quant

cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uintptr_t

cnp.import_array()

cdef extern from "kernels.h" nogil:
    int MG_OK, MG_EQTYPE, MG_ENOMEM, MG_MAX_THREADS, MG_QK, MG_Q8_BLOCK_BYTES, MG_Q16_BLOCK_BYTES
    int MG_NQTYPES
    int MG_ISA_SCALAR, MG_ISA_AVX2, MG_ISA_NEON, MG_ISA_AVX512VNNI, MG_X8
    int mg_matmul(const float *x, const void *w, float *out, int qtype,
                  int64_t n, int64_t rows, int64_t cols)
    int mg_matmul_q8(const float *x, const void *w, float *out, int qtype,
                     int64_t n, int64_t rows, int64_t cols)
    void mg_quantize_act(const float *x, int64_t n, int64_t cols, void *out)
    int mg_matmul_q16(const float *x, const void *w, float *out, int qtype,
                      int64_t n, int64_t rows, int64_t cols)
    void mg_quantize_act16(const float *x, int64_t n, int64_t cols, void *out)
    int mg_x8_supported(int qtype)
    int64_t mg_x8_block_bytes(int qtype)
    int mg_pack_x8(const void *w, int qtype, int64_t rows, int64_t cols, void *out)
    int mg_cpu_best()
    ctypedef struct mg_gemm_kernel:
        int nr, mi
    mg_gemm_kernel mg_gemm
    int mg_cpu_init(int isa)
    const char *mg_isa_name()
    int mg_get_rows(const void *w, int qtype, const int64_t *ids, int64_t n_ids,
                    int64_t cols, float *out)
    int mg_dequantize(const void *w, int qtype, int64_t rows, int64_t cols, float *out)
    int MG_SCREEN_MAX_TOP
    int mg_matmul_screened(const float *x, const void *screen, int screen_qtype, const void *w, int qtype,
                           const float *norms, const uint32_t *const *allowed, float *out, int64_t n, int64_t rows,
                           int64_t cols, int64_t top)
    int mg_row_norms(const void *w, int qtype, int64_t rows, int64_t cols, float *out)
    int mg_set_threads(int n)
    int mg_get_threads()
    void mg_shutdown()

    ctypedef struct mg_type_traits:
        const char *name
        int64_t block, block_bytes
    mg_type_traits mg_traits[]

cdef extern from "ops.h" nogil:
    int MG_ATTN_MAX_HEAD_DIM, MG_KV_F32, MG_KV_F16, MG_KV_Q8_0

    ctypedef struct mg_attn_params:
        int64_t n_heads, n_kv_heads, head_dim
        float scale
        int64_t window
        int kv_type

    ctypedef struct mg_ops:
        void (*exp)(const float *x, float *y, int64_t n) noexcept nogil
        void (*f32_to_f16)(const float *x, uint16_t *y, int64_t n) noexcept nogil
        void (*f16_to_f32)(const uint16_t *x, float *y, int64_t n) noexcept nogil
        void (*f32_to_q8_0)(const float *x, uint8_t *y, int64_t rows, int64_t hd) noexcept nogil
        void (*q8_0_to_f32)(const uint8_t *x, float *y, int64_t rows, int64_t hd) noexcept nogil

    ctypedef struct mg_kernel_table:
        pass

    mg_ops mg_lops
    const mg_kernel_table mg_kernels
    void mg_attention(const mg_attn_params *ap, const float *q, const void *kc, const void *vc, float *out,
                      int64_t n, int64_t start, int64_t cap)

name = "c"


def _check_qtype_table():
    """quant.QTYPES (the one table of weight types) and csrc's mg_traits must describe the same types."""
    c = {}
    for code in range(MG_NQTYPES):
        c[mg_traits[code].name.decode()] = (mg_traits[code].block, mg_traits[code].block_bytes, code)
    py = {n: (t.block, t.block_bytes, t.code) for n, t in quant.QTYPES.items()}
    if c != py:
        raise ImportError(f"csrc/kernels.h's weight types {c} differ from minigpt.quant.QTYPES {py}")


_check_qtype_table()
_QTYPES = {n: (t.code, t.block, t.block_bytes, t.dtype) for n, t in quant.QTYPES.items()}

_X8_QTYPES = ("q8_0x8", "q4_0x8", "q4_1x8", "q5_0x8", "q5_1x8", "q4_kx8", "q6_kx8")   # pack_x8's layouts, for matmul_q8/q16 only

# --- instruction set: chosen once, here ------------------------------------------------------------

ISA_ENV_VAR = "MINIGPT_ISA"
_ISAS = {"scalar": MG_ISA_SCALAR, "avx2": MG_ISA_AVX2, "avx512vnni": MG_ISA_AVX512VNNI, "neon": MG_ISA_NEON}


def _init_isa():
    want = os.environ.get(ISA_ENV_VAR, "").strip().lower() or "auto"
    if want != "auto" and want not in _ISAS:
        raise ValueError(f"{ISA_ENV_VAR}={want!r} is not one of auto, {', '.join(_ISAS)}")
    cdef int code = mg_cpu_best() if want == "auto" else _ISAS[want]
    if mg_cpu_init(code) != MG_OK:
        raise ValueError(f"{ISA_ENV_VAR}={want!r}: this CPU or build does not support it")


_init_isa()


def isa():
    """The instruction set the kernels run on: 'avx512vnni', 'avx2', 'neon' or 'scalar'."""
    return mg_isa_name().decode()


def exact_rows():
    """How many input rows matmul still sums each as it sums one row alone (below one GEMM panel: 15
    with AVX2, 7 in portable C and NEON), so that a batch of that many gives each row its own floats
    (matmul_q8 / matmul_q16 over x8 weights: any number)."""
    return mg_gemm.mi - 1

# --- boundary checks -------------------------------------------------------------------------------

cdef int _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a)
    cdef uintptr_t b0 = <uintptr_t>cnp.PyArray_DATA(b)
    cdef uintptr_t a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
    cdef uintptr_t b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
    return a0 < b1 and b0 < a1 and a0 != a1 and b0 != b1


cdef cnp.ndarray _check_array(object a, str what, object dtype, int writeable=False, int ndim=2):
    """a must be an `ndim`-D, C-contiguous, aligned ndarray of dtype."""
    if not isinstance(a, cnp.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != dtype.num or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise ValueError(f"{what} must have dtype {dtype}, got {a.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {a.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{what} is not aligned for {dtype}")
    if writeable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what} is read-only")
    return arr


def check_array(a, what, dtype, shape, writeable=False):
    """a, checked to be a C-contiguous, aligned, native ndarray of dtype and exactly `shape` (and writeable):
    the boundary check of this module, for the C decoder's wrapper (minigpt/engine/_cdecoder.pyx)."""
    arr = _check_array(a, what, np.dtype(dtype), writeable, len(shape))
    if a.shape != tuple(shape):
        raise ValueError(f"{what} has shape {a.shape}, expected {tuple(shape)}")
    return arr


cdef tuple _check_weight(object w, object qtype, bint packed_ok=False):
    """-> (array, code, rows, cols) for a stored weight of qtype (or, if packed_ok, an x8-packed one)."""
    if packed_ok and isinstance(qtype, str) and qtype in _X8_QTYPES:
        return _check_packed(w, qtype)
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


def check_weight(w, qtype):
    """-> (rows, cols) of a stored weight of qtype, or of an x8-packed one (qtype + 'x8'); ValueError
    naming what is wrong otherwise."""
    _, _, rows, cols = _check_weight(w, qtype, packed_ok=True)
    return rows, cols


cdef tuple _check_packed(object w, str qtype):
    """-> (array, code | MG_X8, rows, cols) for a weight packed by pack_x8 as `qtype` ('q5_0x8', ...)."""
    base = qtype[:len(qtype) - 2]
    cdef int code = _QTYPES[base][0]
    if not mg_x8_supported(code):
        raise ValueError(f"{qtype} weights need x8 kernels, which the {isa()} instruction set lacks")
    cdef cnp.ndarray arr = _check_array(w, "w", np.dtype(np.uint8))
    cdef int64_t gb = mg_x8_block_bytes(code), groups = arr.shape[0], width = arr.shape[1]
    if width % gb:
        raise ValueError(f"a {qtype} group of {width} bytes is not a multiple of {gb}")
    return arr, code | MG_X8, groups * 8, width // gb * _QTYPES[base][1]


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

cdef object _matmul(object x, object w, object qtype, object out, int bits):
    """bits: 32 (float32 activations), 16 or 8 (quantized first)"""
    if bits == 32 and isinstance(qtype, str) and qtype in _X8_QTYPES:
        raise ValueError(f"{qtype} (packed) weights go through matmul_q8 or matmul_q16 only")
    warr, code, rows, cols = _check_weight(w, qtype, packed_ok=bits < 32)
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
        if bits == 8:
            err = mg_matmul_q8(xp, wp, op, c, n, r, k)
        elif bits == 16:
            err = mg_matmul_q16(xp, wp, op, c, n, r, k)
        else:
            err = mg_matmul(xp, wp, op, c, n, r, k)
    _raise_for(err)
    return oarr


def matmul(x, w, qtype, out=None):
    """x: float32 [n, cols], w: stored [rows, ...] -> out float32 [n, rows] = x @ W^T."""
    return _matmul(x, w, qtype, out, 32)


def matmul_q8(x, w, qtype, out=None):
    """matmul with x quantized to int8 blocks first (quant.quantize_act) and integer dot products:
    out = dequant(quantize_act(x)) @ W^T up to float32 rounding. f32/f16 weights: exactly matmul.
    Also takes weights packed by pack_x8, with qtype 'q4_0x8', 'q4_1x8', 'q5_0x8', 'q5_1x8', 'q8_0x8',
    'q4_kx8' or 'q6_kx8'."""
    return _matmul(x, w, qtype, out, 8)


def matmul_q16(x, w, qtype, out=None):
    """matmul_q8 with int16 blocks (quant.quantize_act(x, 16)) over a weight packed by pack_x8; other
    weights take matmul's float32 path, which this approximates to ~1e-5 of each block's largest |x|."""
    return _matmul(x, w, qtype, out, 16)


def check_masks(allowed, n, rows):
    """allowed, checked to give each of n inputs None or a bitmask of `rows` rows: an int32 or uint32
    array of ceil(rows / 32) words, bit r % 32 of word r / 32 for row r (llguidance's token bitmask).
    -> (the checked arrays, which must outlive the call, and a uintp array of their addresses, 0 for
    None), or (None, None) for no masks: the boundary check for matmul_screened and the C decoder."""
    if allowed is None:
        return None, None
    if not isinstance(allowed, (list, tuple)) or len(allowed) != n:
        raise ValueError(f"allowed must be None or a list of {n} bitmasks (or None), one per input")
    words = (rows + 31) // 32
    masks = []
    for i, a in enumerate(allowed):
        if a is not None:
            if not isinstance(a, np.ndarray) or a.dtype not in (np.int32, np.uint32) or a.size != words:
                raise ValueError(f"allowed[{i}] must be an int32 or uint32 array of {words} words (a bitmask "
                                 f"of {rows} rows) or None")
            a = check_array(a.reshape(-1), f"allowed[{i}]", a.dtype, (words,))
        masks.append(a)
    return masks, np.array([0 if a is None else a.ctypes.data for a in masks], dtype=np.uintp)


def matmul_screened(x, screen, screen_qtype, w, qtype, norms, top, allowed=None, out=None):
    """The head of x: float32 [n, cols] over w (stored [rows, ...]), screened (csrc/screen.c): out
    [n, rows] as matmul gives it wherever a logit can be among the `top` largest of its row, an int8
    estimate below them elsewhere. screen: w as matmul_q8 takes it (pack_x8's form, or w itself);
    norms: row_norms(w); allowed: None, or per input a grammar's bitmask or None (check_masks): its top
    are the best of the rows it allows. top >= rows or > SCREEN_MAX_TOP: matmul."""
    warr, code, rows, cols = _check_weight(w, qtype)
    sarr, scode, srows, scols = _check_weight(screen, screen_qtype, packed_ok=True)
    if (srows, scols) != (rows, cols):
        raise ValueError(f"the screen has shape {(srows, scols)}, the weight {(rows, cols)}")
    cdef cnp.ndarray narr = check_array(norms, "norms", np.float32, (rows,))
    cdef cnp.ndarray xarr = _check_array(x, "x", np.dtype(np.float32))
    if xarr.shape[1] != cols:
        raise ValueError(f"x has {x.shape[1]} columns, the {qtype} weight has {cols}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    cdef int64_t n = xarr.shape[0], r = rows, k = cols, t = min(top, MG_SCREEN_MAX_TOP + 1)   # more: matmul
    masks, ptrs = check_masks(allowed, n, rows)
    cdef cnp.ndarray oarr = _check_out(out, n, rows, (xarr, warr, sarr, narr))
    cdef const float *xp = <const float *>cnp.PyArray_DATA(xarr)
    cdef const void *sp = cnp.PyArray_DATA(<cnp.ndarray>sarr)
    cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>warr)
    cdef const float *np_ = <const float *>cnp.PyArray_DATA(narr)
    cdef float *op = <float *>cnp.PyArray_DATA(oarr)
    cdef int c = code, sc = scode, err
    cdef const uint32_t *const *mp = NULL   # the masks, per row (None: every row allowed)
    if ptrs is not None:
        mp = <const uint32_t *const *>cnp.PyArray_DATA(ptrs)
    with nogil:
        err = mg_matmul_screened(xp, sp, sc, wp, c, np_, mp, op, n, r, k, t)
    _raise_for(err)
    return oarr


def row_norms(w, qtype):
    """float32 [rows]: the L2 norm of each row of a stored weight, rounded up."""
    return _of_rows(w, qtype, mg_row_norms, False)


SCREEN_MAX_TOP = MG_SCREEN_MAX_TOP


def x8_supported(qtype):
    """True if weights of `qtype` can be packed (pack_x8) and multiplied on this CPU."""
    return qtype in _QTYPES and bool(mg_x8_supported(_QTYPES[qtype][0]))


def pack_x8(w, qtype, out=None):
    """A stored weight [rows, ...] -> the same numbers in the x8 layout (csrc/packed.c), uint8
    [rows / 8, cols / block * x8 block bytes] (block: 32, or 256 for the K-quants), for matmul_q8 with
    qtype + 'x8', in `out` when given. rows must be a multiple of 8."""
    warr, code, rows, cols = _check_weight(w, qtype)
    if not x8_supported(qtype):
        raise ValueError(f"{qtype} weights have no x8 kernels on the {isa()} instruction set")
    if rows % 8:
        raise ValueError(f"pack_x8 needs a multiple of 8 rows, got {rows}")
    cdef int c = code
    cdef int64_t r = rows, k = cols
    shape = (rows // 8, cols // _QTYPES[qtype][1] * mg_x8_block_bytes(c))
    cdef cnp.ndarray oarr
    if out is None:
        oarr = np.empty(shape, dtype=np.uint8)
    else:
        oarr = check_array(out, "out", np.uint8, shape, writeable=True)
        if _overlap(oarr, <cnp.ndarray>warr):
            raise ValueError("out overlaps the weight")
    cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>warr)
    cdef void *op = cnp.PyArray_DATA(oarr)
    with nogil:
        err = mg_pack_x8(wp, c, r, k, op)
    _raise_for(err)
    return oarr


def _quantize_act(x, bits=8):
    """x: float32 [n, cols], cols a multiple of 32 -> uint8 [n, cols/32 * block bytes]: the blocks
    matmul_q8 (bits 8: float32 d, float32 s, int32 sum(q), int8 q[32]; 44 bytes) or matmul_q16 (bits 16: int16 q[32],
    each group of 4 stored as x0, x2, x1, x3; 72 bytes) computes with. For tests against
    quant.quantize_act."""
    cdef cnp.ndarray xarr = _check_array(x, "x", np.dtype(np.float32))
    cdef int64_t n = xarr.shape[0], cols = xarr.shape[1]
    if cols % MG_QK:
        raise ValueError(f"x has {cols} columns, not a multiple of {MG_QK}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    cdef int b = bits
    cdef cnp.ndarray oarr = np.empty((n, cols // MG_QK * (MG_Q8_BLOCK_BYTES if b == 8 else MG_Q16_BLOCK_BYTES)),
                                     dtype=np.uint8)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(xarr)
    cdef void *op = cnp.PyArray_DATA(oarr)
    with nogil:
        if b == 8:
            mg_quantize_act(xp, n, cols, op)
        else:
            mg_quantize_act16(xp, n, cols, op)
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
    return _of_rows(w, qtype, mg_dequantize, True)


ctypedef int (*_rows_fn)(const void *w, int qtype, int64_t rows, int64_t cols, float *out) noexcept nogil


cdef object _of_rows(object w, object qtype, _rows_fn fn, bint whole):
    """fn over a stored weight's rows into float32 [rows, cols] (whole) or [rows]."""
    warr, code, rows, cols = _check_weight(w, qtype)
    cdef cnp.ndarray oarr = np.empty((rows, cols) if whole else rows, dtype=np.float32)
    cdef const void *wp = cnp.PyArray_DATA(<cnp.ndarray>warr)
    cdef float *op = <float *>cnp.PyArray_DATA(oarr)
    cdef int c = code, err
    cdef int64_t r = rows, k = cols
    with nogil:
        err = fn(wp, c, r, k, op)
    _raise_for(err)
    return oarr

# --- threads ---------------------------------------------------------------------------------------

MAX_THREADS = MG_MAX_THREADS


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

# --- attention and the kernel table ----------------------------------------------------------------

def prepare(w, qtype, bits):
    """The form of a weight that matmul at `bits` reads: for quantized activations (bits 8 or 16) its
    x8-packed copy (pack_x8, qtype + 'x8') where this CPU has x8 kernels and rows are a multiple of
    8, else the weight itself. -> (array, qtype)"""
    _check_weight(w, qtype)
    if bits in (8, 16) and x8_supported(qtype) and w.shape[0] % 8 == 0:
        return pack_x8(w, qtype), qtype + "x8"
    if bits not in (8, 16, 32):
        raise ValueError(f"bits must be 8, 16 or 32, got {bits!r}")
    return w, qtype


_KV_CODES = {"f32": MG_KV_F32, "f16": MG_KV_F16, "q8_0": MG_KV_Q8_0}   # quant.KV_TYPES -> enum mg_kv_type


def kv_code(kv_type):
    """The enum mg_kv_type (csrc/ops.h) of one of quant.KV_TYPES."""
    return _KV_CODES[kv_type]


def attention(q, k_cache, v_cache, start, scale=None, window=0):
    """Causal grouped-query attention of n new queries at positions [start, start + n) over the cache
    (numpy_ref.attention's contract). q: float32 [n, n_heads, hd]; caches [n_kv, cap, row], both of one
    of the KV cache's row types (quant.kv_type_of: float32 or float16 [..., hd], q8_0 uint8
    [..., hd + hd // 8]), position t in slot t % cap -> [n, n_heads * hd]."""
    cdef cnp.ndarray qa = _check_array(q, "q", np.dtype(np.float32), False, 3)
    cdef int64_t n = qa.shape[0], hd = qa.shape[2]
    if not isinstance(k_cache, np.ndarray) or k_cache.ndim != 3:
        raise ValueError(f"k_cache must be a 3-D numpy array [n_kv, cap, row], got {type(k_cache).__name__} "
                         f"of shape {np.shape(k_cache)}")
    kv_type = quant.kv_type_of(k_cache, hd)
    dtype = quant.kv_row(kv_type, hd)[0]
    cdef cnp.ndarray ka = _check_array(k_cache, "k_cache", dtype, False, 3)
    cdef cnp.ndarray va = _check_array(v_cache, "v_cache", dtype, False, 3)
    cdef int64_t cap = ka.shape[1]
    cdef mg_attn_params ap
    ap.kv_type = _KV_CODES[kv_type]
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or \
            isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise ValueError(f"start and window must be integers, got {start!r}, {window!r}")
    ap.n_heads, ap.n_kv_heads, ap.head_dim, ap.window = qa.shape[1], ka.shape[0], hd, window
    ap.scale = (<double>hd) ** -0.5 if scale is None else float(scale)
    if (n < 1 or ap.n_heads < 1 or ap.n_kv_heads < 1 or ap.n_heads % ap.n_kv_heads
            or np.shape(v_cache) != np.shape(k_cache) or not 0 < hd <= MG_ATTN_MAX_HEAD_DIM or start < 0 or window < 0
            or not (start + n <= cap or window and cap >= window + n - 1)):
        raise ValueError(f"bad attention shapes q {np.shape(q)}, cache {np.shape(k_cache)}, start {start}")
    cdef cnp.ndarray out = np.empty((n, ap.n_heads * hd), np.float32)
    cdef int64_t s = start
    with nogil:
        mg_attention(&ap, <const float *>cnp.PyArray_DATA(qa), cnp.PyArray_DATA(ka),
                     cnp.PyArray_DATA(va), <float *>cnp.PyArray_DATA(out), n, s, cap)
    return out


# The kernels for another extension module (minigpt/engine/_cdecoder.pyx): one set of ISA slots and
# one thread pool for both. The pointer stays valid while this module is loaded.
kernel_table = PyCapsule_New(<void *>&mg_kernels, b"minigpt.kernels._core.kernel_table", NULL)


def _exp(x):
    """exp of a float32 array through the ISA's exp slot (the one softmax and the gates use). Tests only."""
    cdef cnp.ndarray a = np.array(x, dtype=np.float32, order="C", copy=True)
    cdef cnp.ndarray y = np.empty_like(a)
    cdef int64_t n = a.size
    with nogil:
        mg_lops.exp(<const float *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(y), n)
    return y


def _kv_store(x, kv_type):
    """float32 x [rows, hd] -> the cache rows of kv_type the decoder stores (the ops slots: f32_to_f16,
    f32_to_q8_0; f32 is a copy). Tests only."""
    cdef cnp.ndarray a = np.array(x, dtype=np.float32, order="C", copy=True, ndmin=2)
    cdef int64_t rows = a.shape[0], hd = a.shape[1]
    dtype, width = quant.kv_row(kv_type, hd)
    if a.ndim != 2 or not 0 < hd <= MG_ATTN_MAX_HEAD_DIM:
        raise ValueError(f"x must be [rows, 1..{MG_ATTN_MAX_HEAD_DIM}], got {np.shape(x)}")
    cdef cnp.ndarray y = np.empty((rows, width), dtype)
    if kv_type == "f32":
        y[...] = a
    elif kv_type == "f16":
        with nogil:
            mg_lops.f32_to_f16(<const float *>cnp.PyArray_DATA(a), <uint16_t *>cnp.PyArray_DATA(y), rows * hd)
    else:
        with nogil:
            mg_lops.f32_to_q8_0(<const float *>cnp.PyArray_DATA(a), <uint8_t *>cnp.PyArray_DATA(y), rows, hd)
    return y


def _kv_load(rows, kv_type, hd):
    """Cache rows [n, row] of kv_type -> float32 [n, hd] as attention reads them (f16_to_f32,
    q8_0_to_f32). Tests only."""
    dtype, width = quant.kv_row(kv_type, hd)
    cdef cnp.ndarray a = np.array(rows, dtype=dtype, order="C", copy=True, ndmin=2)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"rows must be [n, {width}], got {np.shape(rows)}")
    cdef int64_t n = a.shape[0], h = hd
    cdef cnp.ndarray y = np.empty((n, hd), np.float32)
    if kv_type == "f32":
        y[...] = a
    elif kv_type == "f16":
        with nogil:
            mg_lops.f16_to_f32(<const uint16_t *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(y), n * h)
    else:
        with nogil:
            mg_lops.q8_0_to_f32(<const uint8_t *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(y), n, h)
    return y
