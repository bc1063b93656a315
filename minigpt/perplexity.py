"""Perplexity of a text, measured the way llama.cpp's `llama-perplexity` measures it.

The text is tokenized once (with BOS if the model adds one) and cut into chunks of n_ctx tokens; the
tail that does not fill a chunk is dropped. Each chunk is evaluated from an empty cache, its first
token replaced by BOS when the model adds BOS, and only its second half is scored: the logits at
positions n_ctx/2 .. n_ctx-2 predict tokens n_ctx/2+1 .. n_ctx-1, so every scored token has at least
n_ctx/2 tokens of context. The estimate is exp(mean negative log-likelihood) over all scored tokens,
with llama.cpp's uncertainty: ppl * sqrt(var(nll) / (count - 1)). (llama.cpp refuses a text of fewer
than 2 * n_ctx tokens; one chunk is enough here.)

Logits are taken a block of positions at a time and reduced at once, so a long text or a large
vocabulary (Gemma 3: 262,144) never holds more than [block, vocab] floats.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import MinigptError

DEFAULT_CTX = 512      # llama.cpp's default for the perplexity tool
MIN_CTX = 3            # the smallest chunk whose second half scores a token
BLOCK_FLOATS = 1 << 23  # logits held at once: [block, vocab] float32, 32 MiB (float64 copies: 64 MiB)


# --- evaluation

def logit_blocks(model, ids, start=0):
    """Teacher-forced logits of positions start.. of `ids` from an empty cache (the model's own cache
    is untouched), a block of positions at a time: yields float32 [k, vocab]. Positions before start
    are evaluated without their logits."""
    engine, n = model.engine, len(ids)
    cache = model.new_cache(max(1, n))
    if start:
        engine.prefill(ids[:start], cache=cache)
    block = max(8, min(256, BLOCK_FLOATS // model.config.vocab_size))
    for s in range(start, n, block):
        yield engine.prefill(ids[s:s + block], all_logits=True, cache=cache)


def log_softmax(logits):
    """float [k, vocab] -> float64 [k, vocab]: log-probabilities."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def target_nll(logits, targets):
    """Negative log-likelihood of each target: logits float [k, vocab], targets [k] -> float64 [k]."""
    logp = log_softmax(logits)
    return -logp[np.arange(len(targets)), np.asarray(targets)]


# --- the chunked estimate

@dataclass
class Perplexity:
    """ppl +/- err over `count` scored tokens of `n_chunks` chunks of n_ctx tokens (the text had
    n_tokens). running: the estimate after each chunk, as llama.cpp prints it ([1]x,[2]y,...)."""
    ppl: float
    err: float
    count: int
    n_chunks: int
    n_ctx: int
    n_tokens: int
    running: list = field(default_factory=list)


def chunks(ids, n_ctx, bos_id=None, max_chunks=None):
    """The chunks llama.cpp evaluates: consecutive n_ctx-token slices of ids, the last partial one
    dropped, each one's first token replaced by bos_id when it is given."""
    n = len(ids) // n_ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    out = []
    for i in range(n):
        c = list(ids[i * n_ctx:(i + 1) * n_ctx])
        if bos_id is not None:
            c[0] = bos_id
        out.append(c)
    return out


def perplexity_of_ids(model, ids, n_ctx=DEFAULT_CTX, max_chunks=None, on_chunk=None) -> Perplexity:
    """The chunked perplexity of token ids (already tokenized, BOS included if the model adds it).

    on_chunk(i, n_chunks, running_ppl, seconds) is called after each chunk (i from 1).
    """
    if n_ctx < MIN_CTX:
        raise MinigptError(f"context {n_ctx} is too small for perplexity (at least {MIN_CTX} tokens)")
    if n_ctx > model.n_ctx:
        raise MinigptError(f"context {n_ctx} is more than the model's context length {model.n_ctx}")
    if max_chunks is not None and max_chunks < 1:
        raise MinigptError(f"bad chunk count {max_chunks}")
    if len(ids) < n_ctx:
        raise MinigptError(f"the text is {len(ids)} tokens long, too short for one chunk of {n_ctx} tokens "
                           f"(use a longer text or a smaller context)")
    tok = model.tokenizer
    todo = chunks(ids, n_ctx, tok.bos_id if tok.add_bos else None, max_chunks)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count, running = 0, []
    for i, chunk in enumerate(todo, 1):
        t0 = time.perf_counter()
        s = first
        for logits in logit_blocks(model, chunk[:-1], start=first):   # the last token predicts nothing scored
            v = target_nll(logits, chunk[s + 1:s + 1 + len(logits)])
            nll, nll2 = nll + v.sum(), nll2 + (v * v).sum()
            s += len(logits)
        count += n_ctx - 1 - first
        running.append(math.exp(nll / count))
        if on_chunk:
            on_chunk(i, len(todo), running[-1], time.perf_counter() - t0)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else float("nan")
    return Perplexity(ppl, err, count, len(todo), n_ctx, len(ids), running)


def perplexity(model, text, n_ctx=DEFAULT_CTX, max_chunks=None, on_chunk=None) -> Perplexity:
    """The chunked perplexity of `text` under `model` (a minigpt.api.Model): see perplexity_of_ids.
    The text is tokenized as llama.cpp does: BOS if the model adds it, control-token texts as text."""
    tok = model.tokenizer
    return perplexity_of_ids(model, model.tokenize(text, add_bos=tok.add_bos, special=False), n_ctx, max_chunks,
                             on_chunk)


def read_text(path, limit=None):
    """A text file's contents as str; a clear error if it is missing, not UTF-8, or longer than limit bytes
    (then it is not read whole: /dev/zero is not a template)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        raise MinigptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MinigptError(f"{path}: is a directory") from None
    if limit is not None and len(raw) > limit:
        raise MinigptError(f"{path}: longer than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MinigptError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
