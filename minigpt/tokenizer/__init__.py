"""Tokenizers read from GGUF metadata: byte-level BPE ("gpt2", bpe.py) and SentencePiece ("llama", spm.py).

    tok = from_fields(fields)   # fields: GGUF 'tokenizer.ggml.*' keys, prefix stripped
    ids = tok.encode(text, add_bos=tok.add_bos, special=True)
    text = tok.decode(ids)
"""

from collections.abc import Mapping

from minigpt.errors import TokenizerError
from minigpt.tokenizer import bpe, spm
from minigpt.tokenizer.bpe import Tokenizer
from minigpt.tokenizer.spm import SpmTokenizer
from minigpt.tokenizer.vocab import StreamDecoder

__all__ = ["SpmTokenizer", "StreamDecoder", "Tokenizer", "from_fields"]

_MODELS = {"gpt2": bpe.from_fields, "llama": spm.from_fields}


def from_fields(fields: Mapping) -> Tokenizer | SpmTokenizer:
    """The tokenizer of GGUF 'tokenizer.ggml.*' keys (prefix stripped), chosen by tokenizer.ggml.model."""
    model = fields.get("model")
    if model not in _MODELS:
        raise TokenizerError(f"unsupported tokenizer model tokenizer.ggml.model={model!r} "
                             f"(minigpt reads {', '.join(map(repr, _MODELS))})")
    return _MODELS[model](fields)
