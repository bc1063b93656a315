"""The NumPy backend: quant.dequantize + `@`. The oracle every other backend is tested against.

It checks its arguments exactly as the compiled backend does (same ValueErrors for the same bad
input), so code written against it behaves the same on every backend. It computes what the others
compute, activation rounding included (matmul_q8, matmul_q16), in float64 where they sum exactly.
"""

import numpy as np

from minigpt import quant

name = "numpy"

_MAX_THREADS = 256
_threads = 1


# --- boundary checks (mirror _core.pyx) ----------------------------------------------------------

def _check_array(a, what, dtype, writeable=False):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{what} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if not a.flags.aligned:
        raise ValueError(f"{what} is not aligned for {a.dtype}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{what} is read-only")
    return a


def check_weight(w, qtype):
    """-> (rows, cols) of a stored weight of qtype."""
    if not isinstance(qtype, str) or qtype not in quant.QTYPES:
        raise ValueError(f"unknown qtype {qtype!r}; expected one of {', '.join(quant.QTYPES)}")
    block, block_bytes, _, dtype = quant.QTYPES[qtype]
    _check_array(w, "w", dtype)
    rows, width = w.shape
    if block == 1:
        return rows, width
    if width % block_bytes:
        raise ValueError(f"a {qtype} weight row of {width} bytes is not a multiple of {block_bytes}")
    return rows, width // block_bytes * block


def _check_out(out, n, cols, inputs):
    if out is None:
        return np.empty((n, cols), dtype=np.float32)
    _check_array(out, "out", np.float32, writeable=True)
    if out.shape != (n, cols):
        raise ValueError(f"out has shape {out.shape}, expected {(n, cols)}")
    for a in inputs:
        if out.size and a.size and np.may_share_memory(out, a):
            raise ValueError("out overlaps an input array")
    return out


# --- kernels -------------------------------------------------------------------------------------

def check_matmul(x, w, qtype, out):
    """The boundary checks of matmul and matmul_q8 (shared by the Python backends) -> (rows, cols, out)."""
    rows, cols = check_weight(w, qtype)
    _check_array(x, "x", np.float32)
    if x.shape[1] != cols:
        raise ValueError(f"x has {x.shape[1]} columns, the {qtype} weight has {cols}")
    return rows, cols, _check_out(out, x.shape[0], rows, (x, w))


def check_get_rows(w, qtype, ids, out):
    """The boundary checks of get_rows -> (cols, ids as contiguous int64, out)."""
    rows, cols = check_weight(w, qtype)
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= rows))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"id {ids[i]} at position {i} is out of range for {rows} rows")
    return cols, ids, _check_out(out, ids.shape[0], cols, (w,))


def matmul(x, w, qtype, out=None):
    """x: float32 [n, cols], w: stored [rows, ...] -> out float32 [n, rows] = x @ W^T."""
    rows, cols, out = check_matmul(x, w, qtype, out)
    np.matmul(x, quant.dequantize(w, qtype, cols).T, out=out)
    return out


def matmul_q8(x, w, qtype, out=None):
    """matmul with x first quantized to int8 blocks (quant.quantize_act): out = dequant(q8(x)) @ W^T,
    here in float64 from exact products, rounded once to float32. f32/f16 weights: exactly matmul."""
    return _matmul_quantized(x, w, qtype, out, 8)


def matmul_q16(x, w, qtype, out=None):
    """matmul_q8 with int16 blocks (quant.quantize_act(x, 16)): within ~1e-5 of matmul."""
    return _matmul_quantized(x, w, qtype, out, 16)


def _matmul_quantized(x, w, qtype, out, bits):
    rows, cols, out = check_matmul(x, w, qtype, out)
    if quant.QTYPES[qtype][0] == 1:
        return matmul(x, w, qtype, out)
    q, d, _ = quant.quantize_act(x, bits)
    xd = (q.reshape(x.shape[0], cols // 32, 32) * d[:, :, None].astype(np.float64)).reshape(x.shape)
    out[...] = xd @ quant.dequantize(w, qtype, cols).astype(np.float64).T
    return out


def prepare(w, qtype, bits):
    """The form of a weight that matmul at `bits` (32, 16, 8) reads: here the weight itself."""
    check_weight(w, qtype)
    return w, qtype


def attention(q, k_cache, v_cache, start, scale=None, window=0):
    """Causal grouped-query attention of n new queries at positions [start, start + n) over the cache.

    q: [n, n_heads, hd]; k_cache, v_cache: [n_kv, cap, hd], position t in slot t % cap (a ring when
    cap is less than the context), holding every position a query sees. scale: of q.k (default
    1 / sqrt(hd)); window: 0, or each query sees only the `window` latest keys, itself included.
    -> [n, n_heads * hd]
    """
    n, n_heads, hd = q.shape
    n_kv, cap = k_cache.shape[:2]
    T = start + n
    lo = max(0, start - window + 1) if window else 0   # the first key any query sees
    if T - lo > cap:
        raise ValueError(f"a cache of {cap} slots cannot hold the {T - lo} keys positions {start}..{T} see")
    slots = np.arange(lo, T) % cap
    k, v = k_cache[:, slots], v_cache[:, slots]                              # [n_kv, T - lo, hd]
    qg = q.reshape(n, n_kv, n_heads // n_kv, hd).transpose(1, 2, 0, 3)       # [n_kv, g, n, hd]
    scores = qg @ k[:, None].swapaxes(-1, -2)                                # [n_kv, g, n, T - lo]
    scores *= np.float32(hd ** -0.5 if scale is None else scale)
    kpos, qpos = np.arange(lo, T)[None, :], (start + np.arange(n))[:, None]
    mask = (kpos > qpos) | ((qpos - kpos >= window) if window else False)
    if mask.any():
        scores[..., mask] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores @ v[:, None]                                                # [n_kv, g, n, hd]
    return out.transpose(2, 0, 1, 3).reshape(n, n_heads * hd)


def get_rows(w, qtype, ids, out=None):
    """Embedding lookup: float32 [len(ids), cols], row i = W[ids[i]]."""
    cols, ids, out = check_get_rows(w, qtype, ids, out)
    out[...] = quant.dequantize(w[ids], qtype, cols)
    return out


def dequantize(w, qtype):
    """Stored weight -> float32 [rows, cols]."""
    _, cols = check_weight(w, qtype)
    return quant.dequantize(w, qtype, cols)


# --- threads (recorded only: NumPy runs its own) -------------------------------------------------

def isa():
    return None


def set_threads(n):
    global _threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"threads must be an integer, got {n!r}")
    if n < 1 or n > _MAX_THREADS:
        raise ValueError(f"threads={n} is out of range 1..{_MAX_THREADS}")
    _threads = int(n)


def get_threads():
    return _threads
