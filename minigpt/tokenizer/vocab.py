"""What every GGUF vocabulary shares, whatever its model: token attributes, end-of-generation ids,
special-token partitioning, byte-token values and the streaming decoder (src/llama-vocab.cpp: load,
tokenizer_st_partition, token_to_byte).
"""

import codecs
import enum
import heapq
import itertools
import re
from collections.abc import Sequence

from minigpt.errors import TokenizerError, clip


class Attr(enum.IntFlag):
    """Per-token attributes (llama_token_attr)."""
    UNKNOWN = 1
    UNUSED = 2
    NORMAL = 4
    CONTROL = 8
    USER_DEFINED = 16
    BYTE = 32


# GGUF tokenizer.ggml.token_type -> Attr; anything else (0 = undefined) has no attribute.
TYPE_TO_ATTR = {1: Attr.NORMAL, 2: Attr.UNKNOWN, 3: Attr.CONTROL, 4: Attr.USER_DEFINED,
                5: Attr.UNUSED, 6: Attr.BYTE}
_NO_ATTR = Attr(0)
SPECIAL = Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN   # matched by text before pre-tokenizing

# llama.cpp finds end-of-generation tokens by their text (it says so itself: "obviously not ideal").
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
])
# Fill-in-the-middle tokens found by text when the file names none; pad/rep/sep also end generation.
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_GPT_OSS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


# --- building from GGUF fields

def token_ids(tokens: Sequence[str]) -> dict[str, int]:
    """Token text -> id; a text held by two tokens is an error."""
    ids = dict(zip(tokens, range(len(tokens))))
    if len(ids) != len(tokens):
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if seen.setdefault(t, i) != i:
                raise TokenizerError(f"duplicate token in vocabulary: {clip(t)} has ids {seen[t]} and {i}")
    return ids


def attributes(types: Sequence[int] | None, n: int) -> list[Attr]:
    """Attr of each of the n tokens from tokenizer.ggml.token_type, one int per token (all NORMAL when
    it is absent)."""
    if types is None:
        return [Attr.NORMAL] * n
    return list(map(TYPE_TO_ATTR.get, types, itertools.repeat(_NO_ATTR)))     # one C-level pass


def end_of_generation(tokens, by_text, attrs, fields, special_id, eos) -> frozenset[int]:
    """End-of-generation ids, found as llama.cpp does; marks the tokens it finds as control (in place)."""
    eog: set[int] = set()
    for kind, texts in _FIM_TEXTS.items():
        tid = special_id(f"fim_{kind}_token_id", None)
        if tid is None:
            # llama.cpp takes whichever candidate its hash map yields first; we take the lowest id
            found = [by_text[t] for t in texts if t in by_text]
            if found:
                tid = min(found)
                attrs[tid] |= Attr.CONTROL
        if tid is not None and kind in ("pad", "rep", "sep"):
            eog.add(tid)
    for text in _EOG_TEXTS & by_text.keys():
        eog.add(by_text[text])
        attrs[by_text[text]] |= Attr.CONTROL
    for text in _GPT_OSS_RENDERED:
        if text in by_text:
            attrs[by_text[text]] = Attr.USER_DEFINED
    eog.update(i for i in (eos, special_id("eot_token_id", None), special_id("eom_token_id", None))
               if i is not None)

    eog_texts = {tokens[i] for i in eog}
    has_call = bool({"<|call|>", "<|calls|>"} & eog_texts)
    if "<|end|>" in eog_texts and has_call and ({"<|return|>", "<|flush|>"} & eog_texts):
        end = by_text["<|end|>"]          # gpt-oss / solar-open: <|end|> ends a message, not the turn
        eog.discard(end)
        attrs[end] = Attr.USER_DEFINED
    if {"<|tool_response>", "</s>"} <= eog_texts:
        s = by_text["</s>"]               # gemma4 / paddleocr
        eog.discard(s)
        attrs[s] = Attr.NORMAL
    return frozenset(eog)


# --- special tokens

def special_tokens(tokens: Sequence[str], attrs: Sequence[Attr]) -> tuple[list, list]:
    """(id, text) of the tokens matched by text before tokenizing: (when parsing specials, always).

    Longest first (llama.cpp sorts by byte length; ties, which its unstable sort leaves in any order,
    go by id here). Control and unknown tokens only when parsing specials; user-defined ones always.
    A vocab holds only a handful of distinct attribute values, so the scan for them runs in C.
    """
    special_attrs = {a for a in set(attrs) if a & SPECIAL}
    special = list(itertools.compress(range(len(tokens)), map(special_attrs.__contains__, attrs)))
    special.sort(key=lambda i: -len(tokens[i].encode("utf-8", "surrogatepass")))
    parsed = [(i, tokens[i]) for i in special]
    always = [(i, tokens[i]) for i in special if not attrs[i] & (Attr.CONTROL | Attr.UNKNOWN)]
    return parsed, always


def partition(text: str, specials: Sequence[tuple[int, str]]) -> list[str | int]:
    """`text` cut at every special-token text, longest tokens first: str fragments and int ids."""
    fragments: list[str | int] = [text] if text else []
    for tid, tok in specials:
        if not any(isinstance(f, str) and tok in f for f in fragments):
            continue
        out: list[str | int] = []
        for f in fragments:
            if isinstance(f, int) or tok not in f:
                out.append(f)
                continue
            for k, part in enumerate(f.split(tok)):
                if k:
                    out.append(tid)
                if part:
                    out.append(part)
        fragments = out
    return fragments


def merge(text: str, priority) -> list[str]:
    """The symbols of `text` after pairwise merging: start from its characters, then repeatedly join the
    adjacent pair with the smallest priority(left, right) (None: never), leftmost first among equals.
    BPE ranks its merges; SentencePiece scores the joined pieces."""
    sym = list(text)                     # symbol texts; '' once merged into its left neighbour
    nxt = list(range(1, len(sym))) + [-1]
    prv = list(range(-1, len(sym) - 1))

    def pair(left: int, right: int) -> tuple | None:
        if left < 0 or right < 0:
            return None
        p = priority(sym[left], sym[right])
        return None if p is None else (p, left, right, sym[left], sym[right])

    heap = [p for p in (pair(i, i + 1) for i in range(len(sym) - 1)) if p]
    heapq.heapify(heap)
    while heap:
        _, left, right, lt, rt = heapq.heappop(heap)
        if sym[left] != lt or sym[right] != rt:
            continue                     # a symbol of this pair has changed since
        sym[left], sym[right] = lt + rt, ""
        nxt[left] = nxt[right]
        if nxt[left] >= 0:
            prv[nxt[left]] = left
        for p in (pair(prv[left], left), pair(left, nxt[left])):
            if p:
                heapq.heappush(heap, p)
    return [x for x in sym if x]


def byte_value(text: str) -> int:
    """The byte a "<0xAB>" token stands for, parsed like C strtol on text[3:5] (llama.cpp token_to_byte)."""
    m = re.match(r"\s*([+-]?)([0-9a-fA-F]*)", text[3:5])
    value = int(m[2] or "0", 16)
    return (-value if m[1] == "-" else value) & 0xFF


# --- what both tokenizers are

class Vocabulary:
    """The part of a tokenizer that does not depend on its model: the token table and attributes, the
    special ids, the special-token texts to split out, and each token's bytes. Subclasses add encode,
    decode, stream and _render_normal (how a normal token's text becomes bytes).

    ids: token text -> id when the caller has already built it.
    """

    def __init__(self, tokens: Sequence[str], attrs: Sequence[Attr], *, bos_id, eos_id, eog_ids, add_bos: bool,
                 ids: dict[str, int] | None = None):
        self._tokens = list(tokens)
        self._attrs = list(attrs)
        self.n_vocab = len(self._tokens)
        self._ids = token_ids(self._tokens) if ids is None else ids
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.eog_ids = frozenset(eog_ids)
        self._specials_parsed, self._specials_always = special_tokens(self._tokens, self._attrs)
        self._pieces: list[bytes | None] = [None] * self.n_vocab

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text` in the vocabulary, or None."""
        return self._ids.get(text)

    def token_text(self, token_id: int) -> str:
        """The vocabulary's spelling of a token (e.g. '<|im_end|>', 'Ġthe' in byte-level BPE, '▁the' in SPM)."""
        return self._tokens[token_id]

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token as llama.cpp renders it (control and unknown tokens -> b'')."""
        if not 0 <= token_id < self.n_vocab:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary [0, {self.n_vocab})")
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._render(token_id)
        return piece

    def _render(self, token_id: int) -> bytes:
        attr, text = self._attrs[token_id], self._tokens[token_id]
        if attr & (Attr.CONTROL | Attr.UNKNOWN):
            return b""
        if attr & Attr.USER_DEFINED:        # as written (a user-defined '▁' stays '▁')
            return text.encode("utf-8", "surrogatepass")
        if attr & Attr.NORMAL:
            return self._render_normal(text)
        if attr & Attr.BYTE:                # "<0xAB>" spelling
            return bytes([byte_value(text)])
        return b""                          # undefined / unused tokens render as nothing

    def _render_normal(self, text: str) -> bytes:
        raise NotImplementedError


# --- decoding a stream

class StreamDecoder:
    """Token-by-token decoding that only ever returns whole characters.

    A character whose bytes span several tokens is held back until it is complete; bytes that can
    never form a character come out as U+FFFD. Unlike decode(), no space clean-up is applied, and
    pieces come out as llama.cpp's token_to_piece renders them; lstrip_first=True drops one leading
    space from the first token's piece, as decode() does for SentencePiece vocabs with a space prefix.
    """

    def __init__(self, tokenizer, lstrip_first: bool = False):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._lstrip = lstrip_first

    def push(self, token_id: int) -> str:
        piece = self._tokenizer.token_bytes(token_id)
        if self._lstrip:
            self._lstrip = False
            piece = piece[1:] if piece.startswith(b" ") else piece
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Whatever is held back (an unfinished character comes out as U+FFFD); resets the stream."""
        return self._utf8.decode(b"", final=True)
