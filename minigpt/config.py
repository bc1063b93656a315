"""The model config: the one source of hyperparameters, stored as JSON in the .mgpt header, and the
feature table that says what each architecture's decoder block does.

Every architecture runs the same decoder (minigpt/model/decoder.py, csrc/decoder.c): pre-norm blocks
of grouped-query attention over RoPE and a gated FFN. Its row in ARCHITECTURES switches the steps
that differ; the per-model facts (q/k/v biases, sliding-window layers, RoPE bases) are Config fields.
Norm weights are stored as the multiplier itself (Hugging Face's 1 + w for Gemma, as GGUF stores it).
"""

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import FormatError


@dataclass(frozen=True)
class Features:
    """What an architecture's decoder block does beyond the plain Llama block."""
    act: str = "silu"           # FFN gate act(gate) * up: 'silu' (SwiGLU) or 'gelu_tanh' (GeGLU)
    rope_neox: bool = False     # RoPE rotates halves (x[i], x[i + rope_dim / 2]), not pairs (x[2i], x[2i + 1])
    qk_norm: bool = False       # RMSNorm of every query and key head before RoPE (q_norm, k_norm)
    post_norms: bool = False    # RMSNorm of the attention and FFN outputs before their residual adds
    embed_scale: bool = False   # the token embedding is multiplied by sqrt(dim)


# one row per architecture (Config.arch); its name maps and conversion hooks: minigpt/model/<arch>.py
ARCHITECTURES = {
    "llama": Features(),    # Llama 2/3, SmolLM2, Mistral, Qwen2 (biases and windows are Config fields)
    "gemma3": Features(act="gelu_tanh", rope_neox=True, qk_norm=True, post_norms=True, embed_scale=True),
}


@dataclass(frozen=True)
class Config:
    arch: str
    dim: int                      # residual stream width
    n_layers: int
    n_heads: int
    n_kv_heads: int               # < n_heads: grouped-query attention
    hidden_dim: int               # FFN inner width
    vocab_size: int
    context_length: int           # the longest context the model was trained for
    head_dim: int = 0             # 0: dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_dim: int = 0             # rotated dims per head; 0: head_dim
    rope_scaling: dict = field(default_factory=dict)  # {} or {"type": "linear", "factor": f}
    tied_embeddings: bool = False  # output head = token embedding
    name: str = ""
    sliding_window: int = 0       # keys a local layer's query sees, itself included; 0: no local layers
    local_layers: tuple = ()      # indices of the sliding-window layers
    rope_theta_local: float = 0.0  # RoPE base of the local layers; 0: rope_theta (no scaling on them)
    query_scale: float = 0.0      # q is multiplied by it before q.k; 0: 1 / sqrt(head_dim)
    qkv_bias: bool = False        # the q, k, v projections add biases bq, bk, bv (Qwen2)

    # derived in __post_init__, not stored: features (the architecture's row), embed_scale (1 or
    # sqrt(dim)), windows (per layer: 0, or sliding_window on a local layer)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise FormatError(f"unsupported architecture {self.arch!r} (supported: {', '.join(ARCHITECTURES)})")
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size", "context_length"):
            v = getattr(self, k)
            if not isinstance(v, int) or not 0 < v <= 1 << 24:
                raise FormatError(f"bad model config: {k} = {v!r}")
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if not self.rope_dim:
            object.__setattr__(self, "rope_dim", self.head_dim)
        object.__setattr__(self, "local_layers", tuple(sorted(set(self.local_layers))))
        if not self.rope_theta_local:
            object.__setattr__(self, "rope_theta_local", self.rope_theta)
        if not self.query_scale:
            object.__setattr__(self, "query_scale", self.head_dim ** -0.5)
        if (self.sliding_window < 0 or bool(self.sliding_window) != bool(self.local_layers)
                or any(not isinstance(i, int) or not 0 <= i < self.n_layers for i in self.local_layers)):
            raise FormatError(f"bad model config: sliding_window {self.sliding_window}, "
                              f"local_layers {list(self.local_layers)}")
        if self.n_heads % self.n_kv_heads or self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise FormatError(f"bad model config: heads {self.n_heads}/{self.n_kv_heads}, "
                              f"rope_dim {self.rope_dim}, head_dim {self.head_dim}")
        features = ARCHITECTURES[self.arch]
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "embed_scale", math.sqrt(self.dim) if features.embed_scale else 1.0)
        local = set(self.local_layers)
        object.__setattr__(self, "windows", tuple(self.sliding_window if i in local else 0
                                                  for i in range(self.n_layers)))

    def to_dict(self):
        d = asdict(self)
        d["local_layers"] = list(self.local_layers)
        return d

    def is_local(self, layer):
        """Whether `layer` attends over a sliding window (and uses rope_theta_local)."""
        return self.windows[layer] > 0

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FormatError(f"unknown config keys {sorted(unknown)} (file from a newer minigpt?)")
        try:
            return cls(**d)
        except TypeError as e:
            raise FormatError(f"bad model config: {e}") from None
