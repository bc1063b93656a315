"""The one weights table: every tensor the decoder reads, under minigpt's names, with its logical shape.

Global tensors: tok_embd, output_norm, output (absent when the embeddings are tied: the head is then
tok_embd), rope_freqs (optional: Llama 3's per-frequency RoPE factors). Per layer, 'layers.{i}.' +
a name below. Matrices are stored in any minigpt.quant type; vectors (norms, biases) are f32.
"""

from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..errors import FormatError

MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")   # the matmuls of a layer, in order
NORMS = ("attn_norm", "ffn_norm")
BIASES = ("bq", "bk", "bv")                     # Config.qkv_bias
QK_NORMS = ("q_norm", "k_norm")                 # Features.qk_norm
POST_NORMS = ("post_attn_norm", "post_ffn_norm")  # Features.post_norms


@dataclass
class Weight:
    data: np.ndarray   # stored form (minigpt.quant), or what a backend's prepare() made of it
    qtype: str
    bits: int = 32     # a matrix's activations in the decoder: 32 (float32), 16 or 8 (quantized first)


def layer_names(cfg: Config):
    """The names of one layer's tensors (without the 'layers.{i}.' prefix)."""
    f = cfg.features
    return (NORMS + MATRICES + (BIASES if cfg.qkv_bias else ()) + (QK_NORMS if f.qk_norm else ())
            + (POST_NORMS if f.post_norms else ()))


def tensor_names(cfg: Config):
    """Every tensor a model of `cfg` must have (rope_freqs may come on top)."""
    head = () if cfg.tied_embeddings else ("output",)
    return ["tok_embd", "output_norm", *head] + [f"layers.{i}.{n}" for i in range(cfg.n_layers)
                                                  for n in layer_names(cfg)]


def head_name(cfg: Config):
    """The tensor the output head multiplies with."""
    return "tok_embd" if cfg.tied_embeddings else "output"


def shapes(cfg: Config):
    """{tensor name or per-layer name: logical shape}."""
    d, hd, qd, kv = cfg.dim, cfg.head_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {"tok_embd": (cfg.vocab_size, d), "output": (cfg.vocab_size, d), "output_norm": (d,),
            "rope_freqs": (cfg.rope_dim // 2,), "attn_norm": (d,), "ffn_norm": (d,),
            "wq": (qd, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, qd), "bq": (qd,), "bk": (kv,), "bv": (kv,),
            "w_gate": (cfg.hidden_dim, d), "w_up": (cfg.hidden_dim, d), "w_down": (d, cfg.hidden_dim),
            "q_norm": (hd,), "k_norm": (hd,), "post_attn_norm": (d,), "post_ffn_norm": (d,)}


def load(f, cfg: Config):
    """Weights of a MgptFile as {name: Weight}: zero-copy views, checked against the table."""
    names = tensor_names(cfg) + (["rope_freqs"] if "rope_freqs" in f.tensors else [])
    expect = shapes(cfg)
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
        w[name] = Weight(f.tensor(name), info.qtype)
    return w



def unused(stored, prepared):
    """Names of the stored weights (load()'s views into the file) that no prepared weight reads: those a
    backend's prepare() copied into another form (x8-packed) and that nothing else still points into,
    as a tied head or get_rows' embedding table does. The file's pages of these may be given back."""
    held = [w.data for w in prepared.values()]
    return [name for name, w in stored.items() if not any(np.may_share_memory(w.data, h) for h in held)]
