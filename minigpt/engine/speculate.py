"""Prompt-lookup drafts for speculative decoding: when a reply copies from its prompt (editing code,
quoting, extracting), the tokens that followed the last few tokens' most recent earlier occurrence
are a good guess at what comes next. The token loop (loop.py) evaluates the guess in one forward pass
with the token before it and keeps the longest prefix the sampler agrees with: several tokens for
one read of the weights, which is what a CPU's decode speed is bound by.

A draft costs nothing when there is no match; a wrong one costs its extra rows in the forward pass,
so after a draft fails outright the next ones are shorter, and drafting pauses for a while (longer
after each failure in a row) until a draft is accepted again.

In the server (serve/scheduler.py) a slot's draft rides in a step beside the other slots' tokens, where
a row is dearer than a token is worth unless it is nearly sure to be taken: pass_seconds measures what
rows cost, NgramDrafter.chance says how often this reply's drafts were taken lately, and plan keeps
the draft tokens that raise the step's tokens per second.
"""

import time

import numpy as np

from .cache import KVCache

SPECULATE = ("ngram",)   # the kinds of speculation: prompt lookup

N_MAX, N_MIN = 3, 2    # the n-grams looked up: the last 3 tokens, else the last 2 (one token matches too often)
K_MAX = 14             # draft tokens per forward pass at most
PAUSE_MAX = 32         # tokens without drafts at most, after failures in a row
DECAY = 0.95           # how much a draft's outcome still counts in the acceptance estimate a token later
PRIOR = (3, 1)         # the estimate's start: as if 3 draft tokens had been taken and 1 draft cut short


def max_rows(kern):
    """Rows of one pass with a draft, the tokens before it included: at most K_MAX + 1, and fewer than
    the rows from which the backend sums float32 matmul rows in the GEMM's order, not one by one as a
    decode step does (tests/test_batch.py): so the rows' logits are the decode steps' bits. The C
    kernels say how many (kernels.exact_rows: 15 with AVX2, 7 in portable C and NEON); the Python
    backends, which round a batch apart from a step anyway, take 7."""
    exact = kern.exact_rows() if hasattr(kern, "exact_rows") else 7
    return min(K_MAX + 1, exact)


def lookup(history, n_max=N_MAX, n_min=N_MIN, k=K_MAX):
    """history: [L] token ids -> up to k ids that followed the most recent earlier occurrence of its
    last n tokens (n from n_max down to n_min, the longest that occurs); [] when none does. A match
    fewer than k tokens back is a loop: its period repeats to fill the k (as if the draft were history).
    One vectorized pass over the history per n."""
    h = np.asarray(history, dtype=np.int64)
    L = len(h)
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        starts = L - n   # occurrences at j = 0 .. L-n-1 have a token after them
        hit = np.ones(starts, dtype=bool)
        for o in range(n):
            hit &= h[o:o + starts] == h[L - n + o]
        found = np.flatnonzero(hit)
        if len(found):
            j = int(found[-1]) + n
            out = h[j:j + k].tolist()
            while len(out) < k:   # a match this close is a loop: what follows is in the draft itself
                out.append(out[len(out) - (L - j)])
            return out
    return []


class NgramDrafter:
    """Prompt-lookup drafts with back-off, for one token loop or server slot: draft(tokens, pending,
    limit) proposes, update(accepted, drafted) learns how the last proposal fared, chance(length)
    estimates how likely a draft token is to be taken.

    The history is kept as an array that grows with the loop (converting the whole list each time would
    cost ~1 ms per token at 32k tokens): between two drafts the loop only appends, or takes back tokens
    that came after the last history seen, so what was seen before stays valid."""

    def __init__(self):
        self.k = K_MAX       # the next draft's length at most
        self.failures = 0    # drafts in a row of which nothing was accepted
        self.pause = 0       # drafts still to skip
        self.hits = self.misses = 0.0   # recent draft tokens taken, and drafts cut short (decayed counts)
        self._seen = 0                  # the history's length when they last faded
        self._h, self._n = np.empty(0, dtype=np.int64), 0   # _h[:_n]: the history seen last

    def draft(self, tokens, pending, limit, constraint=None):
        """Up to min(self.k, limit) ids guessed to follow tokens + pending (the cache's ids, then those
        about to join them), cut where the constraint (a constrain.Constraint in the state after
        pending, or None) would refuse one: what it refuses is not worth evaluating."""
        if self.pause:
            self.pause -= 1
            return []
        k = min(self.k, limit)
        if k <= 0:
            return []
        guess = lookup(self._history(tokens, pending), k=k)
        if guess and constraint is not None:
            guess = guess[:constraint.valid_prefix(guess)]
        return guess

    def _history(self, tokens, pending):
        """tokens + pending as an array [L], copying only what is new since the last call."""
        L, n = len(tokens) + len(pending), min(self._n, len(tokens))
        if L > len(self._h):
            grown = np.empty(max(L, 2 * len(self._h), 1024), dtype=np.int64)
            grown[:n] = self._h[:n]
            self._h = grown
        self._h[n:len(tokens)] = tokens[n:]
        self._h[len(tokens):L] = pending
        self._n = L
        return self._h[:L]

    def chance(self, length):
        """The chance that a draft token after `length` tokens is taken when the one before it was:
        what the drafts of the last few dozen tokens say, from a hopeful guess (PRIOR), to which it
        returns as they age (a reply that stopped copying may copy again)."""
        fade = DECAY ** max(0, length - self._seen)
        self.hits, self.misses, self._seen = self.hits * fade, self.misses * fade, length
        return (self.hits + PRIOR[0]) / (self.hits + self.misses + sum(PRIOR))

    def update(self, accepted, drafted):
        self.hits += accepted
        self.misses += accepted < drafted
        if accepted == drafted:
            self.k, self.failures = min(K_MAX, 2 * self.k), 0
        elif accepted:
            self.k, self.failures = accepted + 1, 0
        else:
            self.failures += 1
            self.k = max(1, self.k // 2)
            self.pause = min(PAUSE_MAX, 2 ** self.failures - 1)


# --- drafts beside other sequences (a server's step): each row has its price

def pass_seconds(engine, rows, seqs=1, reps=2, top=None):
    """[seconds of a forward pass of r rows, for r = 1 .. rows]: what each row a draft adds to a step
    costs. Small models decode compute-bound, and a row can cost half of a pass of one (SmolLM2-135M
    on 2 AVX2 cores: 5 ms for 1 row, 11 for 4, 36 for 15), so a draft pays only when its tokens are
    likely taken, the more so the more rows a step already carries. The rows of a pass go to up to
    `seqs` sequences (a row of its own to each but the first, which takes the rest: a server's step,
    where one slot's draft sits beside the others' tokens, and rows cost more than in one sequence).
    Measured once on scratch caches, every row count (the fastest of reps each: the curve has kinks,
    Qwen2.5-0.5B's 5th row of 4 sequences costs more than its 6th, 7th or 8th), after up to 64
    positions (within the engine's context: its RoPE tables end there). top: the head's, as steps
    will ask for it (Engine.prefill)."""
    n_ctx = engine.cache.n_ctx
    rows = min(rows, n_ctx)
    past = min(64, n_ctx - rows)
    caches = [KVCache(engine.cfg, past + rows, kv_type=engine.kv_type) for _ in range(min(seqs, rows))]
    for c in caches:
        if past:
            engine.prefill([1] * past, cache=c)
    took = []
    for r in range(1, rows + 1):
        n = min(seqs, r)
        items = [(caches[0], [1] * (r - n + 1))] + [(c, [1]) for c in caches[1:n]]
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            engine.forward_batch(items, [len(ids) for _, ids in items], top)
            best = min(best, time.perf_counter() - t)
            for c in caches:
                c.truncate(past)
        took.append(best)
    return took


def plan(wants, ps, rows, tokens, seconds):
    """How many tokens of each draft a step evaluates: wants[s] drafted, each taken with chance ps[s]
    when the one before it was (its j-th then adds ps[s] ** j tokens on average). The step carries
    `rows` rows and yields `tokens` tokens without them; seconds[r - 1]: a pass of r rows
    (pass_seconds), at most len(seconds) rows in all. The likeliest draft tokens first, each while
    the tokens it is expected to add raise the step's tokens per second."""
    got = [0] * len(wants)
    cands = sorted(((p ** j, s) for s, (n, p) in enumerate(zip(wants, ps)) for j in range(1, n + 1)),
                   key=lambda c: -c[0])
    for gain, s in cands:
        if rows >= len(seconds) or (tokens + gain) * seconds[rows - 1] <= tokens * seconds[rows]:
            break
        got[s], rows, tokens = got[s] + 1, rows + 1, tokens + gain
    return got


def drafter(speculate):
    """The drafter for speculate (None: none), checked by the caller against SPECULATE."""
    return NgramDrafter() if speculate == "ngram" else None
