"""The gemma3 architecture: Gemma 3 text models (config.ARCHITECTURES["gemma3"]: the embedding scaled
by sqrt(dim), q/k head norms, RoPE on halves, post-attention and post-FFN norms, a GELU-tanh gate,
tied embeddings), with sliding-window local layers that have their own RoPE base. What is particular
to it lives here: checkpoint names, the Hugging Face class, and what llama.cpp assumes of its GGUFs.

Hugging Face's Gemma RMSNorm multiplies by (1 + w); minigpt stores the multiplier, so the converter
adds 1 to every norm weight (NORM_PLUS_ONE). q/k rows stay in halves order (no permutation).
"""

import math

from ..config import checked
from ..errors import CLIP_ARG, ConvertError, clip

HF_CLASSES = ("Gemma3ForCausalLM",)

PERMUTE_QK = False
GGUF_ARCHS = {"gemma3": False}   # GGUF general.architecture -> q/k rows to permute: none, halves is this order
NORM_PLUS_ONE = True

# Careful: Hugging Face's post_attention_layernorm is the norm of the attention output
# (post_attn_norm); the FFN's input norm is pre_feedforward_layernorm.
HF_NAMES = {
    "model.embed_tokens.weight": "tok_embd",
    "model.norm.weight": "output_norm",
    "lm_head.weight": "output",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.wq",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.wk",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.wv",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.wo",
    "model.layers.{i}.self_attn.q_norm.weight": "layers.{i}.q_norm",
    "model.layers.{i}.self_attn.k_norm.weight": "layers.{i}.k_norm",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.post_attn_norm",
    "model.layers.{i}.pre_feedforward_layernorm.weight": "layers.{i}.ffn_norm",
    "model.layers.{i}.post_feedforward_layernorm.weight": "layers.{i}.post_ffn_norm",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.w_gate",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.w_up",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.w_down",
}

CHAT_TEMPLATE = "gemma"   # the built-in template (minigpt/template.py) when the file carries none

# --- Hugging Face config.json (read by minigpt/convert/hf.py; `where` names the file in errors)

HF_ACTIVATION = ("hidden_activation", "gelu_pytorch_tanh")
HF_DEFAULTS = {"rope_theta": 1_000_000.0, "norm_eps": 1e-6, "tied_embeddings": True}
HF_QKV_BIAS = ()


def hf_local_layers(hp, cls, n_layers, read):
    """The sliding-window layers when config.json has no layer_types: all but every pattern-th."""
    pattern = read("sliding_window_pattern", hp.get("_sliding_window_pattern", 6))
    if pattern < 1:
        raise ConvertError(f"config.json: sliding_window_pattern = {pattern} must be at least 1")
    return [i for i in range(n_layers) if (i + 1) % pattern]


def hf_config(hp, rope, read, where):
    """The local layers' RoPE base and the query scale; rope(layer_type, default theta) -> (theta,
    scaling, llama3 parameters)."""
    theta_local, local_scaling, _ = rope("sliding_attention", ROPE_THETA_LOCAL)
    if local_scaling:
        raise ConvertError(f"{where}: RoPE scaling on Gemma 3's local layers is not supported")
    if hp.get("tie_word_embeddings", True) is False:
        raise ConvertError(f"{where}: Gemma 3 with untied embeddings is not supported")
    scalar = read("query_pre_attn_scalar", 256, (int, float))
    if not 0 < scalar < math.inf:
        raise ConvertError(f"{where}: query_pre_attn_scalar = {clip(scalar, CLIP_ARG)} is not a positive number")
    return {"rope_theta_local": theta_local, "query_scale": float(scalar) ** -0.5}


# What llama.cpp assumes of a gemma3 GGUF (its file does not say): 5 local layers, then a global
# one; local layers use RoPE base 10000; the 27B model (62 layers) scales queries by dim / n_heads.
LOCAL_PATTERN = 6
ROPE_THETA_LOCAL = 10000.0


def gguf_config(field, n_layers, dim, n_heads):
    """Config fields a gemma3 GGUF implies beyond the common keys; field(key, default=...) reads
    'gemma3.' + key."""
    if field("final_logit_softcapping", default=0.0) or field("attn_logit_softcapping", default=0.0):
        raise ConvertError("logit soft-capping is not supported")
    extra = {}
    window = field("attention.sliding_window", default=0)
    if window:
        extra = {"sliding_window": window, "rope_theta_local": ROPE_THETA_LOCAL,
                 "local_layers": [i for i in range(n_layers) if i % LOCAL_PATTERN < LOCAL_PATTERN - 1]}
    key_length = checked("head_dim", field("attention.key_length", default=0)) or dim // n_heads
    extra["query_scale"] = (key_length if n_layers != 62 else dim // n_heads) ** -0.5
    return extra
