"""Prefill and decode: one model's decoder bound to its weights, a kernel backend and a KV cache."""

from functools import partial

import numpy as np

from .. import args, kernels
from ..config import Config
from ..errors import ArgumentError, ArgumentTypeError, MinigptError
from ..model import decoder
from ..model.weights import MATRICES, Weight, head_name
from .arena import Arena
from .cache import DEFAULT_KV_TYPE, PREFILL_CHUNK, KVCache

CDecoder = None
if kernels.core_missing() is None:   # the C decoder runs on the compiled kernels (their absence is said there)
    from ._cdecoder import CDecoder

# The activations of each matmul, by precision: 32 float32, 16 or 8 quantized to int blocks first.
# 'balanced', the default, keeps the matmuls most sensitive to rounding finer: the attention projections
# wq/wk/wv (their input, the normed residual stream, has a few huge channels in Qwen2.5 and Gemma 3) and
# w_down (its input, act(gate) * up, has outliers) at int16, the output head at float32 (int16 there costs
# 0.6 points of top-1 agreement on SmolLM2). int16 q/k/v gains 0.4-0.5 points on all three real models
# and halves the KL for ~3 % of decode speed; faster than exact, more faithful than llama.cpp (docs/fidelity.md).
PRECISIONS = {
    "exact": {**dict.fromkeys(MATRICES, 32), "output": 32},
    "balanced": {**dict.fromkeys(MATRICES, 8), "wq": 16, "wk": 16, "wv": 16, "w_down": 16, "output": 32},
    "fast": {**dict.fromkeys(MATRICES, 8), "output": 8},
}


class ContextFullError(MinigptError):
    pass


class PyDecoder:
    """minigpt/model/decoder.py over a Python backend (numpy, numba), with CDecoder's interface."""

    def __init__(self, cfg, weights, kern, rope):
        self.cfg, self.weights, self.kern, self.rope = cfg, weights, kern, rope

    def bind(self, k, v):
        return k, v

    def forward(self, ids, start, cache, all_logits=False):
        return decoder.forward(self.cfg, self.weights, self.kern, cache, ids, start, self.rope, all_logits)

    def forward_batch(self, seqs, tails=None):
        return decoder.forward_batch(self.cfg, self.weights, self.kern, seqs, self.rope, tails)


def prepare_weights(cfg: Config, weights, kern, precision, release=None):
    """{name: Weight} as the decoder reads them at `precision`: each matrix with its activation bits,
    in the form kern.prepare gives it for them (x8-packed on the compiled backend), and 'output', the
    head, in its own form (tied embeddings: tok_embd's data, which get_rows still reads as stored).

    On the compiled backend the copies prepare makes and the head, which decode streams whole every
    token, are kept in an Arena (arena.py: in huge pages, where the system has them); a tied head read
    as stored then serves get_rows from there too. The Python backends read the weights where they lie.
    release([name]), if given, is called for the head and each matrix as soon as a copy replaces it
    (MgptFile.release): the pages of the file need not stay resident beside the copies."""
    bits = PRECISIONS[precision]
    arena = Arena() if kern.name == "c" else None
    out = dict(weights)

    # the head first, the biggest tensor: its file pages are given back as it is copied (a tied table
    # repacked for the head excepted, which get_rows still reads), never resident beside the whole copy
    head = weights[head_name(cfg)]
    data, qtype = kern.prepare(head.data, head.qtype, bits["output"])
    as_stored = data is head.data
    give_back = None
    if release is not None and not (cfg.tied_embeddings and not as_stored):
        give_back = partial(release, [head_name(cfg)])
    if arena is not None:
        data = arena.keep(data, give_back if as_stored else None)
        if give_back is not None and not as_stored:
            give_back()
    out["output"] = Weight(data, qtype, bits["output"])
    if cfg.tied_embeddings and as_stored:
        out["tok_embd"] = Weight(data, head.qtype, head.bits)

    for name, w in weights.items():
        role = name.rsplit(".", 1)[-1]
        if role in MATRICES:
            data, qtype = kern.prepare(w.data, w.qtype, bits[role])
            if data is not w.data:
                if arena is not None:
                    data = arena.keep(data)
                if release is not None:
                    release([name])
            out[name] = Weight(data, qtype, bits[role])
    return out


class Engine:
    """One model's decoder bound to weights, a kernel backend and a cache.

    With the compiled backend the whole forward runs in one C call per chunk (csrc/decoder.c);
    otherwise minigpt/model/decoder.py runs over the backend's kernels: the same steps, the same
    activation rounding. precision: 'exact', 'balanced' (default) or 'fast' (PRECISIONS); kv_type: how
    its cache stores keys and values (cache.KV_TYPES).
    """

    def __init__(self, cfg: Config, weights, kern, n_ctx, precision="balanced", kv_type=DEFAULT_KV_TYPE, release=None):
        self.cfg, self.kern, self.precision = cfg, kern, args.choice("precision", precision, PRECISIONS)
        freq = weights["rope_freqs"].data if "rope_freqs" in weights else None
        self.rope = decoder.layer_ropes(cfg, n_ctx, freq)   # per layer (cos, sin)
        self.weights = prepare_weights(cfg, weights, kern, precision, release)
        self.cache = KVCache(cfg, n_ctx, kv_type=kv_type)
        self.kv_type = self.cache.kv_type
        if kern.name == "c":   # the compiled kernels loaded, so the C decoder did too
            self.decoder = CDecoder(cfg, {n: (w.data, w.qtype, w.bits) for n, w in self.weights.items()},
                                    self.rope, PREFILL_CHUNK)
        else:
            self.decoder = PyDecoder(cfg, self.weights, kern, self.rope)

    def reset(self):
        self.cache.truncate(0)   # stale K/V beyond pos is never read

    def prefill(self, ids, all_logits=False, cache=None, chunk=None, progress=None, cancelled=None):
        """Append `ids` to the cache (default: the engine's own), a chunk at a time (at most `chunk`).

        Returns logits [len(ids), vocab] if all_logits else [vocab] of the last position; None when
        cancelled() turned true before a chunk (the chunks before it stay in the cache).
        progress(done, total) is called after each chunk.
        """
        ids = args.token_ids("ids", ids, self.cfg.vocab_size)
        if not ids:
            raise ArgumentError("nothing to evaluate: ids is empty")
        c = cache or self.cache
        if c.pos + len(ids) > c.n_ctx:
            raise ContextFullError(f"context full: {c.pos} + {len(ids)} tokens > n_ctx {c.n_ctx}")
        step = min(c.chunk, chunk or c.chunk)
        bound, outs = c.bound(self.decoder), []
        for s in range(0, len(ids), step):
            if cancelled is not None and cancelled():
                return None
            part = ids[s:s + step]
            outs.append(self.decoder.forward(part, c.pos, bound, all_logits))   # the GIL released in C
            c.tokens.extend(part)
            if progress:
                progress(s + len(part), len(ids))
        return _finite(np.concatenate(outs) if all_logits else outs[-1][0])

    def decode_step(self, token, cache=None):
        """Append one token to the cache (default: the engine's own); logits [vocab] for the next."""
        return self.prefill([token], cache=cache)

    def forward_batch(self, items, tails=None):
        """Append each sequence's ids to its own cache, the sequences sharing forward passes: items is a
        list of (cache, ids), no cache twice. Returns, in order, each item's logits [vocab] for its last
        token (none for no items: a server's step may find every request gone); with tails, a count per
        item, each item's logits [tails[k], vocab] for its last tails[k] tokens (a draft being checked:
        the token before it and each of its own).

        A pass reads every weight once for all the rows it carries, which is why decoding several
        sequences together costs little more than one. It takes at most PREFILL_CHUNK tokens in all
        (and at most a cache's chunk from one sequence), the sequences with fewest tokens left first:
        a long prompt is prefilled over several passes, the first carrying the others' decode tokens.
        """
        if not isinstance(items, (list, tuple)):
            raise ArgumentTypeError(f"items must be a list of (KVCache, ids), got {type(items).__name__}")
        caches, left = [], []   # each sequence's cache, and its ids not yet run
        for k, item in enumerate(items):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], KVCache)):
                raise ArgumentTypeError(f"items[{k}] must be a tuple (KVCache, ids)")
            c, ids = item[0], args.token_ids(f"items[{k}] ids", item[1], self.cfg.vocab_size)
            if not ids:
                raise ArgumentError(f"nothing to evaluate: items[{k}] has no ids")
            for j, other in enumerate(caches):
                if other is c:
                    raise ArgumentError(f"items[{j}] and items[{k}] have the same cache: each sequence needs its own")
            if c.pos + len(ids) > c.n_ctx:
                raise ContextFullError(f"context full: items[{k}]: {c.pos} + {len(ids)} tokens > n_ctx {c.n_ctx}")
            caches.append(c)
            left.append(ids)
        want = [1] * len(items) if tails is None else list(tails)
        if len(want) != len(items) or any(not isinstance(t, int) or not 1 <= t <= len(ids)
                                          for t, ids in zip(want, left)):
            raise ArgumentError(f"tails must give each item a count from 1 to its number of ids, got {tails!r}")
        rows = [[] for _ in caches]   # each item's wanted logits, pass by pass
        while any(left):
            room, step = PREFILL_CHUNK, []
            for k in sorted(range(len(caches)), key=lambda k: len(left[k])):
                take = min(len(left[k]), caches[k].chunk, room)
                if take:
                    step.append((k, left[k][:take]))
                    left[k], room = left[k][take:], room - take
            # the wanted rows this pass holds: a part before them still gives its last (the head then
            # has the rows, and so the floats, of a pass without tails)
            got = [min(len(part), max(1, want[k] - len(left[k]))) for k, part in step]
            out = self.decoder.forward_batch([(part, caches[k].pos, caches[k].bound(self.decoder))
                                              for k, part in step], tails=got)   # the GIL released in C
            at = 0
            for (k, part), n in zip(step, got):
                caches[k].tokens.extend(part)
                if want[k] > len(left[k]):
                    rows[k].append(out[at:at + n])
                at += n
        logits = [_finite(r[0] if len(r) == 1 else np.concatenate(r)) for r in rows]   # one pass: no copy
        return logits if tails is not None else [r[-1] for r in logits]


def _finite(logits):
    if not np.isfinite(logits).all():
        raise MinigptError("the model produced non-finite values: the file may be corrupt "
                           "(check it with `minigpt info --verify`)")
    return logits
