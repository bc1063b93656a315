"""Tokenizers read from GGUF metadata. Only byte-level BPE ("gpt2") so far.

    tok = from_fields(fields)   # fields: GGUF 'tokenizer.ggml.*' keys, prefix stripped
    ids = tok.encode(text, add_bos=tok.add_bos, special=True)
    text = tok.decode(ids)
"""

from minigpt.tokenizer.bpe import StreamDecoder, Tokenizer, from_fields

__all__ = ["StreamDecoder", "Tokenizer", "from_fields"]
