"""Checks for what callers pass to the API (minigpt.load, Model, ChatSession, SamplerSettings), made once
where a value comes in. Each returns the value in a plain form (int, float, str, list, tuple) or raises
ArgumentError (ArgumentTypeError for a wrong type) naming the argument and showing the value, on one line.

bool is not a number here (threads=True is a slip, not 1); NumPy integers and floats are.
"""

import math
import os

import numpy as np

from .errors import CLIP_ARG, ArgumentError, ArgumentTypeError, clip


def _bad(name, value, want, kind=ArgumentError):
    return kind(f"{name} must be {want}, got {clip(value, CLIP_ARG)}")


def integer(name, value, lo, hi=None):
    """value as an int in lo..hi (hi None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _bad(name, value, "an integer", ArgumentTypeError)
    if value < lo or (hi is not None and value > hi):
        raise _bad(name, value, f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}")
    return int(value)


def number(name, value, lo, hi=None, above=False):
    """value as a finite float >= lo (> lo with above=True) and <= hi (hi None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(name, value, "a number", ArgumentTypeError)
    try:
        v = float(value)
    except OverflowError:   # an int past float's range
        v = math.inf
    if not math.isfinite(v) or v < lo or (above and v == lo) or (hi is not None and v > hi):
        upper = f" and <= {hi}" if hi is not None else ""
        raise _bad(name, value, f"a finite number {'>' if above else '>='} {lo}{upper}")
    return v


def optional(check, name, value, *limits):
    """None, or what check(name, value, *limits) makes of value."""
    return None if value is None else check(name, value, *limits)


def text(name, value):
    if not isinstance(value, str):
        raise _bad(name, value, "a str", ArgumentTypeError)
    return value


def path(name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise _bad(name, value, "a path (str or os.PathLike)", ArgumentTypeError)
    return value


def flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(name, value, "True or False", ArgumentTypeError)
    return bool(value)


def choice(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise _bad(name, value, f"one of {', '.join(options)}")
    return value


def token_ids(name, ids, vocab_size, want="a list of token ids"):
    """ids (a list, tuple or 1-D array of integers; not a str) as a list of ints, each in 0..vocab_size-1."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise _bad(name, ids, want, ArgumentTypeError)
    out = []
    for k, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise _bad(f"{name}[{k}]", i, "a token id (an integer)", ArgumentTypeError)
        if not 0 <= i < vocab_size:
            raise _bad(f"{name}[{k}]", i, f"a token id in 0..{vocab_size - 1} (the vocabulary)")
        out.append(int(i))
    return out


def stop_strings(name, value):
    """Stop strings as a tuple: None means none, a str is one (not one per character)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise _bad(name, value, "a str, a list of str or None", ArgumentTypeError)
