"""The KV cache: every position's keys and values, per layer, in buffers allocated once."""

import mmap

import numpy as np

from .. import args
from ..config import Config
from ..quant import KV_TYPES, kv_row

PREFILL_CHUNK = 512                 # tokens per forward call: bounds the attention scratch of long prompts
RING_SLACK = PREFILL_CHUNK + 1024   # a prefill chunk's own keys, then 1024 tokens of going back

# How the cache stores a row of head_dim floats (f32, f16 or q8_0): minigpt/quant.py, "KV cache rows"
DEFAULT_KV_TYPE = "f16"


class KVCache:
    """Keys and values of every position so far, per layer: k[i], v[i]: [n_kv_heads, cap, row], each row a
    position's head_dim values stored as kv_type says (KV_TYPES; row = head_dim but for q8_0).

    A global layer has a slot per position (cap = n_ctx). A sliding-window layer needs only the last
    `sliding_window` keys: it keeps a ring of cap = window + slack slots (default RING_SLACK), position
    t in slot t % cap, so a long context does not grow it. The slack covers a prefill chunk's own keys
    and lets truncate() go back about slack - PREFILL_CHUNK tokens (a regenerated reply) without
    losing the keys the next position needs.

    Backed by anonymous mmaps, whose pages are committed 4 KiB at a time as the context fills, so a
    long n_ctx costs memory only when used. (np.zeros would ask for transparent huge pages, and the
    first token would then zero a 2 MiB page per layer and head: ~2 s at n_ctx 8192.)
    """

    def __init__(self, cfg: Config, n_ctx, slack=None, kv_type=DEFAULT_KV_TYPE):
        self.kv_type = args.choice("kv_type", kv_type, KV_TYPES)
        dtype, row = kv_row(self.kv_type, cfg.head_dim)
        self.n_ctx, self.head_dim = n_ctx, cfg.head_dim
        self.window = cfg.sliding_window
        self.ring = min(n_ctx, cfg.sliding_window + (slack or RING_SLACK)) if cfg.sliding_window else n_ctx
        # tokens per forward call: at most PREFILL_CHUNK, and what a ring holds beside the window
        self.chunk = min(PREFILL_CHUNK, self.ring - self.window + 1) if self.ring < n_ctx else PREFILL_CHUNK
        self.caps = [self.ring if cfg.is_local(i) else n_ctx for i in range(cfg.n_layers)]
        self.k, self.v = [None] * cfg.n_layers, [None] * cfg.n_layers
        for cap in set(self.caps):   # one mapping per group of layers of equal capacity
            layers = [i for i, c in enumerate(self.caps) if c == cap]
            shape = (len(layers), cfg.n_kv_heads, cap, row)
            for store in (self.k, self.v):
                for i, a in zip(layers, _lazy_zeros(shape, dtype)):
                    store[i] = a
        self.tokens = []          # the ids whose K/V are in the cache, in order
        self._decoder = self._bound = None

    @property
    def pos(self):
        return len(self.tokens)

    def bound(self, decoder):
        """The cache as `decoder` takes it (decoder.bind(k, v)): checked once, on first use."""
        if self._decoder is not decoder:
            self._bound, self._decoder = decoder.bind(self.k, self.v), decoder
        return self._bound

    def truncate(self, n):
        """Forget the positions from n on; returns how many are kept: n, or 0 when a ring has already
        overwritten keys that position n would attend to (n is more than the slack behind)."""
        n = min(n, self.pos)
        oldest_kept = max(0, self.pos - self.ring)      # older positions' slots were reused
        needed = max(0, n - self.window + 1) if self.window else 0
        if self.ring < self.n_ctx and needed < oldest_kept:
            n = 0
        del self.tokens[n:]
        return n


def _lazy_zeros(shape, dtype):
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(count * dtype.itemsize, 1)), dtype=dtype, count=count).reshape(shape)
