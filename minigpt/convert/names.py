"""Checkpoint tensor names -> minigpt tensor names: literal tables, one per source format."""

import re

from ..model import ARCH_FILES

# GGUF (llama.cpp) names. `{i}` is the layer index.
GGUF = {
    "token_embd.weight": "tok_embd",
    "output_norm.weight": "output_norm",
    "output.weight": "output",
    "rope_freqs.weight": "rope_freqs",
    "blk.{i}.attn_norm.weight": "layers.{i}.attn_norm",
    "blk.{i}.attn_q.weight": "layers.{i}.wq",
    "blk.{i}.attn_k.weight": "layers.{i}.wk",
    "blk.{i}.attn_v.weight": "layers.{i}.wv",
    "blk.{i}.attn_output.weight": "layers.{i}.wo",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm",
    "blk.{i}.ffn_gate.weight": "layers.{i}.w_gate",
    "blk.{i}.ffn_up.weight": "layers.{i}.w_up",
    "blk.{i}.ffn_down.weight": "layers.{i}.w_down",
    # Qwen2's biases
    "blk.{i}.attn_q.bias": "layers.{i}.bq",
    "blk.{i}.attn_k.bias": "layers.{i}.bk",
    "blk.{i}.attn_v.bias": "layers.{i}.bv",
    # Gemma 3's extra norms
    "blk.{i}.attn_q_norm.weight": "layers.{i}.q_norm",
    "blk.{i}.attn_k_norm.weight": "layers.{i}.k_norm",
    "blk.{i}.post_attention_norm.weight": "layers.{i}.post_attn_norm",
    "blk.{i}.post_ffw_norm.weight": "layers.{i}.post_ffn_norm",
}

# GGUF files carry a few tensors the forward pass never reads (e.g. precomputed RoPE tables).
GGUF_IGNORED = {"rope_cos.weight", "rope_sin.weight"}


def _compile(table):
    out = []
    for src, dst in table.items():
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)") + "$"
        out.append((re.compile(pattern), dst))
    return out


# Hugging Face checkpoints may carry buffers the forward pass recomputes.
HF_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")

_GGUF = _compile(GGUF)
_HF = {arch: _compile(f.HF_NAMES) for arch, f in ARCH_FILES.items()}   # each architecture's own table


def _lookup(table, name):
    for pattern, dst in table:
        m = pattern.match(name)
        if m:
            return dst.format(i=int(m.group(1))) if m.groups() else dst
    return None


def map_gguf_name(name):
    """'blk.3.attn_q.weight' -> 'layers.3.wq'; None for a name not in the table."""
    return _lookup(_GGUF, name)


def map_hf_name(name, arch):
    """'model.layers.3.self_attn.q_proj.weight' -> 'layers.3.wq' for minigpt architecture `arch`
    (its file's HF_NAMES); None for a name not in its table."""
    return _lookup(_HF[arch], name)
