"""SentencePiece vocabularies (GGUF tokenizer.ggml.model = "llama"), token for token what llama.cpp produces.

encode: split out special-token texts -> each text fragment: optional leading space, spaces -> U+2581 ->
one symbol per character -> merge the adjacent pair whose joined text is the highest-scoring token,
leftmost first, until none is -> ids, with characters no token spells written as <0xXX> byte tokens.
decode: ids -> bytes (U+2581 -> space, byte tokens -> their byte) -> str.
The llama.cpp behaviour reproduced here lives in src/llama-vocab.cpp (load, llm_tokenizer_spm_session,
tokenize, token_to_piece, detokenize).
"""

from collections.abc import Iterable, Mapping, Sequence

from minigpt.errors import TokenizerError
from minigpt.tokenizer.vocab import (Attr, StreamDecoder, Vocabulary, attributes, end_of_generation, merge,
                                     partition, token_ids)

SPACE = "\u2581"            # "▁": how SentencePiece spells a space inside a piece
_SPM_DEFAULTS = {"bos_token_id": 1, "eos_token_id": 2}   # llama.cpp's defaults for "llama" vocabs


# --- building from GGUF fields

def from_fields(fields: Mapping) -> "SpmTokenizer":
    """SpmTokenizer from the GGUF 'tokenizer.ggml.*' keys with the prefix stripped, as fields.check_fields
    returns them (model "llama")."""
    tokens = fields["tokens"]
    if not all(tokens):
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    n = len(tokens)
    # without scores llama.cpp scores every token 0: merges go leftmost first
    scores = fields.get("scores") or [0.0] * n
    attrs = attributes(fields.get("token_type"), n)

    def special_id(key: str, default: int | None) -> int | None:
        return fields.get(key, default if default is not None and default < n else None)

    bos = special_id("bos_token_id", _SPM_DEFAULTS["bos_token_id"])
    eos = special_id("eos_token_id", _SPM_DEFAULTS["eos_token_id"])
    add_bos = fields.get("add_bos_token", True)
    add_eos = fields.get("add_eos_token", False)
    if add_bos and bos is None:
        raise TokenizerError("tokenizer.ggml.add_bos_token is true, but bos_token_id is not set")
    if add_eos and eos is None:
        raise TokenizerError("tokenizer.ggml.add_eos_token is true, but eos_token_id is not set")
    ids = token_ids(tokens)
    eog = end_of_generation(tokens, ids, attrs, fields, special_id, eos)
    return SpmTokenizer(tokens, scores, attrs, bos_id=bos, eos_id=eos, eog_ids=eog, add_bos=add_bos,
                        add_eos=add_eos, add_space_prefix=fields.get("add_space_prefix", True), ids=ids)


# --- the tokenizer

class SpmTokenizer(Vocabulary):
    """A SentencePiece vocabulary with llama.cpp's encode/decode.

    Public: n_vocab, bos_id, eos_id (int | None), eog_ids (ids that end generation), add_bos (whether
    the model wants a BOS in front of prompts), add_eos, add_space_prefix, encode, decode, token_id,
    token_text, token_bytes, stream.
    """

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], attrs: Sequence[Attr], *,
                 bos_id: int | None, eos_id: int | None, eog_ids: Iterable[int], add_bos: bool,
                 add_eos: bool = False, add_space_prefix: bool = True, ids: dict[str, int] | None = None):
        """ids: token text -> id when the caller has already built it."""
        super().__init__(tokens, attrs, bos_id=bos_id, eos_id=eos_id, eog_ids=eog_ids, add_bos=add_bos, ids=ids)
        self._scores = list(scores)
        self.add_eos, self.add_space_prefix = add_eos, add_space_prefix
        self._byte_ids: dict[int, int] = {}

    # --- encode

    def encode(self, text: str, add_bos: bool = False, special: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`. special=True reads control/user-defined token texts as those tokens."""
        ids: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos requested, but the vocabulary has no BOS token")
            ids.append(self.bos_id)
        # a space goes in front of the first text fragment and of every one that follows a special token
        after_special = True
        for fragment in partition(text, self._specials_parsed if special else self._specials_always):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
                continue
            if self.add_space_prefix and after_special:
                fragment = " " + fragment
            self._merge(fragment.replace(" ", SPACE), ids)
            after_special = False
        if add_eos:
            if self.eos_id is None:
                raise TokenizerError("add_eos requested, but the vocabulary has no EOS token")
            ids.append(self.eos_id)
        return ids

    def _merge(self, text: str, out: list[int]) -> None:
        """Append the ids of one normalized fragment: merge the adjacent pair that spells the
        highest-scoring token, leftmost first among equal scores, until no pair spells a token."""
        ids, scores = self._ids, self._scores

        def priority(left: str, right: str) -> float | None:
            tid = ids.get(left + right)
            return None if tid is None else -scores[tid]

        for s in merge(text, priority):
            tid = ids.get(s)
            if tid is not None:
                out.append(tid)
            else:                            # byte fallback: one <0xXX> token per UTF-8 byte
                out.extend(self._byte_id(b) for b in s.encode("utf-8", "surrogatepass"))

    def _byte_id(self, b: int) -> int:
        """The token of byte `b`: "<0xAB>", else the one-byte text itself (llama.cpp byte_to_token)."""
        tid = self._byte_ids.get(b)
        if tid is None:
            tid = self._ids.get(f"<0x{b:02X}>")
            if tid is None:
                tid = self._ids.get(bytes([b]).decode("utf-8", "surrogateescape"))
            if tid is None:
                raise TokenizerError(f"the vocabulary has no token for byte 0x{b:02X} (no <0x{b:02X}>)")
            self._byte_ids[b] = tid
        return tid

    # --- decode

    def _render_normal(self, text: str) -> bytes:
        return text.replace(SPACE, " ").encode("utf-8", "surrogatepass")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` as llama_detokenize(remove_special=False, unparse_special=False) gives it:
        with a space prefix, the first token's piece loses one leading space."""
        pieces = [self.token_bytes(i) for i in ids]
        if pieces and self.add_space_prefix and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", "replace")

    def stream(self, at_start: bool = False) -> StreamDecoder:
        """A streaming decoder; at_start=True when the ids begin the text (drops the prefix space like
        decode); the default renders each piece as llama.cpp's token_to_piece does, for continuations."""
        return StreamDecoder(self, lstrip_first=at_start and self.add_space_prefix)
