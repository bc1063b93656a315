"""Prompt-lookup drafts for speculative decoding: when a reply copies from its prompt (editing code,
quoting, extracting), the tokens that followed the last few tokens' most recent earlier occurrence
are a good guess at what comes next. The token loop (loop.py) evaluates the guess in one forward pass
with the token before it and keeps the longest prefix the sampler agrees with: several tokens for
one read of the weights, which is what a CPU's decode speed is bound by.

A draft costs nothing when there is no match; a wrong one costs its extra rows in the forward pass,
so after a draft fails outright the next ones are shorter, and drafting pauses for a while (longer
after each failure in a row) until a draft is accepted again.
"""

import numpy as np

SPECULATE = ("ngram",)   # the kinds of speculation: prompt lookup

N_MAX, N_MIN = 3, 2    # the n-grams looked up: the last 3 tokens, else the last 2 (one token matches too often)
K_MAX = 14             # draft tokens per forward pass at most
PAUSE_MAX = 32         # tokens without drafts at most, after failures in a row


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
    """Prompt-lookup drafts with back-off, for one token loop: draft(tokens, pending, limit) proposes,
    update(accepted, drafted) learns how the last proposal fared.

    The history is kept as an array that grows with the loop (converting the whole list each time would
    cost ~1 ms per token at 32k tokens): between two drafts the loop only appends, or takes back tokens
    that came after the last history seen, so what was seen before stays valid."""

    def __init__(self):
        self.k = K_MAX       # the next draft's length at most
        self.failures = 0    # drafts in a row of which nothing was accepted
        self.pause = 0       # drafts still to skip
        self._h, self._n = np.empty(0, dtype=np.int64), 0   # _h[:_n]: the history seen last

    def draft(self, tokens, pending, limit):
        """Up to min(self.k, limit) ids guessed to follow tokens + pending (the cache's ids, then those
        about to join them)."""
        if self.pause:
            self.pause -= 1
            return []
        k = min(self.k, limit)
        if k <= 0:
            return []
        return lookup(self._history(tokens, pending), k=k)

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

    def update(self, accepted, drafted):
        if accepted == drafted:
            self.k, self.failures = min(K_MAX, 2 * self.k), 0
        elif accepted:
            self.k, self.failures = accepted + 1, 0
        else:
            self.failures += 1
            self.k = max(1, self.k // 2)
            self.pause = min(PAUSE_MAX, 2 ** self.failures - 1)


def drafter(speculate):
    """The drafter for speculate (None: none), checked by the caller against SPECULATE."""
    return NgramDrafter() if speculate == "ngram" else None
