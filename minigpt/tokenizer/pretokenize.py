"""Text -> pre-token pieces, as llama.cpp splits text before byte-level BPE.

llama.cpp keeps, per GGUF `tokenizer.ggml.pre` name, a list of regexes applied one after another: the
first splits the text, each next one splits every piece the previous one produced, and text between
two matches becomes a piece of its own (src/llama-vocab.cpp `llm_tokenizer_bpe`, src/unicode.cpp
`unicode_regex_split`). The regexes that matter run there through hand-written scanners or through
std::regex on a "collapsed" text; for the patterns below both behave exactly like the `regex` module
running the pattern on the original text, so we run them that way. Character classes come from
`regex` (llama.cpp built its own table with `regex` under Unicode 15.1; characters assigned later may
differ).
"""

import functools
import warnings
from dataclasses import dataclass

import regex

from minigpt.errors import CLIP_ARG, TokenizerError, clip

# --- the patterns (llama.cpp's strings, with the notes that make them exact here)

# GPT-2. llama.cpp's hand-written scanner for this string also ends a whitespace run llama.cpp's regex
# would leave unmatched, so `|\s+` is part of what it does.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Llama 3: the tokenizer.json pattern with (?i:...) spelled out as llama.cpp does.
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2: Llama 3 with single digits.
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True)
class PreTokenizer:
    """How one family of `pre` names splits text, plus the vocab flags llama.cpp ties to the name."""

    patterns: tuple[str, ...]   # applied one after another
    clean_spaces: bool = True   # decode drops the space in " ," " 's" ... (llama.cpp clean_spaces)
    ignore_merges: bool = False  # a piece that is a whole vocab token is taken as is
    add_bos: bool = False       # default when the file has no add_bos_token

    def compiled(self) -> tuple:
        return compiled(self.patterns)


@functools.cache
def compiled(patterns: tuple[str, ...]) -> tuple:
    """The compiled patterns, compiled once per process (every tokenizer of a family shares them)."""
    return tuple(regex.compile(p) for p in patterns)


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2_PRE = PreTokenizer((_GPT2,))
_STARCODER = PreTokenizer((r"\p{N}", _GPT2))
_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = PreTokenizer((_QWEN2,), clean_spaces=False)


def _without_clean(pre: PreTokenizer) -> PreTokenizer:
    return PreTokenizer(pre.patterns, False, pre.ignore_merges, pre.add_bos)


# `tokenizer.ggml.pre` -> PreTokenizer, as in llama.cpp's llama_vocab::impl::load.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    "gpt-2": _GPT2_PRE, "phi-2": _GPT2_PRE, "mpt": _GPT2_PRE, "olmo": _GPT2_PRE,
    "starcoder": _STARCODER, "refact": _STARCODER, "codeshell": _STARCODER,
    "exaone": _STARCODER, "minerva-7b": _STARCODER,
    "smollm": _without_clean(_STARCODER), "command-r": _without_clean(_STARCODER),
    "llama3": _LLAMA3_PRE, "llama-v3": _LLAMA3_PRE, "llama-bpe": _LLAMA3_PRE,
    "falcon3": _LLAMA3_PRE, "pixtral": _LLAMA3_PRE,
    "dbrx": PreTokenizer((_LLAMA3,)), "smaug-bpe": PreTokenizer((_LLAMA3,)),
    "qwen2": _QWEN2_PRE, "deepseek-r1-qwen": _QWEN2_PRE,
    "stablelm2": PreTokenizer((_QWEN2,)), "megrez": PreTokenizer((_QWEN2,)),
}


def pre_tokenizer(name: str | None) -> PreTokenizer:
    if name is None:
        # llama.cpp loads such (pre-2024) files with 'default' and a loud warning; so do we.
        warnings.warn("GGUF has no tokenizer.ggml.pre; using 'default' (tokenization may be degraded)")
        return _DEFAULT
    try:
        return PRE_TOKENIZERS[name]
    except KeyError:
        raise TokenizerError(f"unsupported pre-tokenizer tokenizer.ggml.pre={clip(name, CLIP_ARG)} "
                             f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})") from None


def split(text: str, patterns: tuple) -> list[str]:
    """Pieces of `text`: each pattern re-splits every piece; unmatched runs are pieces too."""
    pieces = [text] if text else []
    for pattern in patterns:
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for m in pattern.finditer(piece):
                start, end = m.span()
                if start == end:
                    continue
                if start > pos:
                    out.append(piece[pos:start])
                out.append(piece[start:end])
                pos = end
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


# --- GPT-2's byte <-> printable-character map

def _byte_chars() -> list[str]:
    """byte -> the character byte-level BPE vocabularies spell it with (GPT-2 bytes_to_unicode)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


BYTE_TO_CHAR: list[str] = _byte_chars()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_CHAR = {b: c for b, c in enumerate(BYTE_TO_CHAR)}   # str.translate table


def byte_encode(piece: str) -> str:
    """A piece's UTF-8 bytes spelled as vocab characters (one character per byte)."""
    # surrogatepass: a lone surrogate goes in as the 3 bytes llama.cpp would see, not an exception
    return piece.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_CHAR)
