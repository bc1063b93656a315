"""The numba backend: the compiled kernels' job in JIT-compiled Python, over the stored bytes.

Same functions and contracts as numpy_ref, matmul_q8 included (and the same ValueErrors: the boundary
checks are numpy_ref's). Every weight reaches the kernels as its uint8 bytes [rows, row_bytes] plus a
type code; fp16 fields are decoded bit-exactly (_f16). Float sums accumulate in float32 in a fixed
order (LANES or QK partial sums, combined pairwise); fastmath stays off but for FMA contraction in the
block dots, so the order is the one written here.

    decode  (n < MIN_TILE_N): each weight row is dotted, still quantized, with each input: per block the
            weights are unpacked into QK independent float32 lanes, which LLVM vectorizes (a single
            running sum would need fastmath's reassociation to vectorize).
    prefill (n >= MIN_TILE_N): TILE weight rows are dequantized into a float buffer, then dotted with
            every input while they sit in cache.
    matmul_q8: x quantized per block of 32 as quant.quantize_act; exact integer dot per block, scaled.
Rows are split between threads with prange (one chunk per thread); at 1 thread a serial build runs, so
there is no parallel launch per call. Every result is the same bit for bit whatever the thread count.
Kernels compile on first use and are cached on disk (cache=True): the first call in a fresh
environment pays ~15 s of compilation (~25 s for every kernel), later processes ~0.7 s to load it.
"""

import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from minigpt.kernels.numpy_ref import check_weight, check_get_rows, check_matmul

name = "numba"

# name -> (code the kernels branch on, elements per block, bytes per block)
_QTYPES = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q8_0": (2, 32, 34), "q4_0": (3, 32, 18), "q4_1": (4, 32, 20)}
F32, F16, Q8_0, Q4_0, Q4_1 = 0, 1, 2, 3, 4
QK = 32
LANES = 8       # partial sums per dot product: one AVX register of float32
TILE = 16       # weight rows dequantized together in the prefill path
MIN_TILE_N = 3  # below this many inputs, dotting the quantized rows directly beats dequantizing them

_JIT = dict(cache=True, fastmath=False, nogil=True)
_JIT_DOT = dict(cache=True, fastmath={"contract"}, nogil=True)  # FMA: ~10% faster q4 dots, same order


# --- scalar helpers ------------------------------------------------------------------------------

@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (no conversion)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(bits), codegen


@njit(inline="always", **_JIT)
def _f16(lo, hi):
    """fp16 from its two little-endian bytes -> float32, exact (inf, nan payloads, subnormals, -0)."""
    h = np.uint32(lo) | (np.uint32(hi) << np.uint32(8))
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    em = h & np.uint32(0x7FFF)
    if em < np.uint32(0x0400):  # zero and subnormals: em * 2^-24 is exact in float32
        v = np.float32(em) * np.float32(1.0 / 16777216.0)
        return -v if sign else v
    # rebias the exponent: +112 for normal numbers, +224 so that inf/nan land on exponent 255
    bias = np.uint32(224) if em >= np.uint32(0x7C00) else np.uint32(112)
    return _bits_to_f32((em << np.uint32(13)) + (bias << np.uint32(23)) | sign)


@njit(inline="always", **_JIT)
def _lane_sum(a0, a1, a2, a3, a4, a5, a6, a7):
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


# --- one row: dequantize, or dot with an input ---------------------------------------------------

@njit(**_JIT)
def _dequant_row(row, code, y):
    """row: uint8 [row_bytes], one stored row -> y float32 [cols]."""
    cols = y.shape[0]
    if code == F32:
        y[:] = row.view(np.float32)
    elif code == F16:
        for j in range(cols):
            y[j] = _f16(row[2 * j], row[2 * j + 1])
    elif code == Q8_0:
        q = row.view(np.int8)
        for b in range(cols // QK):
            p = 34 * b
            d = _f16(row[p], row[p + 1])
            for j in range(QK):
                y[QK * b + j] = d * np.float32(q[p + 2 + j])
    elif code == Q4_0:
        for b in range(cols // QK):
            p = 18 * b
            d = _f16(row[p], row[p + 1])
            for j in range(16):
                v = np.int32(row[p + 2 + j])
                y[QK * b + j] = d * np.float32((v & 15) - 8)
                y[QK * b + j + 16] = d * np.float32((v >> 4) - 8)
    else:
        for b in range(cols // QK):
            p = 20 * b
            d = _f16(row[p], row[p + 1])
            m = _f16(row[p + 2], row[p + 3])
            for j in range(16):
                v = np.int32(row[p + 4 + j])
                y[QK * b + j] = d * np.float32(v & 15) + m
                y[QK * b + j + 16] = d * np.float32(v >> 4) + m


@njit(**_JIT)
def _dot_f32(x, y):
    """sum x[j] * y[j], float32, in LANES partial sums."""
    k = x.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0)
    j = 0
    while j + LANES <= k:
        a0 += x[j] * y[j]
        a1 += x[j + 1] * y[j + 1]
        a2 += x[j + 2] * y[j + 2]
        a3 += x[j + 3] * y[j + 3]
        a4 += x[j + 4] * y[j + 4]
        a5 += x[j + 5] * y[j + 5]
        a6 += x[j + 6] * y[j + 6]
        a7 += x[j + 7] * y[j + 7]
        j += LANES
    s = _lane_sum(a0, a1, a2, a3, a4, a5, a6, a7)
    while j < k:
        s += x[j] * y[j]
        j += 1
    return s


@njit(**_JIT)
def _dot_row(row, code, x, y):
    """sum W[j] * x[j] for one stored row; y: float32 [cols] scratch (its first QK are the lanes)."""
    if code == F32:
        return _dot_f32(x, row.view(np.float32))
    if code == F16:
        _dequant_row(row, code, y)
        return _dot_f32(x, y)
    return _dot_blocks(row, code, x, y)


@njit(**_JIT_DOT)
def _dot_blocks(row, code, x, acc):
    """Block types: QK lanes, acc[j] += w[j] * x[j] over the blocks (w dequantized as _dequant_row),
    then the lanes summed. Each lane is its own chain, so LLVM vectorizes it without reassociating."""
    nb = x.shape[0] // QK
    if nb == 0:  # no columns: acc has no lanes either
        return np.float32(0)
    acc[:QK] = 0
    if code == Q8_0:
        q = row.view(np.int8)
        for b in range(nb):
            p, o = 34 * b + 2, QK * b
            d = _f16(row[p - 2], row[p - 1])
            for j in range(QK):
                acc[j] += d * np.float32(q[p + j]) * x[o + j]
    elif code == Q4_0:
        for b in range(nb):
            p, o = 18 * b + 2, QK * b
            d = _f16(row[p - 2], row[p - 1])
            for j in range(16):
                v = np.int32(row[p + j])
                acc[j] += d * np.float32(np.int32(v & 15) - 8) * x[o + j]
                acc[j + 16] += d * np.float32(np.int32(v >> 4) - 8) * x[o + j + 16]
    else:
        for b in range(nb):
            p, o = 20 * b + 4, QK * b
            d = _f16(row[p - 4], row[p - 3])
            m = _f16(row[p - 2], row[p - 1])
            for j in range(16):
                v = np.int32(row[p + j])
                acc[j] += (d * np.float32(np.int32(v & 15)) + m) * x[o + j]
                acc[j + 16] += (d * np.float32(np.int32(v >> 4)) + m) * x[o + j + 16]
    return _fold(acc)


@njit(inline="always", **_JIT)
def _fold(acc):
    """sum acc[:QK] pairwise, in a fixed order."""
    s = _lane_sum(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7])
    s += _lane_sum(acc[8], acc[9], acc[10], acc[11], acc[12], acc[13], acc[14], acc[15])
    t = _lane_sum(acc[16], acc[17], acc[18], acc[19], acc[20], acc[21], acc[22], acc[23])
    t += _lane_sum(acc[24], acc[25], acc[26], acc[27], acc[28], acc[29], acc[30], acc[31])
    return s + t


# --- drivers -------------------------------------------------------------------------------------

@njit(**_JIT)
def _matmul_rows(x, w, code, out, r_lo, r_hi, buf):
    """out[:, r_lo:r_hi] = x @ W[r_lo:r_hi]^T.  x: [n, cols], w: uint8 [rows, row_bytes], buf: [TILE, cols]."""
    n = x.shape[0]
    if n < MIN_TILE_N:
        for r in range(r_lo, r_hi):
            for i in range(n):
                out[i, r] = _dot_row(w[r], code, x[i], buf[0])
        return
    for r0 in range(r_lo, r_hi, TILE):
        nt = min(TILE, r_hi - r0)
        for t in range(nt):
            _dequant_row(w[r0 + t], code, buf[t])
        for i in range(n):
            for t in range(nt):
                out[i, r0 + t] = _dot_f32(x[i], buf[t])


# Serial and parallel drivers are separate functions: numba's disk cache keys on the function, not on
# parallel=, so one function jitted both ways would load whichever build was cached first.

@njit(**_JIT)
def _matmul_serial(x, w, code, out, n_chunks):
    _matmul_rows(x, w, code, out, 0, w.shape[0], np.empty((TILE, x.shape[1]), np.float32))


@njit(parallel=True, **_JIT)
def _matmul_parallel(x, w, code, out, n_chunks):
    rows = w.shape[0]
    step = (rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        buf = np.empty((TILE, x.shape[1]), np.float32)
        _matmul_rows(x, w, code, out, min(rows, c * step), min(rows, (c + 1) * step), buf)


# --- int8 activations (matmul_q8): x quantized per block as quant.quantize_act, integer block dots ---

_TINY = np.float32(np.finfo(np.float32).tiny)


@njit(**_JIT)
def _quantize_act(x, q, d, s):
    """x float32 [n, cols] -> q int8 [n, cols], d, s float32 [n, cols/QK]; float32 steps as quant.quantize_act."""
    for i in range(x.shape[0]):
        for b in range(d.shape[1]):
            o = QK * b
            amax = np.float32(0)
            for j in range(QK):
                a = abs(x[i, o + j])
                amax = a if a > amax else amax
            db = amax / np.float32(127)
            if db < _TINY:
                db = np.float32(0)
            inv = np.float32(1) / db if db != 0 else np.float32(0)
            tot = 0
            for j in range(QK):
                v = np.rint(x[i, o + j] * inv)
                qj = np.int32(v) if np.isfinite(v) else np.int32(0)
                q[i, o + j] = qj
                tot += qj
            d[i, b] = db
            s[i, b] = db * np.float32(tot)


@njit(**_JIT)
def _dot_q8(row, code, qx, dx, sx):
    """One stored row against one quantized input: per block an exact integer dot, scaled in float32."""
    acc = np.float32(0)
    if code == Q8_0:
        qw = row.view(np.int8)
        for b in range(dx.shape[0]):
            p, o = 34 * b + 2, QK * b
            isum = 0
            for j in range(QK):
                isum += np.int32(qw[p + j]) * np.int32(qx[o + j])
            acc += (_f16(row[p - 2], row[p - 1]) * dx[b]) * np.float32(isum)
        return acc
    c = np.int32(8) if code == Q4_0 else np.int32(0)
    step = 18 if code == Q4_0 else 20
    for b in range(dx.shape[0]):
        p, o = step * b + step - 16, QK * b
        isum = 0
        for j in range(16):
            v = np.int32(row[p + j])
            isum += ((v & 15) - c) * np.int32(qx[o + j]) + ((v >> 4) - c) * np.int32(qx[o + j + 16])
        acc += (_f16(row[step * b], row[step * b + 1]) * dx[b]) * np.float32(isum)
        if code == Q4_1:
            acc += _f16(row[p - 2], row[p - 1]) * sx[b]
    return acc


@njit(**_JIT)
def _quantized_act(x):
    n, cols = x.shape
    q = np.empty((n, cols), np.int8)
    d = np.empty((n, cols // QK), np.float32)
    s = np.empty((n, cols // QK), np.float32)
    _quantize_act(x, q, d, s)
    return q, d, s


@njit(**_JIT)
def _matmul_q8_rows(q, d, s, w, code, out, r_lo, r_hi):
    for r in range(r_lo, r_hi):
        for i in range(q.shape[0]):
            out[i, r] = _dot_q8(w[r], code, q[i], d[i], s[i])


@njit(**_JIT)
def _matmul_q8_serial(x, w, code, out, n_chunks):
    q, d, s = _quantized_act(x)
    _matmul_q8_rows(q, d, s, w, code, out, 0, w.shape[0])


@njit(parallel=True, **_JIT)
def _matmul_q8_parallel(x, w, code, out, n_chunks):
    q, d, s = _quantized_act(x)
    rows = w.shape[0]
    step = (rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        _matmul_q8_rows(q, d, s, w, code, out, min(rows, c * step), min(rows, (c + 1) * step))


@njit(**_JIT)
def _get_rows(w, code, ids, out):
    for i in range(ids.shape[0]):
        _dequant_row(w[ids[i]], code, out[i])


@njit(**_JIT)
def _dequantize(w, code, out):
    for r in range(w.shape[0]):
        _dequant_row(w[r], code, out[r])


# --- public API (checks as numpy_ref, then the kernels on the stored bytes) ----------------------

def _bytes(w):
    # w: checked 2-D C-contiguous [rows, width] of any stored dtype -> uint8 [rows, width * itemsize]
    return w.view(np.uint8)


def matmul(x, w, qtype, out=None):
    """x: float32 [n, cols], w: stored [rows, ...] -> out float32 [n, rows] = x @ W^T."""
    rows, cols, out = check_matmul(x, w, qtype, out)
    if x.shape[0] == 0 or rows == 0:
        return out
    _run(_matmul_serial, _matmul_parallel, x, w, qtype, out)
    return out


def matmul_q8(x, w, qtype, out=None):
    """matmul with x first quantized to int8 blocks (quant.quantize_act), as numpy_ref.matmul_q8.
    f32/f16 weights: exactly matmul."""
    rows, cols, out = check_matmul(x, w, qtype, out)
    if _QTYPES[qtype][1] == 1:
        return matmul(x, w, qtype, out)
    if x.shape[0] == 0 or rows == 0:
        return out
    _run(_matmul_q8_serial, _matmul_q8_parallel, x, w, qtype, out)
    return out


def _run(serial, parallel, x, w, qtype, out):
    global _parallel_used
    threads = min(_threads, w.shape[0])
    if threads == 1 or _parallel_used == "before fork":
        serial(x, _bytes(w), _QTYPES[qtype][0], out, 1)
        return
    with _parallel_lock:  # numba's fallback threading layer (workqueue) aborts on concurrent parallel jobs
        _parallel_used = "yes"
        numba.set_num_threads(threads)
        parallel(x, _bytes(w), _QTYPES[qtype][0], out, threads)


def get_rows(w, qtype, ids, out=None):
    """Embedding lookup: float32 [len(ids), cols], row i = W[ids[i]]."""
    cols, ids, out = check_get_rows(w, qtype, ids, out)
    if ids.size and cols:
        _get_rows(_bytes(w), _QTYPES[qtype][0], ids, out)
    return out


def dequantize(w, qtype):
    """Stored weight -> float32 [rows, cols]."""
    rows, cols = check_weight(w, qtype)
    out = np.empty((rows, cols), np.float32)
    if rows and cols:
        _dequantize(_bytes(w), _QTYPES[qtype][0], out)
    return out


# --- threads -------------------------------------------------------------------------------------

_threads = 1
_parallel_lock = threading.Lock()
_parallel_used = "no"  # "yes" once a parallel job ran here; "before fork" in a child forked after that


def _after_fork_in_child():
    # A fork taken while another thread held the lock would leave it held. And a child of a process
    # that ran numba's OpenMP layer is killed by numba if it starts a parallel job: it runs the serial
    # builds instead (same results, one thread).
    global _parallel_lock, _parallel_used
    _parallel_lock = threading.Lock()
    if _parallel_used != "no":
        _parallel_used = "before fork"


os.register_at_fork(after_in_child=_after_fork_in_child)


def set_threads(n):
    """Threads matmul runs on, the calling thread included (1..numba.config.NUMBA_NUM_THREADS)."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"threads must be an integer, got {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if n < 1 or n > limit:
        raise ValueError(f"threads={n} is out of range 1..{limit} (numba's limit, $NUMBA_NUM_THREADS)")
    _threads = int(n)


def get_threads():
    """Threads matmul runs on, the calling thread included."""
    return _threads
