"""The Gemma 3 forward pass: Llama's shape with more norms, GELU, and sliding-window local layers.

What differs from minigpt/model/llama.py (whose building blocks this reuses), as llama.cpp runs a
gemma3 GGUF:
- the token embedding is scaled by sqrt(dim);
- every query and key head is RMS-normed (q_norm, k_norm, over head_dim) before RoPE, and RoPE
  rotates halves (x[i], x[i + rope_dim / 2]), not adjacent pairs;
- q is scaled by cfg.query_scale (1 / sqrt(head_dim) for the small models);
- local layers (cfg.local_layers, 5 of every 6) attend over the last cfg.sliding_window keys, with
  RoPE base cfg.rope_theta_local; the global ones over everything, with cfg.rope_theta;
- the attention and FFN outputs are RMS-normed (post_attn_norm, post_ffn_norm) before their
  residual adds, and the FFN is gelu_tanh(gate) * up;
Norm weights are stored as multipliers (Hugging Face's 1 + w), so rms_norm is llama.py's.
"""

import numpy as np

from ..config import Config
from .llama import apply_rope, attention, rms_norm, store_kv


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x * x * x)))


def forward(cfg: Config, w, kern, cache, ids, start, rope, all_logits=False, precision="exact"):
    """llama.forward's contract, for arch gemma3."""
    n, hd = len(ids), cfg.head_dim
    mm = kern.matmul
    mm8 = getattr(kern, "matmul_q8", mm) if precision != "exact" else mm
    mm_fine = mm8 if precision == "fast" else mm   # w_down and the head
    attend = getattr(kern, "attention", None) or attention
    x = kern.get_rows(w["tok_embd"].data, w["tok_embd"].qtype, np.asarray(ids, dtype=np.int32))
    x *= np.float32(np.sqrt(cfg.dim))
    for i in range(cfg.n_layers):
        L = lambda name: w[f"layers.{i}.{name}"]
        h = rms_norm(x, L("attn_norm").data, cfg.norm_eps)
        q = mm8(h, L("wq").data, L("wq").qtype).reshape(n, cfg.n_heads, hd)
        k = mm8(h, L("wk").data, L("wk").qtype).reshape(n, cfg.n_kv_heads, hd)
        v = mm8(h, L("wv").data, L("wv").qtype).reshape(n, cfg.n_kv_heads, hd)
        q = rms_norm(q, L("q_norm").data, cfg.norm_eps)
        k = rms_norm(k, L("k_norm").data, cfg.norm_eps)
        cos, sin = rope[i][0][start:start + n], rope[i][1][start:start + n]
        apply_rope(q, cos, sin, cfg.rope_dim, neox=True)
        apply_rope(k, cos, sin, cfg.rope_dim, neox=True)
        store_kv(cache[0][i], cache[1][i], k, v, start)
        a = attend(q, cache[0][i], cache[1][i], start, cfg.query_scale, cfg.sliding_window * cfg.is_local(i))
        x += rms_norm(mm8(a, L("wo").data, L("wo").qtype), L("post_attn_norm").data, cfg.norm_eps)

        h = rms_norm(x, L("ffn_norm").data, cfg.norm_eps)
        g = mm8(h, L("w_gate").data, L("w_gate").qtype)
        u = mm8(h, L("w_up").data, L("w_up").qtype)
        f = mm_fine(np.ascontiguousarray(gelu_tanh(g) * u), L("w_down").data, L("w_down").qtype)
        x += rms_norm(f, L("post_ffn_norm").data, cfg.norm_eps)

    if not all_logits:
        x = x[-1:]
    x = rms_norm(x, w["output_norm"].data, cfg.norm_eps)
    head = w["tok_embd"] if cfg.tied_embeddings else w["output"]
    return mm_fine(np.ascontiguousarray(x), head.data, head.qtype)
