"""The numba backend: the compiled kernels' job in JIT-compiled Python, over the stored bytes.

Same functions and contracts as numpy_ref, matmul_q8 and attention included (and the same ValueErrors:
the boundary checks are numpy_ref's); attention (numba_attention.py) runs on set_threads' threads rather
than BLAS's. Every weight reaches the kernels as its uint8 bytes [rows, row_bytes] plus a type code;
fp16 fields are decoded bit-exactly (_f16).

    matmul:    weight rows are dequantized NR at a time into a float32 tile, then the tile is dotted
               with the inputs four at a time (NR x 4 sums in one pass over the columns, each weight
               and input value loaded once for four products), or one at a time for the last n % 4.
               Below NI inputs (decode) the 32-element block types skip the tile: each stored row is
               dotted with x in vector lanes, summed once per row (numba_decode.py); the K-quants
               (q4_k, q6_k) by plain loops per super-block (numba_decode.py too). The block scales
               are decoded once per weight: cached for read-only weights (the engine's mmap views,
               which cannot change), decoded per call otherwise.
    matmul_q8: x quantized per block of 32 exactly as quant.quantize_act. Below NI inputs (decode), for
               the 32-element block types: int8 block dots of the codes, exact in integers, scaled per
               block (numba_decode.py); the K-quants take x rounded to d * q through matmul's dots.
               Otherwise x turned back into float32 d*q, then matmul's tiles. Either way
               dequant(q8(x)) @ W^T, the contract, to float32 rounding.
    matmul_q16: x rounded to int16 blocks (quant.quantize_act(x, 16)), then matmul.
The dots let LLVM reassociate float sums (fastmath 'reassoc') so it can vectorize them over the
columns: the order is then the compiler's, fixed per compiled kernel, so each output is summed the
same way whatever the thread count or the call. dequantize and get_rows stay bit-exact (no fastmath).
Rows are split between threads with prange (one chunk of whole tiles per thread); at 1 thread a serial
build runs, so there is no parallel launch per call.
Kernels compile on first use and are cached on disk (cache=True): the first call in a fresh
environment pays ~15-30 s of compilation, later processes ~1 s to load it.
"""

import os
import threading
import weakref

import numba
import numpy as np
from numba import njit, prange

from minigpt import quant
from minigpt.kernels import numba_attention, numba_decode
from minigpt.kernels import numpy_ref
from minigpt.kernels.numba_attention import half_to_f32
from minigpt.kernels.numpy_ref import check_get_rows, check_matmul, check_weight

name = "numba"

# name -> (code the kernels branch on, elements per block, bytes per block)
_QTYPES = {n: (t.code, t.block, t.block_bytes) for n, t in quant.QTYPES.items()}
F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K = (
    _QTYPES[n][0] for n in ("f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k"))
_BLOCK = {code: block for code, block, _ in _QTYPES.values()}
_BLOCK_BYTES = {code: block_bytes for code, _, block_bytes in _QTYPES.values()}
_DECODE_CODES = (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)   # the types numba_decode's vector-IR row dots read
_K_CODES = (Q4_K, Q6_K)                          # numba_decode's K-quant row dots
_HAS_M = (Q4_1, Q5_1, Q4_K)   # a second fp16 after d: q4_1's and q5_1's minimum, q4_k's dmin
QK = 32
NR = 4   # weight rows per tile; thread chunks are whole tiles
NI = 4   # inputs dotted with a tile in one pass

_JIT = dict(cache=True, fastmath=False, nogil=True)
_JIT_DOT = dict(cache=True, fastmath={"contract", "reassoc"}, nogil=True)  # vectorized float sums


# --- scalar helpers ------------------------------------------------------------------------------

@njit(inline="always", **_JIT)
def _f16(lo, hi):
    """fp16 from its two little-endian bytes -> float32, exact (inf, nan payloads, subnormals, -0)."""
    return half_to_f32(np.uint32(lo) | (np.uint32(hi) << np.uint32(8)))


@njit(inline="always", **_JIT)
def _u32(row, p):
    """The little-endian u32 at row[p:p + 4] (q5's qh: bit j is bit 4 of code j)."""
    return (np.uint32(row[p]) | (np.uint32(row[p + 1]) << np.uint32(8)) | (np.uint32(row[p + 2]) << np.uint32(16))
            | (np.uint32(row[p + 3]) << np.uint32(24)))


@njit(inline="always", **_JIT)
def _q5(v, h, j):
    """q5 codes j and j + 16 (0..31) from nibble byte v and the block's qh h."""
    lo = np.int32(v & 15) | np.int32((h >> np.uint32(j)) & np.uint32(1)) << 4
    hi = np.int32(v >> 4) | np.int32((h >> np.uint32(j + 16)) & np.uint32(1)) << 4
    return lo, hi


# --- one row, exact: dequantize and get_rows -----------------------------------------------------

@njit(**_JIT)
def _dequant_row(row, code, y):
    """row: uint8 [row_bytes], one stored row -> y float32 [cols], bit for bit as quant.dequantize."""
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
    elif code == Q4_K or code == Q6_K:
        _dequant_k_row(row, code, y)
    elif code == Q4_1:
        for b in range(cols // QK):
            p = 20 * b
            d = _f16(row[p], row[p + 1])
            m = _f16(row[p + 2], row[p + 3])
            for j in range(16):
                v = np.int32(row[p + 4 + j])
                y[QK * b + j] = d * np.float32(v & 15) + m
                y[QK * b + j + 16] = d * np.float32(v >> 4) + m
    elif code == Q5_0:
        for b in range(cols // QK):
            p = 22 * b
            d = _f16(row[p], row[p + 1])
            h = _u32(row, p + 2)
            for j in range(16):
                lo, hi = _q5(np.int32(row[p + 6 + j]), h, j)
                y[QK * b + j] = d * np.float32(lo - 16)
                y[QK * b + j + 16] = d * np.float32(hi - 16)
    else:
        for b in range(cols // QK):
            p = 24 * b
            d = _f16(row[p], row[p + 1])
            m = _f16(row[p + 2], row[p + 3])
            h = _u32(row, p + 4)
            for j in range(16):
                lo, hi = _q5(np.int32(row[p + 8 + j]), h, j)
                y[QK * b + j] = d * np.float32(lo) + m
                y[QK * b + j + 16] = d * np.float32(hi) + m


@njit(**_JIT)
def _dequant_k_row(row, code, y):
    """_dequant_row for the K-quants (layouts: quant_k.q4_k_fields, quant_k.q6_k_fields), in ggml's float32
    order: q4_k (d*sc)*q - (dmin*m), q6_k (d*sc)*(q - 32)."""
    for b in range(y.shape[0] // 256):
        o = 256 * b
        if code == Q4_K:
            p = 144 * b
            d, dmin = _f16(row[p], row[p + 1]), _f16(row[p + 2], row[p + 3])
            for j in range(8):
                s0, s4 = np.int32(row[p + 4 + j % 4]), np.int32(row[p + 8 + j % 4])
                if j < 4:
                    sc, mn = s0 & 63, s4 & 63
                else:
                    s8 = np.int32(row[p + 8 + j])
                    sc, mn = (s8 & 15) | ((s0 >> 6) << 4), (s8 >> 4) | ((s4 >> 6) << 4)
                d1, m1 = d * np.float32(sc), dmin * np.float32(mn)
                for l in range(32):
                    q = (np.int32(row[p + 16 + 32 * (j // 2) + l]) >> (4 * (j % 2))) & 15
                    y[o + 32 * j + l] = d1 * np.float32(q) - m1
        else:
            p = 210 * b
            d = _f16(row[p + 208], row[p + 209])
            for i in range(256):
                h, k, l = i // 128, i % 128 // 32, i % 32
                lo = (np.int32(row[p + 64 * h + 32 * (k % 2) + l]) >> (4 * (k // 2))) & 15
                hi = (np.int32(row[p + 128 + 32 * h + l]) >> (2 * k)) & 3
                sc = np.int32(row[p + 192 + i // 16])
                ds = d * np.float32(sc - 256 if sc > 127 else sc)
                y[o + i] = ds * np.float32((lo | (hi << 4)) - 32)


# --- matmul: block scales, weight tiles, tile dots -------------------------------------------------

@njit(**_JIT)
def _block_scales(w, bb, at, has_m, d, m):
    """w: uint8 [rows, row_bytes] of a block type, bb bytes a block, d at byte `at` of it -> d, m float32
    [rows, nb] (m, if has_m: the fp16 after d, q4_1's or q5_1's minimum, q4_k's dmin; nb: blocks, or
    super-blocks for the K-quants)."""
    for r in range(w.shape[0]):
        for b in range(d.shape[1]):
            p = bb * b + at
            d[r, b] = _f16(w[r, p], w[r, p + 1])
            if has_m:
                m[r, b] = _f16(w[r, p + 2], w[r, p + 3])


@njit(**_JIT_DOT)
def _load_tile(w, code, d, m, r0, buf):
    """buf[t] = W[r0 + t] dequantized (d, m: _block_scales), for t < NR; rows past the end are zeros."""
    cols = buf.shape[1]
    for t in range(NR):
        r = r0 + t
        y = buf[t]
        if r >= w.shape[0]:
            y[:] = 0
        elif code == Q4_K or code == Q6_K:
            _dequant_k_row(w[r], code, y)
        elif code == F32:
            y[:] = w[r].view(np.float32)
        elif code == F16:
            row = w[r]
            for j in range(cols):
                y[j] = _f16(row[2 * j], row[2 * j + 1])
        elif code == Q8_0:
            q = w[r].view(np.int8)
            for b in range(cols // QK):
                p, o, s = 34 * b + 2, QK * b, d[r, b]
                for j in range(QK):
                    y[o + j] = s * np.float32(q[p + j])
        elif code == Q4_0:
            row = w[r]
            for b in range(cols // QK):
                p, o, s = 18 * b + 2, QK * b, d[r, b]
                for j in range(16):
                    v = np.int32(row[p + j])
                    y[o + j] = s * np.float32((v & 15) - 8)
                    y[o + j + 16] = s * np.float32((v >> 4) - 8)
        elif code == Q4_1:
            row = w[r]
            for b in range(cols // QK):
                p, o, s, mb = 20 * b + 4, QK * b, d[r, b], m[r, b]
                for j in range(16):
                    v = np.int32(row[p + j])
                    y[o + j] = s * np.float32(v & 15) + mb
                    y[o + j + 16] = s * np.float32(v >> 4) + mb
        elif code == Q5_0:
            row = w[r]
            for b in range(cols // QK):
                p, o, s = 22 * b + 6, QK * b, d[r, b]
                h = _u32(row, p - 4)
                for j in range(16):
                    lo, hi = _q5(np.int32(row[p + j]), h, j)
                    y[o + j] = s * np.float32(lo - 16)
                    y[o + j + 16] = s * np.float32(hi - 16)
        else:
            row = w[r]
            for b in range(cols // QK):
                p, o, s, mb = 24 * b + 8, QK * b, d[r, b], m[r, b]
                h = _u32(row, p - 4)
                for j in range(16):
                    lo, hi = _q5(np.int32(row[p + j]), h, j)
                    y[o + j] = s * np.float32(lo) + mb
                    y[o + j + 16] = s * np.float32(hi) + mb


@njit(**_JIT_DOT)
def _dot_tile_x4(w0, w1, w2, w3, x0, x1, x2, x3, acc):
    """acc[t, i] = w_t . x_i for 4 tile rows and 4 inputs, float32 [cols] each: 16 sums, one pass."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0)
    for k in range(x0.shape[0]):
        a0, a1, a2, a3 = x0[k], x1[k], x2[k], x3[k]
        b = w0[k]
        s00 += b * a0
        s01 += b * a1
        s02 += b * a2
        s03 += b * a3
        b = w1[k]
        s10 += b * a0
        s11 += b * a1
        s12 += b * a2
        s13 += b * a3
        b = w2[k]
        s20 += b * a0
        s21 += b * a1
        s22 += b * a2
        s23 += b * a3
        b = w3[k]
        s30 += b * a0
        s31 += b * a1
        s32 += b * a2
        s33 += b * a3
    acc[0, 0], acc[0, 1], acc[0, 2], acc[0, 3] = s00, s01, s02, s03
    acc[1, 0], acc[1, 1], acc[1, 2], acc[1, 3] = s10, s11, s12, s13
    acc[2, 0], acc[2, 1], acc[2, 2], acc[2, 3] = s20, s21, s22, s23
    acc[3, 0], acc[3, 1], acc[3, 2], acc[3, 3] = s30, s31, s32, s33


@njit(**_JIT_DOT)
def _dot_tile_x1(w0, w1, w2, w3, x0, acc):
    """acc[t, 0] = w_t . x0 for the 4 tile rows."""
    s0 = s1 = s2 = s3 = np.float32(0)
    for k in range(x0.shape[0]):
        a = x0[k]
        s0 += w0[k] * a
        s1 += w1[k] * a
        s2 += w2[k] * a
        s3 += w3[k] * a
    acc[0, 0], acc[1, 0], acc[2, 0], acc[3, 0] = s0, s1, s2, s3


@njit(**_JIT)
def _matmul_rows(x, w, code, d, m, out, r_lo, r_hi, buf, acc):
    """out[:, r_lo:r_hi] = x @ W[r_lo:r_hi]^T.  x: [n, cols], w: uint8 [rows, row_bytes],
    buf: float32 [NR, cols], acc: float32 [NR, max(NI, QK)]; r_lo a multiple of NR."""
    n = x.shape[0]
    for r0 in range(r_lo, r_hi, NR):
        _load_tile(w, code, d, m, r0, buf)
        nr = min(NR, r_hi - r0)
        i = 0
        while i + NI <= n:
            _dot_tile_x4(buf[0], buf[1], buf[2], buf[3], x[i], x[i + 1], x[i + 2], x[i + 3], acc)
            for u in range(NI):
                for t in range(nr):
                    out[i + u, r0 + t] = acc[t, u]
            i += NI
        while i < n:
            _dot_tile_x1(buf[0], buf[1], buf[2], buf[3], x[i], acc)
            for t in range(nr):
                out[i, r0 + t] = acc[t, 0]
            i += 1


# Serial and parallel drivers are separate functions: numba's disk cache keys on the function, not on
# parallel=, so one function jitted both ways would load whichever build was cached first.

@njit(**_JIT)
def _matmul_serial(x, w, code, d, m, out, n_chunks):
    buf = np.empty((NR, x.shape[1]), np.float32)
    _matmul_rows(x, w, code, d, m, out, 0, w.shape[0], buf, np.empty((NR, max(NI, QK)), np.float32))


@njit(parallel=True, **_JIT)
def _matmul_parallel(x, w, code, d, m, out, n_chunks):
    rows = w.shape[0]
    step = ((rows + n_chunks - 1) // n_chunks + NR - 1) // NR * NR   # whole tiles
    for c in prange(n_chunks):
        buf = np.empty((NR, x.shape[1]), np.float32)
        acc = np.empty((NR, max(NI, QK)), np.float32)
        _matmul_rows(x, w, code, d, m, out, min(rows, c * step), min(rows, (c + 1) * step), buf, acc)


# --- int8 activations (matmul_q8): x rounded to its q8 blocks as quant.quantize_act ------------------



@njit(**_JIT)
def _get_rows(w, code, ids, out):
    for i in range(ids.shape[0]):
        _dequant_row(w[ids[i]], code, out[i])


@njit(**_JIT)
def _dequantize(w, code, out):
    for r in range(w.shape[0]):
        _dequant_row(w[r], code, out[r])


# --- public API (checks as numpy_ref, then the kernels on the stored bytes) ----------------------

_NO_SCALES = np.zeros((0, 0), np.float32)
_scales_cache = {}  # id(w) -> (weakref to w, d, m), for read-only weights


def _bytes(w):
    # w: checked 2-D C-contiguous [rows, width] of any stored dtype -> uint8 [rows, width * itemsize]
    return w.view(np.uint8)


def _scales(w, code, cols):
    """(d, m) float32 [rows, cols / block] of a block-type weight (_block_scales). Cached for read-only
    arrays, which are the engine's weights: decoding them per call would cost decode ~1/3 of its time."""
    if code in (F32, F16):
        return _NO_SCALES, _NO_SCALES
    key, cache = id(w), not w.flags.writeable
    hit = _scales_cache.get(key) if cache else None
    if hit is not None and hit[0]() is w:
        return hit[1], hit[2]
    d = np.empty((w.shape[0], cols // _BLOCK[code]), np.float32)
    has_m = code in _HAS_M
    m = np.empty_like(d) if has_m else _NO_SCALES
    _block_scales(_bytes(w), _BLOCK_BYTES[code], 208 if code == Q6_K else 0, has_m, d, m)
    if cache:
        _scales_cache[key] = (weakref.ref(w, lambda _, key=key: _scales_cache.pop(key, None)), d, m)
    return d, m


def matmul(x, w, qtype, out=None):
    """x: float32 [n, cols], w: stored [rows, ...] -> out float32 [n, rows] = x @ W^T."""
    rows, cols, out = check_matmul(x, w, qtype, out)
    if x.shape[0] == 0 or rows == 0:
        return out
    _run(x, w, qtype, cols, out)
    return out


def matmul_q8(x, w, qtype, out=None):
    """matmul with x first quantized to int8 blocks (quant.quantize_act), as numpy_ref.matmul_q8.
    f32/f16 weights: exactly matmul."""
    rows, cols, out = check_matmul(x, w, qtype, out)
    if _QTYPES[qtype][1] == 1:
        return matmul(x, w, qtype, out)
    if x.shape[0] == 0 or rows == 0:
        return out
    q = np.empty(x.shape, np.int8)
    d, s = np.empty((2, x.shape[0], cols // QK), np.float32)
    numba_decode.quantize(x, q, d, s)
    if x.shape[0] >= NI or _QTYPES[qtype][0] in _K_CODES:  # float x rounded to d * q: tiles or K-quant dots
        xd = (q.reshape(len(q), -1, QK) * d[:, :, None]).reshape(x.shape)
        _run(xd, w, qtype, cols, out)
        return out
    code = _QTYPES[qtype][0]
    wd, wm = _scales(w, code, cols)
    threads = min(_threads, (rows + NR - 1) // NR)
    _launch(numba_decode.matmul_serial, numba_decode.matmul_parallel, threads, q, d, s, _bytes(w), code, wd, wm, out)
    return out


def prepare(w, qtype, bits):
    """The form of a weight that matmul at `bits` reads: the weight itself (the dots read stored bytes)."""
    return numpy_ref.prepare(w, qtype, bits)


def matmul_q16(x, w, qtype, out=None):
    """matmul with x first rounded to int16 blocks (quant.quantize_act(x, 16)), as numpy_ref.matmul_q16.
    f32/f16 weights: exactly matmul."""
    rows, cols, out = check_matmul(x, w, qtype, out)
    if _QTYPES[qtype][1] == 1 or x.shape[0] == 0 or rows == 0:
        return matmul(x, w, qtype, out)
    q, d, _ = quant.quantize_act(x, 16)
    xd = (q.reshape(len(q), -1, QK) * d[:, :, None]).reshape(x.shape)
    _run(np.ascontiguousarray(xd, dtype=np.float32), w, qtype, cols, out)
    return out


def _run(x, w, qtype, cols, out):
    code = _QTYPES[qtype][0]
    d, m = _scales(w, code, cols)
    threads = min(_threads, (w.shape[0] + NR - 1) // NR)
    if x.shape[0] < NI and code in _DECODE_CODES:  # decode: dot the stored rows directly, no tile
        xs = x.reshape(x.shape[0], cols // QK, QK).sum(axis=2) if code in (Q4_1, Q5_1) else x[:, :cols // QK]
        _launch(numba_decode.fmatmul_serial, numba_decode.fmatmul_parallel, threads,
                x, np.ascontiguousarray(xs), _bytes(w), code, d, m, out)
        return
    if x.shape[0] < NI and code in _K_CODES:
        _launch(numba_decode.kmatmul_serial, numba_decode.kmatmul_parallel, threads, x, _bytes(w), code, d,
                m if code == Q4_K else d, out)
        return
    _launch(_matmul_serial, _matmul_parallel, threads, x, _bytes(w), code, d, m, out)


def _launch(serial, parallel, threads, *args):
    """serial(*args, 1) at 1 thread (no parallel launch), else parallel(*args, threads) on `threads`."""
    global _parallel_used
    if threads == 1 or _parallel_used == "before fork":
        serial(*args, 1)
        return
    with _parallel_lock:  # numba's fallback threading layer (workqueue) aborts on concurrent parallel jobs
        _parallel_used = "yes"
        numba.set_num_threads(threads)
        parallel(*args, threads)


def attention(q, k_cache, v_cache, start, scale=None, window=0):
    """numpy_ref.attention's contract: q float32 [n, n_heads, hd]; k_cache, v_cache [n_kv, cap, row] of one
    of the KV row types (float32, float16, q8_0 uint8) holding every position a query sees in slot t % cap
    -> float32 [n, n_heads * hd] (numba_attention). The kernels read the stored rows through views, no
    copy of the cache: each f16 / q8_0 row is decoded as a key or value is needed."""
    n, n_heads, hd = q.shape
    kv_type = numpy_ref.cache_type(k_cache, v_cache, hd)
    if n_heads % k_cache.shape[0]:
        raise ValueError(f"attention: q {q.shape} does not fit the cache {k_cache.shape} / {v_cache.shape}")
    cap = k_cache.shape[1]
    if start < 0 or window < 0 or not (start + n <= cap or window and cap >= window + n - 1):
        raise ValueError(f"attention: positions {start}..{start + n} (window {window}) exceed the cache ({cap})")
    q = np.ascontiguousarray(q, dtype=np.float32)
    (k, ks), (v, vs) = _kv_rows(k_cache, kv_type, hd), _kv_rows(v_cache, kv_type, hd)
    out = np.empty((n, n_heads * hd), np.float32)
    threads = min(_threads, n * k.shape[0])
    scale = np.float32(hd ** -0.5 if scale is None else scale)
    _launch(numba_attention.attention_serial, numba_attention.attention_parallel, threads, q, k, ks, v, vs,
            start, scale, int(window), out)
    return out


def _kv_rows(cache, kv_type, hd):
    """A cache [n_kv, cap, row] as numba_attention reads it, views of its bytes: (rows, scales) = float32
    rows [n_kv, cap, hd] and None (f32), their uint16 bits and None (f16), or the int8 rows [n_kv, cap,
    hd + hd // 8] (codes first: a contiguous view the kernels' loops vectorize over) and float32 scales
    [n_kv, cap, hd // 32] (q8_0)."""
    if cache.strides[-1] != cache.itemsize:   # rows must be contiguous to be viewed as other types
        cache = np.ascontiguousarray(cache)
    if kv_type == "f16":
        return cache.view(np.uint16), None
    if kv_type == "q8_0":
        return cache.view(np.int8), cache[..., hd:].view(np.float32)
    return cache, None


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

def isa():
    return None


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
