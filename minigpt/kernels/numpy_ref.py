"""The NumPy backend: quant.dequantize + `@`. The oracle every other backend is tested against.

It checks its arguments exactly as the compiled backend does (same ValueErrors for the same bad
input), so code written against it behaves the same on every backend. It computes what the others
compute, activation rounding included (matmul_q8, matmul_q16). Where a rounding decides an integer
code, it is the compiled x86 path's twin: matmul_q8 / matmul_q16 and attention round every float
as csrc/packed_x86.h and csrc/attention.c with the AVX2 slots do (fp32.py), so on those CPUs the two
give the same bits. Its float32 matmul sums in BLAS's order.
"""

import numpy as np

from minigpt import quant
from minigpt.kernels import fp32

name = "numpy"

MAX_THREADS = 256   # csrc/kernels.h MG_MAX_THREADS (tests/test_api_args.py checks they agree)
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
    """matmul with x first quantized to int8 blocks (quant.quantize_act), rounded as the compiled
    backend's x8 kernels round (see _x8). f32/f16 weights: exactly matmul."""
    return _matmul_quantized(x, w, qtype, out, 8)


def matmul_q16(x, w, qtype, out=None):
    """matmul_q8 with int16 blocks (quant.quantize_act(x, 16)): within ~1e-5 of matmul."""
    return _matmul_quantized(x, w, qtype, out, 16)


_X8_ELEMENTS = 1 << 22   # inputs x blocks x rows per pass of _x8: bounds its scratch (~100 MB)


def _matmul_quantized(x, w, qtype, out, bits):
    rows, cols, out = check_matmul(x, w, qtype, out)
    if quant.QTYPES[qtype][0] == 1:
        return matmul(x, w, qtype, out)
    if rows and x.shape[0]:
        q, d, s = quant.quantize_act(x, bits)
        step = max(1, _X8_ELEMENTS // (x.shape[0] * max(1, cols // 32)))
        for r in range(0, rows, step):
            codes, dw, offset = quant.split_blocks(w[r:r + step], qtype)
            if qtype == "q6_k" and bits == 16:   # each half block its own float step (csrc/packed_x86.h)
                codes, dw = codes.reshape(len(codes), -1, 16), np.repeat(dw, 2, axis=1)
            out[:, r:r + step] = _x8(q, d, s, codes, dw, offset)
    return out


def _x8(q, d, s, codes, dw, offset):
    """csrc/packed_x86.h in NumPy: the quantized inputs (q, d, s) dotted with the weight blocks
    (codes, dw, offset: quant.split_blocks) -> float32 [n, rows], with the compiled kernels' roundings.

    Per input and row, block after block: the integer dot of the codes as stored (exact), then
    sum = fma(float(dw * d), float(dot), sum) and, for the types with an offset (q4_0, q4_1, the q5
    types, q4_k), sumb = fma(offset, s, sumb); the result is sum + sumb. Integer dots are exact in
    float64 (|dot| < 2^31 < 2^53); float(dot) rounds only past 2^24, which int16 inputs reach. codes may come in units of 16 (q6_k with int16 inputs,
    dw per unit): each input block's d then serves its two units.
    """
    n = d.shape[0]
    nb, unit = codes.shape[1:]
    if unit != 32:
        d = np.repeat(d, 32 // unit, axis=1)
    xq = q.reshape(n, nb, unit).transpose(1, 0, 2).astype(np.float64)           # [nb, n, unit]
    dots = np.matmul(xq, codes.transpose(1, 2, 0).astype(np.float64))            # [nb, n, rows]
    if q.dtype != np.int8:
        dots = dots.astype(np.float32)
    acc = np.zeros(dots.shape[1:], np.float32)
    accb = np.zeros_like(acc) if offset is not None else None
    prod = np.empty(acc.shape)
    for b in range(nb):
        fp32.fma(d[:, b, None] * dw[None, :, b], dots[b], acc, out=acc, scratch=prod)
        if offset is not None:
            fp32.fma(offset[None, :, b], s[:, b, None], accb, out=accb, scratch=prod)
    return acc + accb if offset is not None else acc


def prepare(w, qtype, bits):
    """The form of a weight that matmul at `bits` (32, 16, 8) reads: here the weight itself."""
    check_weight(w, qtype)
    return w, qtype


_KTILE = 64   # keys per tile, as csrc/attention.c's ATT_KTILE


def cache_type(k_cache, v_cache, hd):
    """The KV row type (quant.KV_TYPES) of a cache's keys and values; ValueError if either is none of
    them or they differ."""
    kv_type = quant.kv_type_of(k_cache, hd)
    if quant.kv_type_of(v_cache, hd) != kv_type or v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache {k_cache.dtype} {k_cache.shape} and v_cache {v_cache.dtype} {v_cache.shape} "
                         f"differ")
    return kv_type


def decode_cache(k_cache, v_cache, hd, end):
    """The float32 [n_kv, cap', hd] keys and values attention reads from a cache of one of the KV row types
    (quant.kv_type_of: f32 as is, f16 and q8_0 decoded by quant.kv_decode). Only slots [0, end) when
    end <= cap: a linear cache's later slots hold no position the queries see (position t stays in slot t)."""
    kv_type = cache_type(k_cache, v_cache, hd)
    if kv_type == "f32":
        return k_cache, v_cache
    if end <= k_cache.shape[1]:
        k_cache, v_cache = k_cache[:, :end], v_cache[:, :end]
    return quant.kv_decode(k_cache, kv_type, hd), quant.kv_decode(v_cache, kv_type, hd)


def attention(q, k_cache, v_cache, start, scale=None, window=0):
    """Causal grouped-query attention of n new queries at positions [start, start + n) over the cache.

    q: [n, n_heads, hd]; k_cache, v_cache: [n_kv, cap, row], position t in slot t % cap (a ring when
    cap is less than the context), holding every position a query sees, rows of one of the KV cache's
    types told by dtype (quant.kv_type_of: float32 or float16 [..., hd], q8_0 uint8 [..., hd + hd // 8]).
    scale: of q.k (default 1 / sqrt(hd)); window: 0, or each query sees only the `window` latest keys,
    itself included. -> [n, n_heads * hd]

    An f16 or q8_0 cache gives exactly the attention of its decoded float32 rows (quant.kv_decode), as in C.

    Rounded as csrc/attention.c with the AVX2 slots (ops_avx2.c) rounds, step for step: keys in tiles
    of 64 positions (cut where the ring wraps too), an online softmax per query and head (running
    max m, sum l, unnormalized output o), scores as 8-lane FMA dots (lanes added as fold4 adds them),
    probabilities summed in 8 lanes (added as hsum8), exp as exp8.
    """
    n, n_heads, hd = q.shape
    k_cache, v_cache = decode_cache(k_cache, v_cache, hd, start + n)
    n_kv, cap = k_cache.shape[:2]
    g = n_heads // n_kv
    pos = start + np.arange(n)
    first = np.maximum(0, pos - window + 1) if window else np.zeros(n, np.int64)
    if pos[-1] + 1 - first[0] > cap:
        raise ValueError(f"a cache of {cap} slots cannot hold the {pos[-1] + 1 - first[0]} keys positions "
                         f"{start}..{start + n} see")
    pad = -hd % 8                                                     # masked lanes: zeros
    qs = np.pad(q * np.float32(hd ** -0.5 if scale is None else scale), ((0, 0), (0, 0), (0, pad)))
    qs = qs.reshape(n, n_kv, g, hd + pad)
    m = np.full((n, n_kv, g), -np.inf, np.float32)          # per query and head: running max,
    l = np.zeros((n, n_kv, g), np.float32)                  # sum of probabilities,
    o = np.zeros((n, n_kv, g, hd), np.float32)              # unnormalized output
    # tile edges: multiples of 64 positions and of cap (ring wraps), from the first key's tile on
    lo, end = int(first[0]) // _KTILE * _KTILE, int(pos[-1]) + 1
    edges = np.union1d(np.arange(lo, end, _KTILE), np.arange((lo + cap - 1) // cap * cap, end, cap))
    for t0, t1 in zip(edges, np.append(edges[1:], end)):
        # the queries with keys in [t0, t1): a contiguous run, since first and pos only grow
        i0, i1 = np.searchsorted(pos, t0), np.searchsorted(first, t1)
        if i0 >= i1:
            continue
        slots = np.arange(t0, t1) % cap
        a = np.clip(first[i0:i1] - t0, 0, None)[:, None]              # keys [a, b) of the tile
        b = np.minimum(pos[i0:i1] + 1 - t0, t1 - t0)[:, None]         # per query
        s = _scores(qs[i0:i1], np.pad(k_cache[:, slots], ((0, 0), (0, 0), (0, pad))))  # [nq, n_kv, g, tn]
        inside = (np.arange(t1 - t0) >= a) & (np.arange(t1 - t0) < b)
        mx = np.maximum(m[i0:i1], np.where(inside[:, None, None], s, -np.inf).max(axis=-1))
        new = mx > m[i0:i1]
        corr = fp32.exp(np.where(new, m[i0:i1] - mx, np.float32(0)))
        l[i0:i1] = np.where(new, l[i0:i1] * corr, l[i0:i1])
        o[i0:i1] = np.where(new[..., None], o[i0:i1] * corr[..., None], o[i0:i1])
        m[i0:i1] = mx
        p, sums = _exp_sum(s.reshape(i1 - i0, n_heads, -1), a, b, mx.reshape(i1 - i0, n_heads))
        l[i0:i1] += sums.reshape(i1 - i0, n_kv, g)
        p = p.reshape(s.shape)
        v = v_cache[:, slots]                                         # [n_kv, tn, hd]
        ot = o[i0:i1]
        for t in range(t1 - t0):                                      # P.V: one FMA per key
            fp32.fma(p[..., t, None], v[None, :, None, t], ot, out=ot)
    return (o * (np.float32(1) / l)[..., None]).reshape(n, n_heads * hd)


def _scores(q, k):
    """q [nq, n_kv, g, hd8] . k [n_kv, tn, hd8] -> [nq, n_kv, g, tn]: 8 lanes of FMAs along hd, then
    fold8."""
    acc = np.zeros(q.shape[:3] + (k.shape[1], 8), np.float32)
    for c in range(0, q.shape[-1], 8):
        acc = fp32.fma(q[:, :, :, None, c:c + 8], k[None, :, None, :, c:c + 8], acc)
    return fp32.fold8(acc)


def _exp_sum(s, a, b, m):
    """Probabilities exp(s - m) of the keys [a, b) of each query's row (0 elsewhere) and their sums,
    added as exp_sum_avx2 adds them: 8 lanes from key a on, then hsum8."""
    nq, g, tn = s.shape
    width = -(-int((b - a).max()) // 8) * 8
    j = np.arange(width)
    take = np.minimum(a + j, tn - 1)                                      # [nq, width]
    valid = (j < b - a)[:, None, :]
    e = np.where(valid, fp32.exp(np.take_along_axis(s, np.broadcast_to(take[:, None], (nq, g, width)), -1)
                                 - m[..., None]), np.float32(0))
    lanes = np.add.accumulate(e.reshape(nq, g, -1, 8), axis=-2)[..., -1, :]   # in order, 8 keys at a time
    p = np.zeros((nq, g, tn + width), np.float32)                        # key a + j of each row: e[j]
    np.put_along_axis(p, np.broadcast_to((a + j)[:, None], (nq, g, width)), e, -1)
    return p[..., :tn], fp32.hsum8(lanes)


SCREEN_MAX_TOP = 1024   # csrc/kernels.h MG_SCREEN_MAX_TOP


def matmul_screened(x, screen, screen_qtype, w, qtype, norms, top, allowed=None, out=None):
    """csrc/screen.c in NumPy: x @ W^T exact (matmul) for every row that can be among the `top`
    largest of its input, matmul_q8's estimate, below all of those, for the others. allowed: None, or
    per input a grammar's bitmask (bit r % 32 of word r / 32) or None: the top are the best it allows.

    approx = matmul_q8(x, screen): each input rounded to q8 blocks xq first. |exact - approx| <= |w_r| e
    per row r (Cauchy-Schwarz), e = |x - xq| + (cols + 128) 2^-21 |x| bounding float32 rounding too;
    norms: row_norms(w). The top-th largest lower bound approx - |w_r| e is below the top-th largest
    exact logit; a row whose upper bound approx + |w_r| e reaches it is computed again. top >= rows
    or > SCREEN_MAX_TOP: matmul."""
    rows, cols = check_weight(w, qtype)
    if not (1 <= top < rows and top <= SCREEN_MAX_TOP) or cols % 32:
        return matmul(x, w, qtype, out)
    exact = matmul(x, w, qtype)   # an oracle need not save the work: the rows it keeps are these
    out = matmul_q8(x, screen, screen_qtype, out)
    q, d, _ = quant.quantize_act(x, 8)
    xq = (q.reshape(len(x), -1, 32) * d[..., None].astype(np.float64)).reshape(len(x), cols)
    x64 = x.astype(np.float64)
    e = np.linalg.norm(x64 - xq, axis=1) + (cols + 128) * np.ldexp(np.linalg.norm(x64, axis=1), -21)
    e = np.nextafter(e.astype(np.float32), np.float32(np.inf))
    for i in range(len(x)):
        ok = np.ones(rows, bool)
        if allowed is not None and allowed[i] is not None:
            ok = np.unpackbits(np.asarray(allowed[i]).view(np.uint8), bitorder="little")[:rows].astype(bool)
        bound = norms * e[i]
        t = np.partition(np.where(ok, out[i] - bound, -np.inf), rows - top)[rows - top]
        near = ok & (out[i] + bound >= t)
        out[i, near] = exact[i, near]
    return out


def row_norms(w, qtype):
    """float32 [rows]: the L2 norm of each row, rounded up (csrc/screen.c mg_row_norms)."""
    norms = np.linalg.norm(dequantize(w, qtype).astype(np.float64), axis=1)
    f = norms.astype(np.float32)
    return np.where(f < norms, np.nextafter(f, np.float32(np.inf)), f)


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
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"threads={n} is out of range 1..{MAX_THREADS}")
    _threads = int(n)


def get_threads():
    return _threads
