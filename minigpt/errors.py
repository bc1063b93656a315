"""Every error a user can cause is a MinigptError; the CLI prints it as one line and exits non-zero."""


class MinigptError(Exception):
    """Base class for errors caused by bad input (files, names, options), not by bugs."""


class FormatError(MinigptError):
    """A model file (.mgpt or GGUF) is truncated, corrupt, foreign or of an unsupported kind."""


class ConvertError(MinigptError):
    """A checkpoint cannot be converted."""


class TokenizerError(MinigptError):
    """A tokenizer cannot be built from the file (e.g. an unknown pre-tokenizer)."""


class ModelNotFoundError(MinigptError):
    """A model name or path does not resolve to a file."""
