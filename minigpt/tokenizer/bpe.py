"""Byte-level BPE (GGUF tokenizer.ggml.model = "gpt2"), token for token what llama.cpp produces.

encode: split out special-token texts -> pre-tokenize each text fragment (pretokenize.py) -> spell each
piece's bytes as vocab characters -> merge by rank -> ids.  decode: ids -> bytes -> str.
The llama.cpp behaviour reproduced here lives in src/llama-vocab.cpp (load, tokenize,
tokenizer_st_partition, token_to_piece, detokenize).
"""

from collections.abc import Iterable, Mapping, Sequence

from minigpt.errors import TokenizerError
from minigpt.tokenizer.pretokenize import (CHAR_TO_BYTE, PreTokenizer, byte_encode, compiled, pre_tokenizer,
                                           split)
from minigpt.tokenizer.vocab import (Attr, StreamDecoder, Vocabulary, attributes, end_of_generation, merge,
                                     partition, token_ids)

_BPE_DEFAULT_BOS_EOS = 11   # llama.cpp's default bos/eos for "gpt2" vocabs that name none
_CACHE_LIMIT = 100_000      # pieces remembered by encode


# --- building from GGUF fields

def from_fields(fields: Mapping) -> "Tokenizer":
    """Tokenizer from the GGUF 'tokenizer.ggml.*' keys with the prefix stripped, as fields.check_fields
    returns them (model "gpt2")."""
    pre = pre_tokenizer(fields.get("pre"))
    # an empty token text gets a placeholder so that no two tokens share a text
    tokens = fields["tokens"]
    if not all(tokens):
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    n = len(tokens)
    attrs = attributes(fields.get("token_type"), n)

    def special_id(key: str, default: int | None) -> int | None:
        return fields.get(key, default if default is not None and default < n else None)

    bos = special_id("bos_token_id", _BPE_DEFAULT_BOS_EOS)
    eos = special_id("eos_token_id", _BPE_DEFAULT_BOS_EOS)
    add_bos = fields.get("add_bos_token", pre.add_bos)
    if add_bos and bos is None:
        raise TokenizerError("tokenizer.ggml.add_bos_token is true, but bos_token_id is not set")
    ids = token_ids(tokens)
    eog = end_of_generation(tokens, ids, attrs, fields, special_id, eos)

    # llama.cpp cuts a merge "left right" at its first space after the first character. Symbols in
    # byte-level BPE never hold U+0020 (byte 0x20 is spelled 'Ġ'), so looking up left + " " + right
    # in a dict keyed by the merge text itself finds exactly the merges that cut would give, and
    # spares splitting 50k strings up front. Built backwards so the first rank of a repeat wins.
    merges = fields["merges"]
    ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
    return Tokenizer(tokens, attrs, ranks, pre, bos_id=bos, eos_id=eos, eog_ids=eog, add_bos=add_bos,
                     ids=ids)


# --- the tokenizer

class Tokenizer(Vocabulary):
    """A byte-level BPE vocabulary with llama.cpp's encode/decode.

    Public: n_vocab, bos_id, eos_id (int | None), eog_ids (ids that end generation), add_bos (whether
    the model wants a BOS in front of prompts), encode, decode, token_id, token_text, token_bytes, stream.
    """

    def __init__(self, tokens: Sequence[str], attrs: Sequence[Attr], ranks: dict[str, int],
                 pre: PreTokenizer, *, bos_id: int | None, eos_id: int | None,
                 eog_ids: Iterable[int], add_bos: bool, ids: dict[str, int] | None = None):
        """ranks: merge text "left right" -> rank (symbols never contain a space, see from_fields);
        ids: token text -> id when the caller has already built it."""
        super().__init__(tokens, attrs, bos_id=bos_id, eos_id=eos_id, eog_ids=eog_ids, add_bos=add_bos, ids=ids)
        self._ranks = ranks
        self._pre = pre
        self._patterns = compiled(pre.patterns)
        self._cache: dict[str, tuple[int, ...]] = {}

    # --- encode

    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`. special=True reads control/user-defined token texts as those tokens."""
        ids: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos requested, but the vocabulary has no BOS token")
            ids.append(self.bos_id)
        for fragment in partition(text, self._specials_parsed if special else self._specials_always):
            if isinstance(fragment, int):
                ids.append(fragment)
                continue
            for piece in split(fragment, self._patterns):
                word = byte_encode(piece)
                cached = self._cache.get(word)
                if cached is None:
                    if len(self._cache) >= _CACHE_LIMIT:
                        self._cache.clear()
                    cached = self._cache[word] = self._bpe(word)
                ids.extend(cached)
        return ids

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one byte-encoded piece: merge the lowest-ranked adjacent pair, leftmost first."""
        if self._pre.ignore_merges and word in self._ids:
            return (self._ids[word],)
        ranks = self._ranks
        ids: list[int] = []
        for sym in merge(word, lambda left, right: ranks.get(left + " " + right)):
            tid = self._ids.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            # Not a token: llama.cpp looks up each byte of the symbol's UTF-8 spelling as a
            # one-byte text and silently drops bytes with no such token.
            for b in sym.encode("utf-8"):
                tid = self._ids.get(bytes([b]).decode("utf-8", "surrogateescape"))
                if tid is not None:
                    ids.append(tid)
        return tuple(ids)

    # --- decode

    def _render_normal(self, text: str) -> bytes:
        out = bytearray()
        for ch in text:
            b = CHAR_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:   # not a byte-level character: llama.cpp writes a marker holding the token text
                out += b"[UNK_BYTE_0x" + ch.encode("utf-8", "surrogatepass").hex().encode()
                out += text.encode("utf-8", "surrogatepass") + b"]"
        return bytes(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` as llama_detokenize(remove_special=False, unparse_special=False) gives it."""
        data = bytearray(b"".join(self.token_bytes(i) for i in ids))
        if self._pre.clean_spaces:
            data = _clean_spaces(data)
        return data.decode("utf-8", "replace")

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self)


def _clean_spaces(t: bytearray) -> bytearray:
    """llama.cpp's clean_spaces passes over detokenized bytes, reproduced byte for byte.

    They compact the buffer in place and look back at bytes they may already have rewritten, so this
    mirrors their loops rather than using str.replace.
    """
    sp, apos = ord(" "), ord("'")
    # 1: " ?" " !" " ." " ," lose the space
    n, total = len(t), min(len(t), 1)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == sp and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    # 2: " ' " -> "'"
    n, total, i = total, min(total, 1), 1
    while i < n:
        x = t[i]
        if x == apos and i + 1 < n and t[i - 1] == sp and t[i + 1] == sp:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    # 3: " 's" " 'm" " 're" " 've" lose the space (" 't" " 'd" " 'll" keep it)
    n, total = total, min(total, 1)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == sp and x == apos and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < n and bytes((x1, t[i + 2])) in (b"re", b"ve"):
                total -= 1
        t[total] = x
        total += 1
    return t[:total]
