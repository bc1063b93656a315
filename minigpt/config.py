"""The model config: the one source of hyperparameters, stored as JSON in the .mgpt header."""

from dataclasses import asdict, dataclass, field, fields

from .errors import FormatError

ARCHITECTURES = ("llama",)


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
        if self.n_heads % self.n_kv_heads or self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise FormatError(f"bad model config: heads {self.n_heads}/{self.n_kv_heads}, "
                              f"rope_dim {self.rope_dim}, head_dim {self.head_dim}")

    def to_dict(self):
        return asdict(self)

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
