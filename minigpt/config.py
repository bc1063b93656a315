"""The model config: the one source of hyperparameters, stored as JSON in the .mgpt header, and the
feature table that says what each architecture's decoder block does.

Every architecture runs the same decoder (minigpt/model/decoder.py, csrc/decoder.c): pre-norm blocks
of grouped-query attention over RoPE and a gated FFN. Its row in ARCHITECTURES switches the steps
that differ; the per-model facts (q/k/v biases, sliding-window layers, RoPE bases) are Config fields.
Norm weights are stored as the multiplier itself (Hugging Face's 1 + w for Gemma, as GGUF stores it).
"""

import math
from dataclasses import asdict, dataclass, field, fields

from . import args
from .errors import CLIP_ARG, ArgumentError, FormatError, clip


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


# What each field may hold, checked once when a Config is made (from a file header, a GGUF or a
# config.json: all untrusted), so that the code after it can trust it. The upper ends are far beyond
# any released model (Llama 3.1 405B: dim 16384, 126 layers, 128 heads, ffn 53248; Gemma 3: 262,144
# tokens) and keep a hostile file from asking for gigabytes of tables before anything is read.
INT_RANGES = {
    "dim": (1, 1 << 16), "n_layers": (1, 1024), "n_heads": (1, 1024), "n_kv_heads": (1, 1024),
    "hidden_dim": (1, 1 << 20), "vocab_size": (1, 1 << 21), "context_length": (1, 1 << 24),
    "head_dim": (0, 1024), "rope_dim": (0, 1024), "sliding_window": (0, 1 << 24),
}
FLOAT_RANGES = {   # (lo, hi]: above 0 ...
    "norm_eps": (0.0, 1.0), "rope_theta": (0.0, 1e12), "rope_theta_local": (0.0, 1e12), "query_scale": (0.0, 1e3),
}
UNSET_ZERO = {"rope_theta_local", "query_scale"}   # ... or 0 for these: derived from other fields
BOOLS = ("tied_embeddings", "qkv_bias")
NAME_CHARS = 200


def checked(name, value):
    """value, checked against INT_RANGES[name] as Config checks it, for code that needs a field before
    the Config exists (an architecture's GGUF hook makes a list of layers)."""
    lo, hi = INT_RANGES[name]
    try:
        return args.integer(name, value, lo, hi)
    except ArgumentError as e:
        raise FormatError(f"bad model config: {e}") from None


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
        self._check_fields()
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if not self.head_dim:
            raise FormatError(f"bad model config: dim {self.dim} has no room for {self.n_heads} heads")
        if not self.rope_dim:
            object.__setattr__(self, "rope_dim", self.head_dim)
        object.__setattr__(self, "local_layers", tuple(sorted(set(self.local_layers))))
        if not self.rope_theta_local:
            object.__setattr__(self, "rope_theta_local", self.rope_theta)
        if not self.query_scale:
            object.__setattr__(self, "query_scale", self.head_dim ** -0.5)
        if (bool(self.sliding_window) != bool(self.local_layers)
                or any(not 0 <= i < self.n_layers for i in self.local_layers)):
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

    def _check_fields(self):
        """Types and ranges of the stored fields (INT_RANGES, FLOAT_RANGES, ...), with the API's checks
        (minigpt.args); numbers become floats where floats are meant, a long name is cut. FormatError
        names the first bad field."""
        set_ = lambda k, v: object.__setattr__(self, k, v)
        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            raise FormatError(f"unsupported architecture {clip(self.arch, CLIP_ARG)} "
                              f"(supported: {', '.join(ARCHITECTURES)})")
        try:
            for k, (lo, hi) in INT_RANGES.items():
                args.integer(k, getattr(self, k), lo, hi)
            for k, (lo, hi) in FLOAT_RANGES.items():
                set_(k, args.number(k, getattr(self, k), lo, hi, above=k not in UNSET_ZERO))
            for k in BOOLS:
                args.flag(k, getattr(self, k))
            set_("name", args.text("name", self.name)[:NAME_CHARS])
            rs = self.rope_scaling
            if not isinstance(rs, dict) or rs and (set(rs) != {"type", "factor"} or rs["type"] != "linear"):
                raise ArgumentError(f'rope_scaling must be empty or {{"type": "linear", "factor": f}}, '
                                    f"got {clip(rs, CLIP_ARG)}")
            if rs:
                set_("rope_scaling", {"type": "linear",
                                      "factor": args.number("rope_scaling factor", rs["factor"], 0, 1e6, above=True)})
            layers = self.local_layers
            if not isinstance(layers, (tuple, list)) or len(layers) > INT_RANGES["n_layers"][1]:
                raise ArgumentError(f"local_layers must be a list of layer indices, got {clip(layers, CLIP_ARG)}")
            for i in layers:
                args.integer("local_layers", i, 0)
        except ArgumentError as e:
            raise FormatError(f"bad model config: {e}") from None

    def to_dict(self):
        d = asdict(self)
        d["local_layers"] = list(self.local_layers)
        return d

    def is_local(self, layer):
        """Whether `layer` attends over a sliding window (and uses rope_theta_local)."""
        return self.windows[layer] > 0

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise FormatError(f"bad model config: {clip(d, CLIP_ARG)} is not an object")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FormatError(f"unknown config keys {clip(sorted(unknown))} (file from a newer minigpt?)")
        try:
            return cls(**d)
        except TypeError as e:
            raise FormatError(f"bad model config: {e}") from None
