"""The decoder in NumPy: the reference that csrc/decoder.c computes step for step.

One forward pass serves every architecture (pre-norm blocks, grouped-query attention over RoPE, a
gated FFN); the Config's feature row switches the steps that differ, and each matrix's activation
bits (Weight.bits: the engine's precision) pick the kernel it goes through. Matmuls and attention go
through a kernel backend (minigpt.kernels); norms, RoPE and the gates are NumPy float32 with every
rounding of csrc/ops_avx2.c (RMSNorm sums squares in float64 lanes, RoPE and the gates use its FMAs
and its exp: kernels.fp32). Over the NumPy kernels the whole pass then computes the compiled
decoder's floats bit for bit, activation rounding included, except the float32 matmuls' sums (BLAS
adds in its own order), which no integer rounding follows. Shapes: n = tokens in this call,
d = dim, hd = head_dim.
"""

import numpy as np

from .. import quant
from ..config import Config
from ..kernels import fp32


# --- building blocks

def rms_norm(x, weight, eps):
    """x: [..., d] -> [..., d]. The squares summed in float64 as rms_norm_avx2 sums them (8 lanes over
    the vectors of 8, halves, pairs, then the tail), the scale rounded once to float32."""
    d, v = x.shape[-1], x.shape[-1] // 8 * 8
    x2 = x.astype(np.float64) ** 2                      # exact: the lanes' FMAs round only the sums
    lanes = np.add.accumulate(x2[..., :v].reshape(x.shape[:-1] + (-1, 8)), axis=-2)[..., -1, :] if v else \
        np.zeros(x.shape[:-1] + (8,))                   # (accumulate: in order, vector after vector)
    h = lanes[..., :4] + lanes[..., 4:]
    ss = (h[..., 0] + h[..., 2]) + (h[..., 1] + h[..., 3])
    for j in range(v, d):
        ss += x2[..., j]
    inv = (1.0 / np.sqrt(ss / d + np.float64(np.float32(eps)))).astype(np.float32)
    return x * inv[..., None] * weight


def rope_tables(cfg: Config, n_ctx, freq_factors=None, local=False):
    """cos, sin: [n_ctx, rope_dim // 2], computed in float64 then rounded once. local: the tables of
    the sliding-window layers (rope_theta_local, no scaling)."""
    i = np.arange(0, cfg.rope_dim, 2, dtype=np.float64)
    inv_freq = (cfg.rope_theta_local if local else cfg.rope_theta) ** (-i / cfg.rope_dim)
    if freq_factors is not None and not local:   # Llama 3 style per-frequency scaling (rope_freqs tensor)
        inv_freq = inv_freq / freq_factors.astype(np.float64)
    pos = np.arange(n_ctx, dtype=np.float64)
    if cfg.rope_scaling.get("type") == "linear" and not local:
        pos = pos / cfg.rope_scaling["factor"]
    angles = np.outer(pos, inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def layer_ropes(cfg: Config, n_ctx, freq_factors=None):
    """Each layer's (cos, sin): the local tables on sliding-window layers, the global ones elsewhere."""
    tables = [rope_tables(cfg, n_ctx, freq_factors)]
    if cfg.local_layers:
        tables.append(rope_tables(cfg, n_ctx, local=True))
    return [tables[-1] if cfg.is_local(i) else tables[0] for i in range(cfg.n_layers)]


def apply_rope(x, cos, sin, rope_dim, neox=False):
    """Rotate x: [n, heads, hd] in place on its first rope_dim dims; cos, sin: [n, rope_dim // 2].
    Pair p is (x[2p], x[2p + 1]), or with neox (x[p], x[p + rope_dim // 2]). Rounded as the AVX2
    slots round: x0 c - x1 s and x1 c + x0 s as one FMA over a rounded product (neox: x0 s + x1 c
    over x1 c), on the pairs the vectors cover (4 per vector, 8 with neox); plainly on the rest."""
    half = rope_dim // 2
    i0, i1 = (slice(0, half), slice(half, rope_dim)) if neox else (slice(0, rope_dim, 2), slice(1, rope_dim, 2))
    x0, x1 = x[:, :, i0].copy(), x[:, :, i1].copy()
    c, s = cos[:, None, :], sin[:, None, :]
    v = half // 8 * 8 if neox else half // 4 * 4       # pairs the vectors take
    r0, r1 = x0 * c - x1 * s, x0 * s + x1 * c
    r0[..., :v] = fp32.fma(x0[..., :v], c[..., :v], -(x1[..., :v] * s[..., :v]))
    r1[..., :v] = (fp32.fma(x0[..., :v], s[..., :v], x1[..., :v] * c[..., :v]) if neox else
                   fp32.fma(x1[..., :v], c[..., :v], x0[..., :v] * s[..., :v]))
    x[:, :, i0], x[:, :, i1] = r0, r1


def store_kv(k_cache, v_cache, k, v, start):
    """Write k, v: [n, n_kv, hd] of positions [start, start + n) into their slots of one layer's cache,
    as rows of its type (quant.kv_encode: f32, f16 or q8_0, the bytes csrc/decoder.c stores)."""
    kv_type = quant.kv_type_of(k_cache, k.shape[-1])
    slots = np.arange(start, start + len(k)) % k_cache.shape[1]
    k_cache[:, slots] = quant.kv_encode(k.transpose(1, 0, 2), kv_type)
    v_cache[:, slots] = quant.kv_encode(v.transpose(1, 0, 2), kv_type)


def silu(x):
    # x * sigmoid(x); exp(-x) = inf for very negative x: x / inf = -0, as in C
    return x / (np.float32(1) + fp32.exp(np.float32(0) - x))


def gelu_tanh(x):
    # x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
    # the cube as x (1 + 0.044715 x^2) with an FMA, as gated8 in ops_avx2.c
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.float32(1.5957691216057308) * (x * fp32.fma(np.float32(0.044715), x * x, np.float32(1)))
    return x / (np.float32(1) + fp32.exp(np.float32(0) - z))


ACTS = {"silu": silu, "gelu_tanh": gelu_tanh}


def matmul(kern, x, w):
    """x: [n, cols] @ the weight's rows, through the kernel its activation bits name."""
    fn = kern.matmul_q8 if w.bits == 8 else kern.matmul_q16 if w.bits == 16 else kern.matmul
    return fn(np.ascontiguousarray(x), w.data, w.qtype)


# --- the model

def forward(cfg: Config, w, kern, cache, ids, start, rope, all_logits=False):
    """Run `ids` at positions [start, start + n), appending their K/V to `cache`.

    w: {name: Weight} (minigpt.model.weights), matrices as kern.prepare() left them for their bits,
    and 'output' the head (tok_embd itself when the embeddings are tied; engine.Engine sees to it);
    cache: (k, v), lists of each layer's [n_kv_heads, cap, row] (engine.KVCache, rows of any of
    quant.KV_TYPES); rope: each layer's
    (cos, sin) tables (layer_ropes). Returns logits [n, vocab] if all_logits else [1, vocab] (the
    last position).
    """
    return forward_batch(cfg, w, kern, [(ids, start, cache)], rope, [len(ids)] if all_logits else None)


def forward_batch(cfg: Config, w, kern, seqs, rope, tails=None):
    """forward() of several sequences at once: seqs is a list of (ids, start, cache), each as forward
    takes them, no two with the same cache. Their rows are stacked, n = every sequence's tokens, for
    every step but RoPE's angles (each token's own position), the K/V writes and attention (each
    sequence's own cache). tails: how many of each sequence's last positions want logits (None: 1
    each). Returns logits [sum(tails), vocab], each sequence's in turn.
    """
    f, hd, eps = cfg.features, cfg.head_dim, cfg.norm_eps
    act = ACTS[f.act]
    lens = [len(ids) for ids, _, _ in seqs]
    ends = np.cumsum(lens)   # sequence s owns rows [ends[s] - lens[s], ends[s])
    pos = np.concatenate([np.arange(start, start + m) for (_, start, _), m in zip(seqs, lens)])   # [n] positions
    n = len(pos)
    ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _, _ in seqs])
    x = kern.get_rows(w["tok_embd"].data, w["tok_embd"].qtype, ids)   # [n, d]
    if f.embed_scale:
        x *= np.float32(cfg.embed_scale)
    for i in range(cfg.n_layers):
        L = lambda name: w[f"layers.{i}.{name}"]
        h = rms_norm(x, L("attn_norm").data, eps)
        q, k, v = matmul(kern, h, L("wq")), matmul(kern, h, L("wk")), matmul(kern, h, L("wv"))
        if cfg.qkv_bias:
            q, k, v = q + L("bq").data, k + L("bk").data, v + L("bv").data
        q, k, v = q.reshape(n, cfg.n_heads, hd), k.reshape(n, cfg.n_kv_heads, hd), v.reshape(n, cfg.n_kv_heads, hd)
        if f.qk_norm:
            q, k = rms_norm(q, L("q_norm").data, eps), rms_norm(k, L("k_norm").data, eps)
        cos, sin = rope[i][0][pos], rope[i][1][pos]
        apply_rope(q, cos, sin, cfg.rope_dim, f.rope_neox)
        apply_rope(k, cos, sin, cfg.rope_dim, f.rope_neox)
        a = np.empty((n, cfg.n_heads * hd), np.float32)
        for (_, start, (kc, vc)), r1, m in zip(seqs, ends, lens):
            r0 = r1 - m
            store_kv(kc[i], vc[i], k[r0:r1], v[r0:r1], start)
            a[r0:r1] = kern.attention(np.ascontiguousarray(q[r0:r1]), kc[i], vc[i], start, cfg.query_scale,
                                      cfg.windows[i])
        o = matmul(kern, a, L("wo"))
        x += rms_norm(o, L("post_attn_norm").data, eps) if f.post_norms else o

        h = rms_norm(x, L("ffn_norm").data, eps)
        g = act(matmul(kern, h, L("w_gate"))) * matmul(kern, h, L("w_up"))
        o = matmul(kern, g, L("w_down"))
        x += rms_norm(o, L("post_ffn_norm").data, eps) if f.post_norms else o

    tails = np.ones(len(seqs), dtype=np.int64) if tails is None else np.asarray(tails, dtype=np.int64)
    x = x[np.concatenate([np.arange(e - t, e) for e, t in zip(ends, tails)])]
    return matmul(kern, rms_norm(x, w["output_norm"].data, eps), w["output"])
