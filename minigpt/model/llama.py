"""The Llama-family forward pass: RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU.

Plain functions over explicit weights and preallocated buffers. Matmuls go through a kernel
backend (minigpt.kernels); the rest is NumPy in float32. Shapes: n = tokens in this call,
T = tokens in the cache after it, d = dim, hd = head_dim.

RoPE rotates adjacent pairs (x[2i], x[2i+1]), the order of GGUF weights (llama.cpp "normal" RoPE;
the GGUF converter permutes Hugging Face's q/k rows into it).
"""

from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..errors import FormatError

LAYER_WEIGHTS = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down")
QKV_BIASES = ("bq", "bk", "bv")                                           # Config.qkv_bias
GEMMA3_NORMS = ("q_norm", "k_norm", "post_attn_norm", "post_ffn_norm")    # arch gemma3


@dataclass
class Weight:
    data: np.ndarray   # stored form (see minigpt.quant)
    qtype: str


def layer_weight_names(cfg: Config):
    """The names of one layer's tensors (without the 'layers.{i}.' prefix)."""
    names = LAYER_WEIGHTS + (QKV_BIASES if cfg.qkv_bias else ())
    return names + (GEMMA3_NORMS if cfg.arch == "gemma3" else ())


def weight_shapes(cfg: Config):
    """{tensor name or per-layer suffix: logical shape}."""
    d, hd, qd, kv = cfg.dim, cfg.head_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {"tok_embd": (cfg.vocab_size, d), "output": (cfg.vocab_size, d), "output_norm": (d,),
            "rope_freqs": (cfg.rope_dim // 2,), "attn_norm": (d,), "ffn_norm": (d,),
            "wq": (qd, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, qd), "bq": (qd,), "bk": (kv,), "bv": (kv,),
            "w_gate": (cfg.hidden_dim, d), "w_up": (cfg.hidden_dim, d), "w_down": (d, cfg.hidden_dim),
            "q_norm": (hd,), "k_norm": (hd,), "post_attn_norm": (d,), "post_ffn_norm": (d,)}


def load_weights(f, cfg: Config, dequantize=None):
    """Weights of a MgptFile as {name: Weight} (zero-copy views, or f32 copies when `dequantize` is given)."""
    names = ["tok_embd", "output_norm"] + [f"layers.{i}.{w}" for i in range(cfg.n_layers)
                                           for w in layer_weight_names(cfg)]
    if not cfg.tied_embeddings:
        names.append("output")
    if "rope_freqs" in f.tensors:
        names.append("rope_freqs")
    expect = weight_shapes(cfg)
    w = {}
    for name in names:
        if name not in f.tensors:
            raise FormatError(f"{f.path}: missing tensor {name!r}")
        info = f.tensors[name]
        want = expect[name.rsplit(".", 1)[-1]]
        if info.shape != want:
            raise FormatError(f"{f.path}: tensor {name} has shape {list(info.shape)}, expected {list(want)}")
        if len(want) == 1 and info.qtype != "f32":
            raise FormatError(f"{f.path}: tensor {name} must be f32, not {info.qtype}")
        data = f.tensor(name)
        if dequantize is not None and len(want) == 2:
            w[name] = Weight(np.ascontiguousarray(dequantize(data, info.qtype), dtype=np.float32), "f32")
        else:
            w[name] = Weight(data, info.qtype)
    return w


# --- building blocks

def rms_norm(x, weight, eps, out=None):
    # x: [n, d] -> [n, d]
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return np.multiply(x * (1.0 / np.sqrt(ms + eps)).astype(np.float32), weight, out=out)


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


def apply_rope(x, cos, sin, rope_dim, neox=False):
    """Rotate x: [n, heads, hd] in place on its first rope_dim dims; cos, sin: [n, rope_dim // 2].
    Pair p is (x[2p], x[2p + 1]), or with neox (x[p], x[p + rope_dim // 2])."""
    half = rope_dim // 2
    i0, i1 = (slice(0, half), slice(half, rope_dim)) if neox else (slice(0, rope_dim, 2), slice(1, rope_dim, 2))
    x0 = x[:, :, i0].copy()
    x1 = x[:, :, i1]
    c, s = cos[:, None, :], sin[:, None, :]
    x[:, :, i0] = x0 * c - x1 * s
    x[:, :, i1] = x0 * s + x1 * c


def attention(q, k_cache, v_cache, start, scale=None, window=0):
    """Causal GQA attention of n new queries at positions [start, start + n) over the cache.

    q: [n, n_heads, hd]; k_cache, v_cache: [n_kv, cap, hd], position t in slot t % cap (a ring when
    cap is less than the context), holding every position a query sees. scale: of q.k (default
    1 / sqrt(hd)); window: 0, or each query sees only the `window` latest keys, itself included.
    -> [n, n_heads * hd]
    """
    n, n_heads, hd = q.shape
    n_kv, cap = k_cache.shape[:2]
    T = start + n
    lo = max(0, start - window + 1) if window else 0   # the first key any query sees
    assert T - lo <= cap, "the ring is smaller than the keys in view"
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


def store_kv(k_cache, v_cache, k, v, start):
    """Write k, v: [n, n_kv, hd] of positions [start, start + n) into their slots of one layer's cache."""
    slots = np.arange(start, start + len(k)) % k_cache.shape[1]
    k_cache[:, slots] = k.transpose(1, 0, 2)
    v_cache[:, slots] = v.transpose(1, 0, 2)


def silu(x):
    return x / (1.0 + np.exp(-x))


# --- the model

def forward(cfg: Config, w, kern, cache, ids, start, rope, all_logits=False, precision="exact"):
    """Run `ids` at positions [start, start + n), appending their K/V to `cache`.

    cache: (k, v), lists of each layer's [n_kv_heads, cap, hd] (engine.KVCache); rope: each layer's
    (cos, sin) tables. precision (engine.Engine): 'exact' kern.matmul; 'fast' kern.matmul_q8 (int8
    activations); 'balanced' matmul_q8 except w_down and the head. (matmul_q8 of f32 weights is
    matmul: the numpy backend's.) Returns logits [n, vocab] if all_logits else [1, vocab] (the last position).
    """
    n, hd = len(ids), cfg.head_dim
    mm = kern.matmul
    mm8 = getattr(kern, "matmul_q8", mm) if precision != "exact" else mm
    mm_fine = mm8 if precision == "fast" else mm   # w_down and the head
    attend = getattr(kern, "attention", None) or attention   # a backend may bring its own
    x = kern.get_rows(w["tok_embd"].data, w["tok_embd"].qtype, np.asarray(ids, dtype=np.int32))   # [n, d]
    for i in range(cfg.n_layers):
        L = lambda name: w[f"layers.{i}.{name}"]
        h = rms_norm(x, L("attn_norm").data, cfg.norm_eps)
        q = mm8(h, L("wq").data, L("wq").qtype)
        k = mm8(h, L("wk").data, L("wk").qtype)
        v = mm8(h, L("wv").data, L("wv").qtype)
        if cfg.qkv_bias:
            q, k, v = q + L("bq").data, k + L("bk").data, v + L("bv").data
        q, k, v = q.reshape(n, cfg.n_heads, hd), k.reshape(n, cfg.n_kv_heads, hd), v.reshape(n, cfg.n_kv_heads, hd)
        cos, sin = rope[i][0][start:start + n], rope[i][1][start:start + n]
        apply_rope(q, cos, sin, cfg.rope_dim)
        apply_rope(k, cos, sin, cfg.rope_dim)
        store_kv(cache[0][i], cache[1][i], k, v, start)
        a = attend(q, cache[0][i], cache[1][i], start, cfg.query_scale, cfg.sliding_window * cfg.is_local(i))
        x += mm8(a, L("wo").data, L("wo").qtype)

        h = rms_norm(x, L("ffn_norm").data, cfg.norm_eps)
        g = mm8(h, L("w_gate").data, L("w_gate").qtype)
        u = mm8(h, L("w_up").data, L("w_up").qtype)
        x += mm_fine(np.ascontiguousarray(silu(g) * u), L("w_down").data, L("w_down").qtype)

    if not all_logits:
        x = x[-1:]
    x = rms_norm(x, w["output_norm"].data, cfg.norm_eps)
    head = w["tok_embd"] if cfg.tied_embeddings else w["output"]
    return mm_fine(np.ascontiguousarray(x), head.data, head.qtype)
