"""Every error a user can cause is a MinigptError; the CLI prints it as one line and exits non-zero."""

CLIP = 200       # characters of an untrusted value an error message shows
CLIP_ARG = 60    # ... of a bad argument (the message names the argument too)


def clip(value, n=CLIP):
    """repr(value) for an error message, cut to n characters (a file may hold a 100 KB name)."""
    try:
        r = repr(value)
    except ValueError:   # an integer of more than 4,300 digits, somewhere in value
        return f"<a {type(value).__name__} holding an integer too long to show>"
    return r if len(r) <= n else f"{r[:n - 3]}..."


def one_line(message, n=4 * CLIP):
    """An error message as the one line the CLI prints: control characters (newlines, terminal escapes
    from an untrusted name) shown escaped, and at most n characters."""
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
    return s if len(s) <= n else f"{s[:n - 3]}..."


class MinigptError(Exception):
    """Base class for errors caused by bad input (files, names, options), not by bugs."""


class ArgumentError(MinigptError, ValueError):
    """A bad argument to the API (minigpt.load, Model, ChatSession): the message names it and shows the value."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (e.g. threads="2"); also a ValueError, like every ArgumentError."""


class FormatError(MinigptError):
    """A model file (.mgpt or GGUF) is truncated, corrupt, foreign or of an unsupported kind."""


class ConvertError(MinigptError):
    """A checkpoint cannot be converted."""


class TokenizerError(MinigptError):
    """A tokenizer cannot be built from the file (e.g. an unknown pre-tokenizer)."""


class ModelNotFoundError(MinigptError):
    """A model name or path does not resolve to a file."""
