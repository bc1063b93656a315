"""The numba backend's attention: causal grouped-query attention over the KV cache, as numpy_ref.attention
(sliding windows and ring caches included).

Work items are (kv head, query) pairs: one item scores its query's g = n_heads / n_kv heads against
each cached key of that kv head (each key row loaded once for the g heads), takes the softmax and sums
the value rows. Causal items differ in length (query i sees start + i + 1 keys), so threads take items
strided (thread c: items c, c + threads, ...) rather than in contiguous runs, which keeps them even.
Dots and sums are float32 with LLVM free to reassociate (vectorized over head_dim), so results agree
with the NumPy twin within float rounding, not bit for bit; each output is summed by the same code
whatever the thread count.
"""

import numpy as np
from numba import njit, prange

_JIT = dict(cache=True, fastmath={"contract", "reassoc"}, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_JIT)
def _item(q, k, v, start, scale, window, kv, i, scores, out):
    """out[i, heads of kv's group] for query i over its keys: positions [lo, start + i], lo = 0 or, with
    a window, start + i - window + 1; position t in slot t % cap.
    q: [n, n_heads, hd]; k, v: [n_kv, cap, hd]; scores: float32 [g, >= its key count] scratch."""
    hd, cap = q.shape[2], k.shape[1]
    g = q.shape[1] // k.shape[0]
    p = start + i
    lo = max(0, p - window + 1) if window > 0 else 0
    T = p + 1 - lo
    for t in range(T):
        kt = k[kv, (lo + t) % cap]
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
        o = out[i, (kv * g + h) * hd:(kv * g + h + 1) * hd]
        o[:] = 0
        for t in range(T):
            pt = scores[h, t]
            vt = v[kv, (lo + t) % cap]
            for j in range(hd):
                o[j] += pt * vt[j]


@njit(**_JIT)
def attention_serial(q, k, v, start, scale, window, out, n_chunks):
    n, n_kv = q.shape[0], k.shape[0]
    scores = np.empty((q.shape[1] // n_kv, start + n), np.float32)
    for it in range(n_kv * n):
        _item(q, k, v, start, scale, window, it % n_kv, it // n_kv, scores, out)


@njit(parallel=True, **_JIT)
def attention_parallel(q, k, v, start, scale, window, out, n_chunks):
    n, n_kv = q.shape[0], k.shape[0]
    for c in prange(n_chunks):
        scores = np.empty((q.shape[1] // n_kv, start + n), np.float32)
        for it in range(c, n_kv * n, n_chunks):
            _item(q, k, v, start, scale, window, it % n_kv, it // n_kv, scores, out)
