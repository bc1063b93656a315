"""Prefill and decode: one model's decoder bound to its weights, a kernel backend and a KV cache."""

from functools import partial

import numpy as np

from .. import args, kernels, quant
from ..config import Config
from ..errors import ArgumentError, ArgumentTypeError, MinigptError
from ..model import decoder
from ..model.weights import MATRICES, Weight, head_name
from .arena import STEP, Arena
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

# The precisions whose float32 head is screened on the compiled backend (csrc/screen.c): a token loop
# that samples from the best k logits (top-k; greedy: 1) asks for them alone (forward's `top`), and gets
# them exact, at the price of int8 ones and a few float32 rows; the other logits are estimates below them.
# 'exact' stays float32 throughout: the reference.
SCREENED = ("balanced",)

# A screened head reads a few hundred rows of the file's head per token; their pages would pile up in
# RSS, token after token (page cache the system can drop, but RSS counts it). They are given back every
# GIVE_BACK_EVERY screened passes: what stays resident is what that many tokens read.
GIVE_BACK_EVERY = 64


class ContextFullError(MinigptError):
    pass


class PyDecoder:
    """minigpt/model/decoder.py over a Python backend (numpy, numba), with CDecoder's interface."""

    def __init__(self, cfg, weights, kern, rope):
        self.cfg, self.weights, self.kern, self.rope = cfg, weights, kern, rope

    def bind(self, k, v):
        return k, v

    def forward(self, ids, start, cache, all_logits=False, top=None, allowed=None):   # every logit exact here
        return decoder.forward(self.cfg, self.weights, self.kern, cache, ids, start, self.rope, all_logits)

    def forward_batch(self, seqs, tails=None, top=None, allowed=None):
        return decoder.forward_batch(self.cfg, self.weights, self.kern, seqs, self.rope, tails)


def prepare_weights(cfg: Config, weights, kern, precision, release=None):
    """{name: Weight} as the decoder reads them at `precision`: each matrix with its activation bits,
    in the form kern.prepare gives it for them (x8-packed on the compiled backend), and 'output', the
    head, in its own form (tied embeddings: tok_embd's data, which get_rows still reads as stored).

    On the compiled backend the copies prepare makes and the head, which decode streams whole every
    token, are kept in an Arena (arena.py: in huge pages, where the system has them); a tied head read
    as stored then serves get_rows from there too. The Python backends read the weights where they lie.
    A screened head (SCREENED) has its x8 copy in the arena, 'output_screen', with 'output_norms' (each
    row's norm), and stays where it lies for the rows the screen sends back to it (file pages, which the
    system can drop: only the rows read are resident).
    release([name]), if given, is called for the head and each matrix as soon as a copy replaces it
    (MgptFile.release): the pages of the file need not stay resident beside the copies."""
    bits = PRECISIONS[precision]
    arena = Arena() if kern.name == "c" else None
    out = dict(weights)
    head = weights[head_name(cfg)]
    give_back = partial(release, [head_name(cfg)]) if release is not None else None
    screen = _screen(head, kern, arena, give_back) if arena is not None and precision in SCREENED else None
    if screen is not None:   # the head stays in the file, for the rows the screen sends back to it
        out["output_screen"], out["output_norms"] = screen
        out["output"] = Weight(head.data, head.qtype, 32)
    else:
        _prepare_head(cfg, head, kern, bits, arena, release, out)

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


def _screen(head, kern, arena, give_back=None):
    """(the head's screen: Weight of its x8 copy in the arena, at 8 bits; Weight of its rows' norms) or
    None where there is none: a float head, or no x8 kernels on this CPU (the screen would not pay).
    Made a few MiB of rows at a time, give_back() called after each: the file's pages of the head are
    not all resident beside the copy."""
    w, qtype = head.data, head.qtype
    if quant.QTYPES[qtype][0] == 1 or len(w) % 8 or not kern.x8_supported(qtype):
        return None
    screen = arena.empty((len(w) // 8, kern.pack_x8(w[:8], qtype).shape[1]), np.uint8)
    norms = np.empty(len(w), np.float32)
    step = max(8, STEP // w[0].nbytes // 8 * 8)
    for r in range(0, len(w), step):
        kern.pack_x8(w[r:r + step], qtype, out=screen[r // 8:(r + step) // 8])
        norms[r:r + step] = kern.row_norms(w[r:r + step], qtype)
        if give_back is not None:
            give_back()
    return Weight(screen, qtype + "x8", 8), Weight(norms, "f32", 32)


def _prepare_head(cfg, head, kern, bits, arena, release, out):
    """out['output'] (and a tied 'tok_embd') as prepare_weights says, for a head without a screen."""
    # the head first, the biggest tensor: its file pages are given back as it is copied (a tied table
    # repacked for the head excepted, which get_rows still reads), never resident beside the whole copy
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
        self._screened = 0   # screened passes since the head's file pages were last given back
        self._give_back = (partial(release, [head_name(cfg)])
                           if release is not None and "output_screen" in self.weights else None)
        self.cache = KVCache(cfg, n_ctx, kv_type=kv_type)
        self.kv_type = self.cache.kv_type
        if kern.name == "c":   # the compiled kernels loaded, so the C decoder did too
            self.decoder = CDecoder(cfg, {n: (w.data, w.qtype, w.bits) for n, w in self.weights.items()},
                                    self.rope, PREFILL_CHUNK)
        else:
            self.decoder = PyDecoder(cfg, self.weights, kern, self.rope)

    def reset(self):
        self.cache.truncate(0)   # stale K/V beyond pos is never read

    def prefill(self, ids, all_logits=False, cache=None, chunk=None, progress=None, cancelled=None, top=None,
                allowed=None):
        """Append `ids` to the cache (default: the engine's own), a chunk at a time (at most `chunk`).

        Returns logits [len(ids), vocab] if all_logits else [vocab] of the last position; None when
        cancelled() turned true before a chunk (the chunks before it stay in the cache).
        progress(done, total) is called after each chunk. top: None, every logit as the precision
        computes it; a count k (sampling.screen_top), what a draw from the best k needs: those exact,
        the others possibly estimates below them (a screened head: SCREENED). allowed: a grammar's
        bitmask of the tokens that may follow ids (constrain.allowed), whose best k are then those.
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
            masks = None
            if allowed is not None and s + step >= len(ids):   # the mask is the last row's, in the last chunk
                masks = [None] * (len(part) - 1 if all_logits else 0) + [allowed]
            outs.append(self.decoder.forward(part, c.pos, bound, all_logits, top=top, allowed=masks))
            self._count(top)
            c.tokens.extend(part)
            if progress:
                progress(s + len(part), len(ids))
        return _finite(np.concatenate(outs) if all_logits else outs[-1][0])

    def decode_step(self, token, cache=None, top=None, allowed=None):
        """Append one token to the cache (default: the engine's own); logits [vocab] for the next
        (top, allowed: as prefill takes them)."""
        return self.prefill([token], cache=cache, top=top, allowed=allowed)

    def forward_batch(self, items, tails=None, top=None, allowed=None):
        """Append each sequence's ids to its own cache, the sequences sharing forward passes: items is a
        list of (cache, ids), no cache twice. Returns, in order, each item's logits [vocab] for its last
        token (none for no items: a server's step may find every request gone); with tails, a count per
        item, each item's logits [tails[k], vocab] for its last tails[k] tokens (a draft being checked:
        the token before it and each of its own).

        A pass reads every weight once for all the rows it carries, which is why decoding several
        sequences together costs little more than one. It takes at most PREFILL_CHUNK tokens in all
        (and at most a cache's chunk from one sequence), the sequences with fewest tokens left first:
        a long prompt is prefilled over several passes, the first carrying the others' decode tokens.
        top: as prefill takes it, for every item; allowed: None, or per item a grammar's bitmask of the
        tokens that may follow its ids, or None.
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
        if allowed is not None and len(allowed) != len(items):
            raise ArgumentError(f"allowed must give each item a bitmask or None: {len(allowed)} for {len(items)} items")
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
            masks = None   # per row of the pass: an item's mask goes to its last row, in its last pass
            if allowed is not None and any(allowed[k] is not None and not left[k] for k, _ in step):
                masks = [m for (k, _), n in zip(step, got)
                         for m in [None] * (n - 1) + [None if left[k] else allowed[k]]]
            out = self.decoder.forward_batch([(part, caches[k].pos, caches[k].bound(self.decoder))
                                              for k, part in step], tails=got, top=top,
                                             allowed=masks)   # the GIL released in C
            _finite(out)   # the whole pass in one numpy call, not one per item
            self._count(top)
            at = 0
            for (k, part), n in zip(step, got):
                caches[k].tokens.extend(part)
                if want[k] > len(left[k]):
                    rows[k].append(out[at:at + n])
                at += n
        logits = [r[0] if len(r) == 1 else np.concatenate(r) for r in rows]   # one pass: no copy
        return logits if tails is not None else [r[-1] for r in logits]

    def _count(self, top):
        """One more pass with `top`: every GIVE_BACK_EVERY screened ones, the head's pages go back."""
        if top is not None and self._give_back is not None:
            self._screened += 1
            if self._screened >= GIVE_BACK_EVERY:
                self._screened = 0
                self._give_back()


def _finite(logits):
    if not np.isfinite(logits).all():
        raise MinigptError("the model produced non-finite values: the file may be corrupt "
                           "(check it with `minigpt info --verify`)")
    return logits
