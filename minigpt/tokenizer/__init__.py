"""Tokenizers read from GGUF metadata: byte-level BPE ("gpt2", bpe.py) and SentencePiece ("llama", spm.py).

    tok = from_fields(fields)   # fields: GGUF 'tokenizer.ggml.*' keys, prefix stripped (checked: fields.py)
    ids = tok.encode(text, add_bos=tok.add_bos, special=True)
    text = tok.decode(ids)
"""

from collections.abc import Mapping

from minigpt.tokenizer import bpe, spm
from minigpt.tokenizer.bpe import Tokenizer
from minigpt.tokenizer.fields import check_fields
from minigpt.tokenizer.spm import SpmTokenizer
from minigpt.tokenizer.vocab import StreamDecoder

__all__ = ["SpmTokenizer", "StreamDecoder", "Tokenizer", "check_fields", "from_fields"]

_BUILDERS = {"gpt2": bpe.from_fields, "llama": spm.from_fields}   # the keys are fields.MODELS


def from_fields(fields: Mapping, n_rows: int | None = None) -> Tokenizer | SpmTokenizer:
    """The tokenizer of GGUF 'tokenizer.ggml.*' keys (prefix stripped), chosen by tokenizer.ggml.model.
    n_rows: the model's embedding rows (Config.vocab_size), which the vocabulary must not outgrow.
    Bad fields raise TokenizerError (see fields.check_fields)."""
    fields = check_fields(fields, n_rows)
    return _BUILDERS[fields["model"]](fields)
