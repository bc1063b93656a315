"""Saved chats (.mgchat): a conversation, its KV cache and its sampler state in one file.

A loaded chat continues without re-reading its past, and with the saved random state it writes
exactly the reply the unsaved session would have written. Layout (little-endian):

    magic  b"MGPTCHAT"   u32 version   u32 header bytes   header (UTF-8 JSON)   zero padding to 64
    K      per layer [n_kv_heads, m, row]   the cache's first m = min(n_past, cap) slots, as it stores them
    V      per layer [n_kv_heads, m, row]

Rows are in the cache's kv_type, named by the header (engine.cache: f32 float32 [head_dim], f16 float16
[head_dim], q8_0 head_dim + head_dim // 8 bytes). Version 1 files have no kv_type: their rows are f32.
A cache of another type than the loading session's is converted (kv_decode, then kv_encode).
Version 3 added the tools last offered (tools, tool_choice) and messages of tool calls and results;
files of versions 1 and 2 have neither.

The header names the model by its fingerprint (a hash of the .mgpt header, which holds every
tensor's checksum), so a chat cannot be loaded into other weights, and holds the SHA-256 of K and V
as stored, so a damaged file is refused before the session is used. Files are written to a temporary
name and renamed: a crash leaves the old file whole.
"""

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from .engine import KV_TYPES, PRECISIONS, kv_decode, kv_encode
from .engine.cache import kv_row
from .engine.speculate import SPECULATE
from .errors import CLIP_ARG, FormatError, MinigptError, clip
from .format import MgptFile, open_file
from .sampling import SamplerSettings
from .tools import call_id, check_calls, offer

MAGIC = b"MGPTCHAT"
VERSION = 3        # 3: tools and tool messages; 2: K/V in the cache's kv_type (1: float32, no kv_type)
_PREFIX = struct.Struct("<8sII")
_ALIGN = 64
_MAX_HEADER = 64 << 20


def save(chat, path):
    """Write `chat` (a ChatSession, not answering) to `path`, atomically."""
    m, cache = chat.model, chat.cache
    n = cache.pos
    header = {
        "model": {"fingerprint": m.file.fingerprint, "name": m.config.name, "path": str(Path(m.path).resolve()),
                  "precision": m.engine.precision, "backend": m.kern.name},
        "n_ctx": cache.n_ctx, "ring": cache.ring, "kv_type": cache.kv_type, "n_past": n, "tokens": list(cache.tokens),
        "messages": chat.messages, "text": chat._text, "marks": chat._marks,
        "tools": list(chat.offer.tools), "tool_choice": chat.offer.tool_choice,
        "settings": vars(chat.settings), "max_tokens": chat.max_tokens, "speculate": chat.speculate,
        "rng": chat.rng.bit_generator.state,
        "kv_sha256": _kv_digest(cache, n),
    }
    try:
        raw = json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate (a "\ud800" escape read from a file): as JSON escapes it round-trips
        raw = json.dumps(header).encode("ascii")
    head = _PREFIX.pack(MAGIC, VERSION, len(raw)) + raw
    head += b"\0" * (-len(head) % _ALIGN)
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        raise MinigptError(_cannot_save(path, e)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for block in _used(cache, n):
                f.write(np.ascontiguousarray(block).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):   # e.g. a full disk, or `path` is a folder
            raise MinigptError(_cannot_save(path, e)) from None
        raise


def _cannot_save(path, e):
    """One line for an OSError met while saving to `path` (the error itself names the temporary file)."""
    folder = path.parent
    if not folder.exists():
        why = f"folder {folder} does not exist"
    elif not folder.is_dir():
        why = f"{folder} is not a folder"
    elif path.is_dir():
        why = "it is a folder"
    else:
        why = e.strerror or str(e)
    return f"cannot save to {path}: {why}"


def read_header(path):
    """The header of a saved chat (a dict) and where its K/V data starts. Raises FormatError."""
    path = Path(path)
    try:
        with open_file(path, "saved minigpt chat") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
                raise FormatError(f"{path}: not a saved minigpt chat")
            _, version, hlen = _PREFIX.unpack(prefix)
            if not 1 <= version <= VERSION:
                raise FormatError(f"{path}: saved-chat version {version} is not supported "
                                  f"(this minigpt reads 1 to {VERSION})")
            if hlen > _MAX_HEADER:
                raise FormatError(f"{path}: corrupt header")
            raw = f.read(hlen)
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror}") from None
    if len(raw) != hlen:
        raise FormatError(f"{path}: truncated")
    try:
        header = json.loads(raw.decode("utf-8"))
        if version == 1 and isinstance(header, dict):
            header["kv_type"] = "f32"   # what version 1 stored, whatever the header says
        _check_header(header)
    except (ValueError, KeyError, TypeError, RecursionError, MinigptError) as e:   # RecursionError: nested too deep
        raise FormatError(f"{path}: corrupt header ({clip(str(e))})") from None
    offset = _PREFIX.size + hlen
    return header, offset + (-offset % _ALIGN)


def model_path(path, header):
    """The .mgpt file the saved chat at `path` (its header: read_header) was saved with, if it is still
    a regular file holding the same weights. The saved path is a hint from an untrusted file: it is never
    converted, downloaded or opened unless it is a regular file, and checked before any model loads."""
    p, want = header["model"].get("path"), header["model"]["fingerprint"]
    hint = "; pass -m MODEL to resume it with a model you choose"
    if not isinstance(p, str) or not os.path.isfile(p):
        raise MinigptError(f"{path} was saved with {clip(p, 120)}, which is not a file here{hint}")
    try:
        have = MgptFile(p).fingerprint
    except FormatError as e:
        raise MinigptError(f"{path} was saved with {clip(p, 120)}, which is not a minigpt model now "
                           f"({clip(str(e), 120)}){hint}") from None
    if have != want:
        raise MinigptError(f"{path} was saved with {clip(p, 120)}, which now holds other weights{hint}")
    return p


def load(cls, path, model, kv_type=None):
    """A `cls` (ChatSession) restored from `path` on `model`, which must be the one it was saved with.
    kv_type: the session's (None: the model's); K/V saved in another type are converted to it."""
    path = Path(path)
    h, offset = read_header(path)
    want, have = h["model"]["fingerprint"], model.file.fingerprint
    if want != have:
        raise MinigptError(f"{path} was saved with another model ({clip(h['model']['name'], CLIP_ARG)}, "
                           f"{clip(h['model'].get('path'), 120)}, fingerprint {clip(want, 40)}), not {model.path} "
                           f"(fingerprint {have})")
    cfg, n, n_ctx, saved = model.config, h["n_past"], h["n_ctx"], h["kv_type"]
    if n_ctx > model.n_ctx:
        raise MinigptError(f"{path} needs a context of {n_ctx} tokens; the model was loaded with {model.n_ctx} "
                           f"(pass --ctx {n_ctx} or more)")
    if any(t >= cfg.vocab_size for t in h["tokens"]):
        raise FormatError(f"{path}: token ids outside this model's vocabulary")
    try:
        dtype, row = kv_row(saved, cfg.head_dim)
    except ValueError as e:   # q8_0 on a head_dim that is not a multiple of 32
        raise FormatError(f"{path}: {e}") from None
    chat = cls(model, n_ctx=n_ctx, max_tokens=h["max_tokens"], kv_type=kv_type, speculate=h.get("speculate"),
               **h["settings"])
    cache = chat.cache
    ring = h.get("ring", n_ctx)   # an int (_check_header); files from before sliding windows have none
    if ring != cache.ring:
        raise FormatError(f"{path}: its sliding-window cache has {clip(ring, 40)} slots, this minigpt's {cache.ring}")
    # each block as the file stores it: the cache's slots, rows of the saved kv_type
    shapes = [block.shape[:2] + (row,) for block in _used(cache, n)]
    need = offset + sum(int(np.prod(s)) for s in shapes) * dtype.itemsize
    size = path.stat().st_size
    if size != need:
        raise FormatError(f"{path}: {size} bytes, but {n} cached positions need {need} (truncated?)")
    digest = hashlib.sha256()
    with open_file(path, "saved minigpt chat") as f:
        f.seek(offset)
        for block, shape in zip(_used(cache, n), shapes):
            if not block.size:   # a chat saved before its first message
                continue
            data = np.empty(shape, dtype=dtype)
            if f.readinto(memoryview(data).cast("B")) != data.nbytes:
                raise FormatError(f"{path}: truncated")
            digest.update(data.data)
            if saved == cache.kv_type:
                block[...] = data
            else:   # through float32, as attention would read the saved rows
                with np.errstate(all="ignore"):   # a file's NaN or 3e38 stays what it says
                    block[...] = kv_encode(kv_decode(data, saved, cfg.head_dim), cache.kv_type)
    if digest.hexdigest() != h["kv_sha256"]:
        raise FormatError(f"{path}: the saved cache is damaged (checksum mismatch)")
    cache.tokens[:] = h["tokens"]
    chat.messages = h["messages"]
    chat.offer = offer(h.get("tools"), h.get("tool_choice"))   # none in files from before tools
    chat._text, chat._marks = h["text"], [tuple(m) if m is not None else None for m in h["marks"]]
    try:
        chat.rng.bit_generator.state = h["rng"]
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise FormatError(f"{path}: bad sampler state ({clip(str(e))})") from None
    return chat


def _used(cache, n):
    """The filled part of each layer's keys, then values: slots [0, min(n, cap)) (a full ring: all of it)."""
    for arr in (cache.k, cache.v):
        for layer in arr:
            yield layer[:, :min(n, layer.shape[1])]


def _kv_digest(cache, n):
    h = hashlib.sha256()
    for block in _used(cache, n):
        h.update(np.ascontiguousarray(block).data)
    return h.hexdigest()


def _message_ok(m):
    """{role, content: str}; or an assistant's with tool_calls (content None when there is nothing else),
    or a tool's result with its tool_call_id: as ChatSession writes them."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        return False
    role, extra = m["role"], set(m) - {"role", "content"}
    if role == "assistant" and extra == {"tool_calls"}:
        check_calls(m["tool_calls"], "tool_calls")   # raises ArgumentError, a ValueError
        return m["content"] is None or isinstance(m["content"], str)
    if role == "tool":
        call_id(m, "a tool message")   # raises ArgumentError without one
        extra -= {"tool_call_id"}
    return not extra and isinstance(m.get("content"), str)


def _check_header(h):
    """Types and ranges of everything load() trusts (a corrupt file must fail here, not later)."""
    ints = lambda *xs: all(isinstance(x, int) and not isinstance(x, bool) for x in xs)
    if not isinstance(h, dict):
        raise ValueError("not a JSON object")
    m = h.get("model")
    if not isinstance(m, dict) or not all(isinstance(m.get(k), str) for k in ("fingerprint", "name", "precision")) \
            or m["precision"] not in PRECISIONS:
        raise ValueError("no model fingerprint, name or precision")
    n, n_ctx, tokens = h["n_past"], h["n_ctx"], h["tokens"]
    if h["kv_type"] not in KV_TYPES:
        raise ValueError("bad kv_type")
    if not ints(n, n_ctx, h.get("ring", 0)) or not 0 <= n <= n_ctx or not isinstance(tokens, list) \
            or len(tokens) != n or not ints(*tokens) or any(t < 0 for t in tokens):
        raise ValueError("bad positions or tokens")
    msgs = h["messages"]
    if not isinstance(msgs, list) or not all(_message_ok(m) for m in msgs):
        raise ValueError("bad messages")
    offer(h.get("tools"), h.get("tool_choice"))   # raises ArgumentError, a ValueError
    if h["text"] is not None and not isinstance(h["text"], str):
        raise ValueError("bad text")
    text_len = len(h["text"] or "")
    if not isinstance(h["marks"], list) or not all(
            m is None or (isinstance(m, list) and len(m) == 2 and ints(*m) and 0 <= m[0] <= n and 0 <= m[1] <= text_len)
            for m in h["marks"]):
        raise ValueError("bad marks")
    SamplerSettings(**h["settings"])   # raises on unknown or bad fields
    if h["max_tokens"] is not None and not ints(h["max_tokens"]):
        raise ValueError("bad max_tokens")
    if h.get("speculate") not in (None, *SPECULATE):   # files from before speculation have none
        raise ValueError("bad speculate")
    if not isinstance(h["rng"], dict) or not isinstance(h["kv_sha256"], str):
        raise ValueError("bad sampler state or checksum")
