"""The numba backend's attention: causal grouped-query attention over the KV cache, as numpy_ref.attention
(sliding windows and ring caches included).

Work items are (kv head, query) pairs: one item scores its query's g = n_heads / n_kv heads against
each cached key of that kv head (each key row loaded once for the g heads), takes the softmax and sums
the value rows (each value row loaded once for the g heads). Causal items differ in length (query i
sees start + i + 1 keys), so threads take items strided (thread c: items c, c + threads, ...) rather than
in contiguous runs, which keeps them even.

The kernels read the cache's stored rows (quant.py, "KV cache rows"), never a decoded copy of it: f32
rows as they are; f16 rows as their uint16 bits, each converted exactly as NumPy's float16 -> float32
(half_to_f32); q8_0 rows as their int8 view [n_kv, cap, hd + hd // 8] (the codes are the first hd) plus
a float32 view of the scales [n_kv, cap, hd // 32], d * q. An f16 or q8_0 row is decoded once per key
into a float32 scratch row of hd, so a call costs no allocation or conversion beyond the rows its
queries see, and every value read is exactly quant.kv_decode's.
Dots and sums are float32 with LLVM free to reassociate (vectorized over head_dim), so results agree
with the NumPy twin within float rounding, not bit for bit; each output is summed by the same code
whatever the thread count or the cache's row type (an f16 or q8_0 cache gives exactly what the f32 cache
of its decoded rows gives).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

_JIT = dict(cache=True, fastmath={"contract", "reassoc"}, nogil=True, error_model="numpy", boundscheck=False)
_JIT_EXACT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy", boundscheck=False)


# --- stored rows -> float32 ----------------------------------------------------------------------

@intrinsic
def half_to_f32(typingctx, h):
    """The IEEE half with bits h (an integer, low 16 bits) -> float32, exactly as NumPy's float16 ->
    float32 (inf, NaN payloads, subnormals, -0). Written as LLVM IR on 32-bit integers with selects, no
    branches (numba would widen the integer ops to 64 bits), so loops over it vectorize 8 lanes wide."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i32, f32 = ir.IntType(32), ir.FloatType()
        v = args[0]
        v = builder.trunc(v, i32) if h.bitwidth > 32 else builder.zext(v, i32) if h.bitwidth < 32 else v
        v = builder.and_(v, ir.Constant(i32, 0xFFFF))
        sign = builder.shl(builder.and_(v, ir.Constant(i32, 0x8000)), ir.Constant(i32, 16))
        em = builder.and_(v, ir.Constant(i32, 0x7FFF))
        # zero and subnormals: em * 2^-24 is exact in float32
        tiny = builder.fmul(builder.sitofp(em, f32), ir.Constant(f32, 2.0 ** -24))
        tiny = builder.or_(builder.bitcast(tiny, i32), sign)
        # normal numbers: rebias the exponent by +112; inf/nan by +224, so that they land on exponent 255
        infnan = builder.icmp_unsigned(">=", em, ir.Constant(i32, 0x7C00))
        bias = builder.select(infnan, ir.Constant(i32, 224 << 23), ir.Constant(i32, 112 << 23))
        normal = builder.or_(builder.add(builder.shl(em, ir.Constant(i32, 13)), bias), sign)
        bits = builder.select(builder.icmp_unsigned("<", em, ir.Constant(i32, 0x0400)), tiny, normal)
        return builder.bitcast(bits, f32)
    return types.float32(h), codegen


def _row(rows, scales, kv, slot, buf):
    """Cache row [kv, slot] as float32 [hd]: an f32 cache's row itself, an f16 (uint16 bits) or q8_0 (int8
    rows, codes first, and float32 scales) row decoded into buf. rows: [n_kv, cap, hd], or q8_0's
    [n_kv, cap, hd + hd // 8]; scales: q8_0's [n_kv, cap, hd // 32], else None. Chosen by the rows' dtype
    when compiled (overload below)."""


@overload(_row, jit_options=_JIT_EXACT)
def _row_typed(rows, scales, kv, slot, buf):
    if rows.dtype == types.float32:
        def f32(rows, scales, kv, slot, buf):
            return rows[kv, slot]
        return f32
    if rows.dtype == types.uint16:
        def f16(rows, scales, kv, slot, buf):
            r = rows[kv, slot]
            for j in range(buf.shape[0]):
                buf[j] = half_to_f32(r[j])
            return buf
        return f16
    if rows.dtype == types.int8:
        def q8_0(rows, scales, kv, slot, buf):
            r = rows[kv, slot]
            for j in range(buf.shape[0]):   # the codes widened first: this loop vectorizes
                buf[j] = r[j]
            for b in range(scales.shape[2]):
                db = scales[kv, slot, b]
                for j in range(32 * b, 32 * b + 32):
                    buf[j] *= db
            return buf
        return q8_0
    return None


# --- attention -----------------------------------------------------------------------------------

@njit(**_JIT)
def _item(q, k, ks, v, vs, start, scale, window, kv, i, scores, buf, out):
    """out[i, heads of kv's group] for query i over its keys: positions [lo, start + i], lo = 0 or, with
    a window, start + i - window + 1; position t in slot t % cap.
    q: [n, n_heads, hd]; k, v: stored rows [n_kv, cap, row] (float32, uint16 f16 bits or int8 q8_0 bytes);
    ks, vs: q8_0's float32 scales [n_kv, cap, hd // 32], else None; scores: float32 [g, >= its key count]
    and buf: float32 [hd], scratch."""
    hd, cap = q.shape[2], k.shape[1]
    g = q.shape[1] // k.shape[0]
    p = start + i
    lo = max(0, p - window + 1) if window > 0 else 0
    T = p + 1 - lo
    for t in range(T):
        kt = _row(k, ks, kv, (lo + t) % cap, buf)
        for h in range(g):
            qh = q[i, kv * g + h]
            s = np.float32(0)
            for j in range(hd):
                s += qh[j] * kt[j]
            scores[h, t] = s * scale
    for h in range(g):
        mx = scores[h, 0]
        for t in range(1, T):
            mx = max(mx, scores[h, t])
        total = np.float32(0)
        for t in range(T):
            e = np.exp(scores[h, t] - mx)
            scores[h, t] = e
            total += e
        inv = np.float32(1) / total
        for t in range(T):
            scores[h, t] *= inv
    o = out[i, kv * g * hd:(kv + 1) * g * hd]   # the group's g outputs, each summed over t in key order
    o[:] = 0
    for t in range(T):
        vt = _row(v, vs, kv, (lo + t) % cap, buf)
        for h in range(g):
            pt = scores[h, t]
            for j in range(hd):
                o[h * hd + j] += pt * vt[j]


@njit(**_JIT)
def attention_serial(q, k, ks, v, vs, start, scale, window, out, n_chunks):
    n, n_kv = q.shape[0], k.shape[0]
    scores = np.empty((q.shape[1] // n_kv, start + n), np.float32)
    buf = np.empty(q.shape[2], np.float32)
    for it in range(n_kv * n):
        _item(q, k, ks, v, vs, start, scale, window, it % n_kv, it // n_kv, scores, buf, out)


@njit(parallel=True, **_JIT)
def attention_parallel(q, k, ks, v, vs, start, scale, window, out, n_chunks):
    n, n_kv = q.shape[0], k.shape[0]
    for c in prange(n_chunks):
        scores = np.empty((q.shape[1] // n_kv, start + n), np.float32)
        buf = np.empty(q.shape[2], np.float32)
        for it in range(c, n_kv * n, n_chunks):
            _item(q, k, ks, v, vs, start, scale, window, it % n_kv, it // n_kv, scores, buf, out)
