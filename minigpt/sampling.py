"""Choosing the next token from logits. Pure functions; randomness comes from an explicit Generator.

The chain follows llama.cpp's default order: repetition penalty -> top-k -> top-p -> min-p ->
temperature -> draw. temperature == 0 means greedy (argmax after the penalty).
"""

from dataclasses import dataclass, fields, replace

import numpy as np

from . import args
from .errors import CLIP_ARG, ArgumentTypeError, clip


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.8
    top_k: int = 40               # 0: off
    top_p: float = 0.95           # 1.0: off
    min_p: float = 0.05           # 0.0: off
    repeat_penalty: float = 1.0   # 1.0: off
    repeat_last_n: int = 64       # how many recent tokens the penalty looks at
    seed: int | None = None       # None: a fresh random seed

    def __post_init__(self):   # every way in (the API, chat sessions, saved sessions) passes here
        checked = {"temperature": args.number("temperature", self.temperature, 0),
                   "top_k": args.integer("top_k", self.top_k, 0),
                   "top_p": args.number("top_p", self.top_p, 0, 1, above=True),
                   "min_p": args.number("min_p", self.min_p, 0, 1),
                   "repeat_penalty": args.number("repeat_penalty", self.repeat_penalty, 0, above=True),
                   "repeat_last_n": args.integer("repeat_last_n", self.repeat_last_n, 0),
                   "seed": args.optional(args.integer, "seed", self.seed, 0)}
        for name, value in checked.items():   # kept as plain int / float: a saved session writes them as JSON
            object.__setattr__(self, name, value)

    def with_(self, **changes):
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ArgumentTypeError(f"unknown sampling setting {clip(unknown[0], CLIP_ARG)} "
                                    f"(known: {', '.join(f.name for f in fields(self))})")
        return replace(self, **changes)


def screen_top(s: SamplerSettings):
    """How many of the best logits a draw under s can reach (Engine.prefill's `top`): 1 when greedy,
    top_k under a top-k cut, and repeat_last_n more when the repeat penalty is on (each token it lowers
    can let one more in); None when a draw may need any logit: no top-k cut, or a penalty below 1,
    which raises logits."""
    if s.repeat_penalty < 1 or (s.temperature > 0 and s.top_k == 0):
        return None
    return (1 if s.temperature == 0 else s.top_k) + (s.repeat_last_n if s.repeat_penalty != 1 else 0)


def apply_repeat_penalty(logits, recent, penalty):
    """llama.cpp's rule: divide positive logits of recently seen tokens by `penalty`, multiply negative ones."""
    if penalty == 1.0 or len(recent) == 0:
        return logits
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    vals = logits[ids]
    logits = logits.copy()
    logits[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def candidates(logits, s: SamplerSettings):
    """Filter to the candidate set: (ids, probabilities) with probabilities summing to 1 at temperature s.temperature."""
    if 0 < s.top_k < len(logits):   # partial sort: only the k best need ordering
        ids = np.argpartition(-logits, s.top_k - 1)[:s.top_k]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
    else:
        ids = np.argsort(-logits, kind="stable")
    z = logits[ids].astype(np.float64)
    p = np.exp(z - z[0])
    p /= p.sum()
    if s.top_p < 1.0:   # smallest prefix whose mass reaches top_p
        keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
        ids, z, p = ids[:keep], z[:keep], p[:keep]
    if s.min_p > 0.0:   # drop tokens less likely than min_p times the best one
        keep = max(1, int(np.sum(p >= s.min_p * p[0])))
        ids, z = ids[:keep], z[:keep]
    p = np.exp((z - z[0]) / s.temperature)
    return ids, p / p.sum()


def sample(logits, s: SamplerSettings, rng: np.random.Generator, recent=()):
    """logits: [vocab] float32 -> the chosen token id."""
    logits = apply_repeat_penalty(logits, recent[-s.repeat_last_n:] if s.repeat_last_n else (), s.repeat_penalty)
    if s.temperature == 0:
        return int(np.argmax(logits))
    ids, p = candidates(logits, s)
    return int(ids[rng.choice(len(ids), p=p)])


def sample_draft(logits, s: SamplerSettings, rng: np.random.Generator, draft):
    """The next token where a draft (speculative decoding) proposes `draft`, a token it is sure of
    (probability 1): draft itself with probability p(draft), the probability sample() would draw it
    with; else a draw from the rest of sample()'s candidates, renormalized. Either way the token
    follows sample()'s distribution (the standard speculative acceptance rule). The penalty is
    already applied. draft None: sample(). Greedy: the argmax, which is the draft when it agrees."""
    if s.temperature == 0 or draft is None:
        return sample(logits, s, rng)
    ids, p = candidates(logits, s)
    hit = ids == draft
    p_draft = float(p[hit].sum())
    if p_draft > 0 and rng.random() < p_draft:
        return int(draft)
    rest = np.where(hit, 0.0, p)
    return int(ids[rng.choice(len(ids), p=rest / rest.sum())])


def top_probs(logits, token, n):
    """The model's view of one step: (p of `token`, [(id, p)] of the n likeliest), softmax at temperature 1."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    best = np.argpartition(-p, n - 1)[:n] if n < len(p) else np.arange(len(p))
    best = best[np.argsort(-p[best], kind="stable")]
    return float(p[token]), [(int(i), float(p[i])) for i in best]


def make_rng(seed):
    return np.random.default_rng(seed)
