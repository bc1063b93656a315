"""The token loop: sample, yield, evaluate. The engine yields; the CLI prints."""

from dataclasses import dataclass, field

from ..constrain import allowed
from ..sampling import SamplerSettings, apply_repeat_penalty, sample_draft, screen_top, top_probs
from .speculate import drafter, max_rows


def head_top(settings: SamplerSettings, top_n=0):
    """The `top` a token loop asks the engine for (Engine.prefill): as much of the logits as its draws
    read (sampling.screen_top), or None, every logit, when it shows probabilities (top_n). Under a
    grammar the engine takes its mask too (constrain.allowed): the best k are those it allows."""
    return None if top_n else screen_top(settings)


def choose(logits, tokens, at, settings: SamplerSettings, rng, constraint=None, guess=None):
    """The token for position `at` of a sequence (tokens[:at] before it) from logits [vocab]: the
    repeat penalty over the tokens before it, the constraint's mask, then a draw that takes a draft's
    guess when the sampler agrees (sampling.sample_draft; guess None: a plain sample). Drafted or
    not, a token is chosen from the logits of its own position as if generated one by one.
    Returns (token, the logits it was drawn from: penalized and masked)."""
    s = settings
    recent = tokens[max(0, at - s.repeat_last_n):at] if s.repeat_last_n else ()
    logits = apply_repeat_penalty(logits, recent, s.repeat_penalty)
    if constraint is not None:
        logits = constraint.mask(logits)
    return sample_draft(logits, s, rng, guess), logits   # the penalty is applied: no `recent` here

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
    is done, every yielded token is in the cache, and no other. Ends at max_tokens (None: no limit), an
    end-of-generation id (not yielded, not evaluated), a full cache, or when cancelled() turns true
    (checked before each token). .stop then says which: 'length', 'eos', 'context' or 'cancelled'
    (None while running).

    constraint (a constrain.Constraint, or None): the grammar the tokens must follow. Its mask is
    applied to the logits before each draw; a run of tokens it forces is yielded one Step each (no
    probabilities: nothing was drawn), then evaluated together in one prefill (cancelled() is checked
    before the run); when it is complete the loop ends with 'eos' (end of generation is then the only
    token it allows).

    speculate ('ngram', or None): evaluate a sampled token together with a draft of the tokens likely
    to follow it (speculate.py: looked up in the prompt and reply so far), in one forward pass of up to
    speculate.max_rows rows, and take as many of them as the sampler agrees with (sampling.sample_draft), each
    chosen at its own position as if generated one by one (the repeat penalty and the grammar's mask
    see the tokens before it); the rest of the draft is dropped from the cache. Greedy output is the
    plain loop's token for token (bit for bit on the compiled backend: its kernels sum a few rows as
    they sum one); sampled output follows the same distribution, not the same random stream.
    """

    def __init__(self, engine, cache, logits, settings: SamplerSettings, rng, max_tokens=None, stop_ids=(),
                 cancelled=None, top_n=0, constraint=None, speculate=None):
        self.engine, self.cache, self.logits = engine, cache, logits
        self.settings, self.rng, self.max_tokens, self.stop_ids = settings, rng, max_tokens, frozenset(stop_ids)
        self.cancelled, self.top_n, self.constraint = cancelled or (lambda: False), top_n, constraint
        self.drafter = drafter(speculate)
        self.top = head_top(settings, top_n)
        self.drafted = self.accepted = 0   # draft tokens evaluated, and taken
        self.stop = None

    def __iter__(self):
        s, cache, c = self.settings, self.cache, self.constraint
        n, pending = 0, []         # pending: ids yielded, not yet in the cache
        rows, draft = [self.logits], []   # rows[i]: logits [vocab] for the token after draft[:i]
        valid = cache.pos          # the cache's positions that hold the prompt and yielded tokens
        try:
            while True:
                if pending:
                    rows, draft = self._evaluate(pending, n)
                    pending, valid = [], cache.pos - len(draft)
                for i, logits in enumerate(rows):
                    self.logits, at = logits, valid   # the token chosen here goes at position `at`
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
                        self._rollback(at)
                        if draft:
                            self.drafter.update(i, len(draft))
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
                        break
                    guess = draft[i] if i < len(draft) else None
                    tok, logits = choose(logits, cache.tokens, at, s, self.rng, c, guess)
                    if tok in self.stop_ids:
                        self.stop = "eos"
                        return
                    if tok != guess and at >= cache.n_ctx:
                        self.stop = "context"
                        return
                    if c is not None:
                        c.advance([tok])
                    n += 1
                    if tok == guess:   # already in the cache
                        valid, self.accepted = at + 1, self.accepted + 1
                    else:              # evaluated next, with a new draft; the rest of this one goes
                        self._rollback(at)
                        pending = [tok]
                        if draft:
                            self.drafter.update(i, len(draft))
                    yield Step(tok, *top_probs(logits, tok, self.top_n)) if self.top_n else Step(tok)
                    if pending:
                        break
        finally:   # closed early: the tokens the caller has seen still go into the cache, no others
            self._rollback(valid)
            if pending:
                self._evaluate(pending, n, draft=False)

    def _evaluate(self, ids, n, draft=True):
        """Append ids to the cache, and a draft after them when speculating (n: tokens yielded so far).
        Returns (rows, draft): logits [len(draft) + 1, vocab] for the token after ids, after each draft
        token; the draft, in the cache after ids."""
        cache, c = self.cache, self.constraint
        guess = []
        if draft and self.drafter is not None:
            # rows in one pass: few (the kernels sum them as they sum one), at most a cache's chunk
            # (a sliding-window ring can then still take the draft back)
            limit = min(max_rows(self.engine.kern), cache.chunk, cache.n_ctx - cache.pos) - len(ids)
            if self.max_tokens is not None:
                limit = min(limit, self.max_tokens - n)
            guess = self.drafter.draft(cache.tokens, ids, limit, c)
        if guess:   # under a grammar each row would need its own mask, known only as the draft is walked
            self.drafted += len(guess)
            rows = self.engine.prefill(ids + guess, all_logits=True, cache=cache, top=self.top if c is None else None)
            return rows[len(ids) - 1:], guess
        if len(ids) == 1:
            return [self.engine.decode_step(ids[0], cache, top=self.top, allowed=allowed(c))], []
        return [self.engine.prefill(ids, cache=cache, top=self.top, allowed=allowed(c))], []

    def _rollback(self, n):
        """Forget the cache's positions from n on: draft tokens not taken."""
        if self.cache.pos > n:
            kept = self.cache.truncate(n)
            assert kept == n, "a draft is never longer than the cache can take back"
