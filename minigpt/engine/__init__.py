"""The engine: prefill and decode over a KV cache (engine.py, cache.py, the C decoder _cdecoder.pyx),
the token loop (loop.py) and text streaming (text.py). The engine yields; the CLI prints."""

from ..quant import kv_decode, kv_encode   # the cache's row types (quant.py, "KV cache rows")
from .cache import DEFAULT_KV_TYPE, KV_TYPES, PREFILL_CHUNK, RING_SLACK, KVCache
from .engine import PRECISIONS, ContextFullError, Engine, PyDecoder
from .loop import STOP_REASONS, Step, TokenLoop
from .text import TextStream, stream_text

__all__ = ["DEFAULT_KV_TYPE", "KV_TYPES", "PREFILL_CHUNK", "RING_SLACK", "KVCache", "kv_decode", "kv_encode", "PRECISIONS", "ContextFullError", "Engine", "PyDecoder",
           "STOP_REASONS", "Step", "TokenLoop", "TextStream", "stream_text"]
