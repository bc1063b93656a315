"""The tokenizer fields, checked once where they come in.

A tokenizer is built from GGUF's 'tokenizer.ggml.*' keys (prefix stripped), read from a GGUF, made from a
Hugging Face folder (convert/hf_tokenizer.py) or read from a .mgpt header, whose JSON anyone can write.
check_fields turns them into the values bpe.py and spm.py build from, or raises TokenizerError naming the
field and showing the bad value; the builders trust what it returns. Its passes over the vocabulary run
in C (map, set, max, sum), one per property, each about 5 ms on Gemma 3's 262,144 tokens; a Python
loop runs only to name the first bad entry.
"""

import math
from collections.abc import Mapping
from itertools import repeat

from minigpt import args
from minigpt.config import INT_RANGES
from minigpt.errors import CLIP_ARG, ArgumentError, TokenizerError, clip

MODELS = ("gpt2", "llama")                   # byte-level BPE (bpe.py), SentencePiece (spm.py)
MAX_TOKENS = INT_RANGES["vocab_size"][1]     # as many as a Config allows embedding rows (2,097,152)
MAX_TOKEN_CHARS = 1024   # far above real tokens: SmolLM2's longest is 81 characters, Gemma 3's 31
MAX_MERGES = 2 * MAX_TOKENS                  # real vocabularies have about one merge per token
FLAGS = ("add_bos_token", "add_eos_token", "add_space_prefix")


def check_fields(fields, n_rows: int | None = None) -> dict:
    """The fields the builders read, checked; other keys are left out (nothing reads them).

    model and pre: str. tokens: 1 to MAX_TOKENS str of at most MAX_TOKEN_CHARS characters, and at most
    n_rows (the model's embedding rows) when given: a token past them has no embedding. scores (finite
    numbers) and token_type (int): one per token, extra entries dropped. merges: str ("gpt2" needs them).
    FLAGS: bool. Every *_token_id: an int >= 0; one past the vocabulary is dropped, since llama.cpp reads
    it as unset (it warns and keeps its default id), so files it loads still load. None means absent.
    """
    if not isinstance(fields, Mapping):
        raise TokenizerError(f"the tokenizer must be an object of tokenizer.ggml.* fields, got {clip(fields)}")
    model = fields.get("model")
    if not isinstance(model, str) or model not in MODELS:
        raise TokenizerError(f"unsupported tokenizer model tokenizer.ggml.model={clip(model, CLIP_ARG)} "
                             f"(minigpt reads {', '.join(map(repr, MODELS))})")
    for key in ("tokens", "merges") if model == "gpt2" else ("tokens",):
        if fields.get(key) is None:
            raise TokenizerError(f"the tokenizer has no {_name(key)}")
    out = {"model": model}
    try:
        if fields.get("pre") is not None:
            out["pre"] = args.text(_name("pre"), fields["pre"])
        for key in FLAGS:
            if fields.get(key) is not None:
                out[key] = args.flag(_name(key), fields[key])
        ids = {k: args.integer(_name(k), v, 0) for k, v in fields.items()
               if isinstance(k, str) and k.endswith("_token_id") and v is not None}
    except ArgumentError as e:
        raise TokenizerError(str(e)) from None

    tokens = out["tokens"] = _strings("tokens", fields["tokens"], MAX_TOKENS, MAX_TOKEN_CHARS)
    n = len(tokens)
    if not n:
        raise TokenizerError(f"{_name('tokens')} is empty")
    if n_rows is not None and n > n_rows:
        raise TokenizerError(f"{_name('tokens')} has {n} tokens, but the model's embedding has {n_rows} rows "
                             "(vocab_size): a token past them has no embedding")
    if fields.get("scores") is not None:
        out["scores"] = _numbers("scores", fields["scores"], n)
    if fields.get("token_type") is not None:
        out["token_type"] = _ints("token_type", fields["token_type"], n)
    if fields.get("merges") is not None:
        out["merges"] = _strings("merges", fields["merges"], MAX_MERGES, 2 * MAX_TOKEN_CHARS + 1)
    out.update((k, i) for k, i in ids.items() if i < n)
    return out


# --- lists

def _name(key):
    return f"tokenizer.ggml.{key}"


def _bad(key, index, value, want):
    return TokenizerError(f"{_name(key)}[{index}] must be {want}, got {clip(value)}")


def _list(key, value):
    """value as a list (a JSON array is one; a tuple goes too)."""
    if not isinstance(value, (list, tuple)):
        raise TokenizerError(f"{_name(key)} must be a list, got {clip(value)}")
    return value if isinstance(value, list) else list(value)


def _per_token(key, value, n):
    """The first n entries of value, one per token: llama.cpp reads no more (and would read past the end
    of a shorter list)."""
    items = _list(key, value)
    if len(items) < n:
        raise TokenizerError(f"{_name(key)} has {len(items)} entries for {n} tokens")
    return items if len(items) == n else items[:n]


def _strings(key, value, n_max, max_chars):
    items = _list(key, value)
    if len(items) > n_max:
        raise TokenizerError(f"{_name(key)} has {len(items)} entries; minigpt reads at most {n_max}")
    if not all(map(isinstance, items, repeat(str))):
        i = next(i for i, s in enumerate(items) if not isinstance(s, str))
        raise _bad(key, i, items[i], "a str")
    if items and max(map(len, items)) > max_chars:
        i = next(i for i, s in enumerate(items) if len(s) > max_chars)
        raise _bad(key, i, items[i], f"at most {max_chars} characters (it has {len(items[i])})")
    return items


def _numbers(key, value, n):
    """n finite numbers (int or float; bool is not a number, as in minigpt.args)."""
    items = _per_token(key, value, n)
    if set(map(type, items)) <= {float, int}:
        try:
            if math.isfinite(sum(items)):      # a NaN or an infinity makes the sum one
                return items
        except OverflowError:                  # an int past float's range
            pass
    i = next((i for i, x in enumerate(items) if type(x) not in (float, int) or not _finite(x)), None)
    if i is not None:
        raise _bad(key, i, items[i], "a finite number")
    return items                               # finite numbers whose sum overflows


def _finite(x):
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _ints(key, value, n):
    """n ints (bool is not an int)."""
    items = _per_token(key, value, n)
    if set(map(type, items)) - {int}:
        i = next(i for i, x in enumerate(items) if type(x) is not int)
        raise _bad(key, i, items[i], "an integer")
    return items
