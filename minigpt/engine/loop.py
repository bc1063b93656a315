"""The token loop: sample, yield, evaluate. The engine yields; the CLI prints."""

from dataclasses import dataclass, field

from ..sampling import SamplerSettings, apply_repeat_penalty, sample, top_probs

STOP_REASONS = ("eos", "length", "context", "stop", "cancelled")


@dataclass
class Step:
    """One generated token. top: [(id, probability)] of the most likely next tokens under the model
    (softmax of the logits after the repeat penalty), best first, when asked for; p: the token's own.
    A token forced by a grammar (constrain.py) has neither: it is not sampled.
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

    constraint (a constrain.Constraint, or None): the grammar the tokens must follow. Its mask is
    applied to the logits before each draw; a run of tokens it forces is yielded one Step each (no
    probabilities: nothing was drawn), then evaluated together in one prefill (cancelled() is checked
    before the run); when it is complete the loop ends with 'eos' (end of generation is then the only
    token it allows).
    """

    def __init__(self, engine, cache, logits, settings: SamplerSettings, rng, max_tokens=None, stop_ids=(),
                 cancelled=None, top_n=0, constraint=None):
        self.engine, self.cache, self.logits = engine, cache, logits
        self.settings, self.rng, self.max_tokens, self.stop_ids = settings, rng, max_tokens, frozenset(stop_ids)
        self.cancelled, self.top_n, self.constraint = cancelled or (lambda: False), top_n, constraint
        self.stop = None

    def __iter__(self):
        s, cache, c = self.settings, self.cache, self.constraint
        n, pending = 0, []   # pending: ids yielded, not yet in the cache
        try:
            while True:
                if pending:
                    self.logits = self._evaluate(pending)
                    pending = []
                if c is not None and c.done:
                    self.stop = "eos"
                    return
                if self.max_tokens is not None and n >= self.max_tokens:
                    self.stop = "length"
                    return
                if self.cancelled():
                    self.stop = "cancelled"
                    return
                forced = c.forced() if c is not None else []
                if forced:   # no choice to make: yield them all, evaluate them together
                    room = cache.n_ctx - cache.pos
                    if self.max_tokens is not None:
                        room = min(room, self.max_tokens - n)
                    if room <= 0:
                        self.stop = "context"
                        return
                    forced = forced[:room]
                    c.advance(forced)
                    for tok in forced:
                        pending.append(tok)
                        n += 1
                        yield Step(tok)
                    continue
                recent = cache.tokens[-s.repeat_last_n:] if s.repeat_last_n else ()
                logits = apply_repeat_penalty(self.logits, recent, s.repeat_penalty)
                if c is not None:
                    logits = c.mask(logits)
                tok = sample(logits, s, self.rng)   # the penalty is applied: no `recent` here
                if tok in self.stop_ids:
                    self.stop = "eos"
                    return
                if cache.pos >= cache.n_ctx:
                    self.stop = "context"
                    return
                if c is not None:
                    c.advance([tok])
                pending, n = [tok], n + 1
                yield Step(tok, *top_probs(logits, tok, self.top_n)) if self.top_n else Step(tok)
        finally:   # closed early: the tokens the caller has seen still go into the cache
            if pending:
                self._evaluate(pending)

    def _evaluate(self, ids):
        """Append ids to the cache; logits [vocab] of the last."""
        if len(ids) == 1:
            return self.engine.decode_step(ids[0], self.cache)
        return self.engine.prefill(ids, cache=self.cache)
