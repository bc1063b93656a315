"""The token loop: sample, yield, evaluate. The engine yields; the CLI prints."""

from dataclasses import dataclass, field

from ..sampling import SamplerSettings, apply_repeat_penalty, sample, top_probs

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


