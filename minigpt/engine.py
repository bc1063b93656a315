"""Prefill and decode over a preallocated KV cache; the token loop. The engine yields, the CLI prints."""

import mmap
from dataclasses import dataclass, field

import numpy as np

from .config import Config
from .errors import MinigptError
from .model import FORWARD, llama
from .sampling import SamplerSettings, apply_repeat_penalty, make_rng, sample, top_probs

PREFILL_CHUNK = 512   # bounds the attention scratch of long prompts: [heads, chunk, T] floats


class ContextFullError(MinigptError):
    pass


class KVCache:
    """Keys and values of every position so far, per layer: k[i], v[i]: [n_kv_heads, cap, head_dim] float32.

    A global layer has a slot per position (cap = n_ctx). A sliding-window layer needs only the last
    `sliding_window` keys: it keeps a ring of cap = window + slack slots (default RING_SLACK), position
    t in slot t % cap, so a long context does not grow it. The slack covers a prefill chunk's own keys
    and lets truncate() go back about slack - PREFILL_CHUNK tokens (a regenerated reply) without
    losing the keys the next position needs.

    Backed by anonymous mmaps, whose pages are committed 4 KiB at a time as the context fills, so a
    long n_ctx costs memory only when used. (np.zeros would ask for transparent huge pages, and the
    first token would then zero a 2 MiB page per layer and head: ~2 s at n_ctx 8192.)
    """

    def __init__(self, cfg: Config, n_ctx, slack=None):
        self.n_ctx = n_ctx
        self.window = cfg.sliding_window
        self.ring = min(n_ctx, cfg.sliding_window + (slack or RING_SLACK)) if cfg.sliding_window else n_ctx
        # tokens per forward call: at most PREFILL_CHUNK, and what a ring holds beside the window
        self.chunk = min(PREFILL_CHUNK, self.ring - self.window + 1) if self.ring < n_ctx else PREFILL_CHUNK
        self.caps = [self.ring if cfg.is_local(i) else n_ctx for i in range(cfg.n_layers)]
        self.k, self.v = [None] * cfg.n_layers, [None] * cfg.n_layers
        for cap in set(self.caps):   # one mapping per group of layers of equal capacity
            layers = [i for i, c in enumerate(self.caps) if c == cap]
            shape = (len(layers), cfg.n_kv_heads, cap, cfg.head_dim)
            for store in (self.k, self.v):
                for i, a in zip(layers, _lazy_zeros(shape)):
                    store[i] = a
        self.tokens = []          # the ids whose K/V are in the cache, in order

    @property
    def pos(self):
        return len(self.tokens)

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


RING_SLACK = PREFILL_CHUNK + 1024   # a prefill chunk's own keys, then 1024 tokens of going back


def _lazy_zeros(shape):
    nbytes = int(np.prod(shape)) * 4
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=np.float32, count=nbytes // 4).reshape(shape)


PRECISIONS = ("exact", "balanced", "fast")


class Engine:
    """One model's forward pass bound to weights, a kernel backend and a cache.

    With the compiled backend the whole forward runs in one C call per chunk (csrc/llama.c);
    otherwise in minigpt/model/llama.py over the backend's matmul / matmul_q8. precision:
    'exact' float32 activations; 'fast' int8 activations; 'balanced' int8 except w_down and the
    output head: the default, faster than exact, more faithful than llama.cpp (docs/fidelity.md).
    The compiled backend's balanced takes int16 on w_down (float32 on the head); the Python
    backends' keeps both float32. The numpy backend's weights are f32, which matmul_q8 multiplies
    exactly: it stays exact.
    """

    def __init__(self, cfg: Config, weights, kern, n_ctx, precision="balanced"):
        if precision not in PRECISIONS:
            raise MinigptError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        self.cfg, self.w, self.kern, self.precision = cfg, weights, kern, precision
        freq = weights["rope_freqs"].data if "rope_freqs" in weights else None
        tables = [llama.rope_tables(cfg, n_ctx, freq)]
        if cfg.local_layers:
            tables.append(llama.rope_tables(cfg, n_ctx, local=True))
        self.rope = [tables[-1] if cfg.is_local(i) else tables[0] for i in range(cfg.n_layers)]   # per layer
        self.forward = FORWARD[cfg.arch]
        self.cache = KVCache(cfg, n_ctx)
        self.compiled = None
        if hasattr(kern, "LlamaForward"):
            gemma = cfg.arch == "gemma3"
            self.compiled = kern.LlamaForward(
                dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                head_dim=cfg.head_dim, hidden_dim=cfg.hidden_dim, vocab_size=cfg.vocab_size,
                norm_eps=cfg.norm_eps, rope_dim=cfg.rope_dim, tied_embeddings=cfg.tied_embeddings,
                weights={name: (w.data, w.qtype) for name, w in weights.items()}, rope=self.rope,
                max_batch=PREFILL_CHUNK, matmul=precision, query_scale=cfg.query_scale,
                windows=[cfg.sliding_window * cfg.is_local(i) for i in range(cfg.n_layers)],
                qkv_bias=cfg.qkv_bias, qk_norm=gemma, post_norms=gemma, rope_neox=gemma,
                act="gelu_tanh" if gemma else "silu", embed_scale=cfg.dim ** 0.5 if gemma else 1.0)

    def reset(self):
        self.cache.truncate(0)   # stale K/V beyond pos is never read

    def prefill(self, ids, all_logits=False, cache=None):
        """Append `ids` to the cache (default: the engine's own).

        Returns logits [len(ids), vocab] if all_logits else [vocab] of the last position.
        """
        ids = [int(i) for i in ids]
        if not ids:
            raise MinigptError("nothing to evaluate: empty token list")
        bad = [i for i in ids if not 0 <= i < self.cfg.vocab_size]
        if bad:
            raise MinigptError(f"token id {bad[0]} out of range (vocabulary size {self.cfg.vocab_size})")
        c = cache or self.cache
        if c.pos + len(ids) > c.n_ctx:
            raise ContextFullError(f"context full: {c.pos} + {len(ids)} tokens > n_ctx {c.n_ctx}")
        outs = []
        for s in range(0, len(ids), c.chunk):
            chunk = ids[s:s + c.chunk]
            if self.compiled is not None:   # the GIL released inside
                outs.append(self.compiled.forward(np.asarray(chunk, dtype=np.int64), c.pos, c.k, c.v, all_logits))
            else:
                outs.append(self.forward(self.cfg, self.w, self.kern, (c.k, c.v), chunk, c.pos, self.rope,
                                         all_logits, self.precision))
            c.tokens.extend(chunk)
        logits = np.concatenate(outs) if all_logits else outs[-1]
        if not all_logits:
            logits = logits[0]
        if not np.all(np.isfinite(logits)):
            raise MinigptError("the model produced non-finite values: the file may be corrupt "
                               "(check it with `minigpt info --verify`)")
        return logits

    def decode_step(self, token, cache=None):
        """Append one token to the cache (default: the engine's own); logits [vocab] for the next."""
        return self.prefill([token], cache=cache)


# --- the token loop

STOP_REASONS = ("eos", "length", "context", "stop", "cancelled")


@dataclass
class Step:
    """One generated token. top: [(id, probability)] of the most likely next tokens under the model
    (softmax of the logits after the repeat penalty), best first, when asked for; p: the token's own.
    text: the text this token completes, set by whoever turns tokens into text (may be '')."""
    token: int
    p: float | None = None
    top: list = field(default_factory=list)
    text: str = ""


class TokenLoop:
    """Sample, yield, evaluate: iterate for Steps.

    logits: [vocab] after the prompt. A token is yielded as soon as it is sampled, and evaluated into
    the cache when the next one is asked for, or when the iteration ends or is closed: once the loop
    is done, every yielded token is in the cache. Ends at max_tokens (None: no limit), an
    end-of-generation id (not yielded, not evaluated), a full cache, or when cancelled() turns true
    (checked before each token). .stop then says which: 'length', 'eos', 'context' or 'cancelled'
    (None while running).
    """

    def __init__(self, engine, cache, logits, settings: SamplerSettings, rng, max_tokens=None, stop_ids=(),
                 cancelled=None, top_n=0):
        self.engine, self.cache, self.logits = engine, cache, logits
        self.settings, self.rng, self.max_tokens, self.stop_ids = settings, rng, max_tokens, frozenset(stop_ids)
        self.cancelled, self.top_n = cancelled or (lambda: False), top_n
        self.stop = None

    def __iter__(self):
        s, cache = self.settings, self.cache
        n, pending = 0, None
        try:
            while True:
                if pending is not None:
                    self.logits = self.engine.decode_step(pending, cache)
                    pending = None
                if self.max_tokens is not None and n >= self.max_tokens:
                    self.stop = "length"
                    return
                if self.cancelled():
                    self.stop = "cancelled"
                    return
                recent = cache.tokens[-s.repeat_last_n:] if s.repeat_last_n else ()
                logits = apply_repeat_penalty(self.logits, recent, s.repeat_penalty)
                tok = sample(logits, s, self.rng)   # the penalty is applied: no `recent` here
                if tok in self.stop_ids:
                    self.stop = "eos"
                    return
                if cache.pos >= cache.n_ctx:
                    self.stop = "context"
                    return
                pending, n = tok, n + 1
                yield Step(tok, *top_probs(logits, tok, self.top_n)) if self.top_n else Step(tok)
        finally:   # closed early: the token the caller has seen still goes into the cache
            if pending is not None:
                self.engine.decode_step(pending, cache)


# --- text

class TextStream:
    """Token ids in, text pieces out: whole UTF-8 characters only, cut before the first stop string.

    Text that could be the start of a stop string is held back until it is known not to be one.
    push() returns the text that is now safe to show; .stopped turns true at a stop string (whatever
    comes after is dropped); flush() returns what is held back at the end.
    """

    def __init__(self, tokenizer, stop_strings=()):
        self._dec = tokenizer.stream()
        self._stops = [s for s in stop_strings if s]
        self._held = ""
        self.stopped = False

    def push(self, token):
        if self.stopped:
            return ""
        self._held += self._dec.push(token)
        return self._release(self._stop_prefix_len())

    def flush(self, partial=True):
        """The text held back. partial=False drops an unfinished character instead of writing U+FFFD
        for it (a reply cut mid-character ends cleanly)."""
        if self.stopped:
            return ""
        tail = self._dec.flush()
        self._held += tail if partial else tail.rstrip("\ufffd")
        return self._release(0)

    def _release(self, keep):
        held = self._held
        cut = min((held.find(s) for s in self._stops if s in held), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return held[:cut]
        self._held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep]

    def _stop_prefix_len(self):
        """Length of the longest suffix of the held text that is a proper prefix of some stop string."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(self._held)), best, -1):
                if self._held.endswith(s[:n]):
                    best = n
                    break
        return best


def stream_text(token_iter, tokenizer, stop_strings=()):
    """Text pieces of a token stream (TextStream), ending at the first stop string."""
    text = TextStream(tokenizer, stop_strings)
    for tok in token_iter:
        piece = text.push(tok)
        if piece:
            yield piece
        if text.stopped:
            return
    piece = text.flush()
    if piece:
        yield piece
