"""The llama architecture: Llama 2/3, SmolLM2, Mistral, Qwen2 (config.ARCHITECTURES["llama"]: the plain
decoder block, SwiGLU, RoPE on adjacent pairs). Qwen2's q/k/v biases and Mistral's sliding windows are
Config fields. What is particular to it lives here: checkpoint names and the Hugging Face classes.

Hugging Face keeps each head's q/k rows in "halves" order (RoPE rotates x[i] with x[i + hd/2]); this
architecture rotates adjacent pairs, the order of llama GGUFs, so the converter permutes those rows
(PERMUTE_QK). A qwen2 GGUF keeps Hugging Face's order (llama.cpp runs it with NEOX RoPE on unpermuted
weights): its q/k rows and biases are permuted the same way (GGUF_ARCHS).
"""

# Hugging Face config.json "architectures" entries converted as this architecture
HF_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

PERMUTE_QK = True      # HF q/k rows (and Qwen2's q/k biases) are permuted into adjacent-pair order
NORM_PLUS_ONE = False  # HF norm weights are the multiplier itself

# GGUF general.architecture values converted as this architecture -> whether the file keeps q/k rows
# (and q/k biases) in Hugging Face's halves order, to be permuted into pairs
GGUF_ARCHS = {"llama": False, "qwen2": True}

# Hugging Face tensor names -> minigpt's (model/weights.py). `{i}` is the layer index.
HF_NAMES = {
    "model.embed_tokens.weight": "tok_embd",
    "model.norm.weight": "output_norm",
    "lm_head.weight": "output",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.wq",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.wk",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.wv",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.wo",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.w_gate",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.w_up",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.w_down",
    # Qwen2's biases
    "model.layers.{i}.self_attn.q_proj.bias": "layers.{i}.bq",
    "model.layers.{i}.self_attn.k_proj.bias": "layers.{i}.bk",
    "model.layers.{i}.self_attn.v_proj.bias": "layers.{i}.bv",
}

CHAT_TEMPLATE = None   # no default: the built-in template is picked by the vocabulary's markers

# --- Hugging Face config.json (read by minigpt/convert/hf.py; `where` names the file in errors)

HF_ACTIVATION = ("hidden_act", "silu")              # the key naming the FFN activation, and the one supported
HF_DEFAULTS = {"rope_theta": 10000.0, "norm_eps": 1e-5, "tied_embeddings": False}
HF_QKV_BIAS = ("Qwen2ForCausalLM",)                 # classes whose q/k/v projections have biases


def hf_local_layers(hp, cls, n_layers, read):
    """The sliding-window layers when config.json has no layer_types: Qwen2's from max_window_layers
    on (when use_sliding_window), Mistral's all of them (when it has a window)."""
    if cls == "Qwen2ForCausalLM" and hp.get("use_sliding_window"):
        return list(range(read("max_window_layers", 28), n_layers))
    if cls == "MistralForCausalLM" and hp.get("sliding_window") is not None:
        return list(range(n_layers))
    return []


def hf_config(hp, rope, read, where):
    """Config fields beyond the common keys: none."""
    return {}


def gguf_config(field, n_layers, dim, n_heads):
    """Config fields a llama or qwen2 GGUF implies beyond the common keys: none. attention.sliding_window,
    when a file has it, is not read: llama.cpp runs every layer of these architectures over the whole
    context (a Qwen2 window is used only with config.json's use_sliding_window, which GGUFs do not record
    and Qwen2.5 leaves off)."""
    return {}
