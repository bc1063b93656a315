"""The .mgpt flat file: one self-contained, memory-mappable model file (spec: docs/format.md).

    offset 0   b"MGPT"                   magic
           4   u32 format version        (1)
           8   u64 header length H
          16   u32 CRC-32 of the header bytes
          20   u32 reserved (0)
          24   H bytes of UTF-8 JSON     config, tokenizer, chat template, tensor table
               zero padding to a multiple of 64
    data_offset tensors, each starting at a multiple of 64 bytes, zero padded between

Opening parses and checks the header only (O(1) in the weights): the weights are mmap views that
no code reads until a kernel uses them. Per-tensor CRC-32s are checked by `verify()`.
"""

import hashlib
import json
import math
import mmap
import os
import stat
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import CLIP_ARG, FormatError, clip
from .quant import QTYPES, storage_shape

MAGIC = b"MGPT"
VERSION = 1
ALIGN = 64
_PREFIX = struct.Struct("<4sIQII")   # magic, version, header length, header crc, reserved
MAX_HEADER = 1 << 30

_DTYPES = {"f32": np.float32, "f16": np.float16}   # block types are stored as uint8


def _align(n):
    return -(-n // ALIGN) * ALIGN


def _ints(*xs):
    return all(isinstance(x, int) and not isinstance(x, bool) for x in xs)


_HEX8 = re.compile("[0-9a-f]{8}")   # a tensor's crc32 in the header


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: str
    shape: tuple      # logical shape: (rows, cols) or (n,)
    offset: int       # absolute file offset, a multiple of ALIGN
    nbytes: int
    crc32: int

    @property
    def stored_shape(self):
        return tensor_storage_shape(self.qtype, self.shape)


def tensor_storage_shape(qtype, shape):
    if qtype not in QTYPES:
        raise FormatError(f"unknown quant type {clip(qtype, CLIP_ARG)}")
    if len(shape) == 1:
        if qtype not in _DTYPES:
            raise FormatError(f"a 1-D tensor cannot be {qtype}")
        return tuple(shape)
    if len(shape) != 2:
        raise FormatError(f"tensors are 1-D or 2-D, not {clip(shape, CLIP_ARG)}")
    try:
        return tuple(storage_shape(qtype, *shape))
    except ValueError as e:
        raise FormatError(clip(str(e))) from None


def _nbytes(qtype, shape):
    dtype = np.dtype(_DTYPES.get(qtype, np.uint8))
    return math.prod(int(s) for s in tensor_storage_shape(qtype, shape)) * dtype.itemsize   # Python ints: no overflow


# --- writing

class Writer:
    """Writes a .mgpt file tensor by tensor (memory bounded by one tensor), atomically.

    The tensor table is declared up front so offsets are known; CRCs are filled in by `close()`,
    which rewrites the header in place (its length does not change: CRCs are fixed-width).
    Data goes to `path + ".tmp-<pid>"`, renamed to `path` only when everything succeeded.
    """

    def __init__(self, path, config: Config, tokenizer: dict, chat_template, specs):
        if not isinstance(tokenizer, dict) or not isinstance(chat_template, (str, type(None))):   # as MgptFile
            raise FormatError(f"the chat template must be a string or null, got {clip(chat_template, CLIP_ARG)}"
                              if isinstance(tokenizer, dict) else "the tokenizer fields must be a dict")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.meta = {"format": "minigpt", "config": config.to_dict(), "tokenizer": tokenizer,
                     "chat_template": chat_template, "tensors": []}
        # offsets depend on the header length, which depends on the offsets' digits: iterate
        data_offset = 0
        for _ in range(4):
            offset, table = data_offset, []
            for name, qtype, shape in specs:
                nbytes = _nbytes(qtype, shape)
                table.append({"name": name, "qtype": qtype, "shape": list(shape),
                              "offset": offset, "nbytes": nbytes, "crc32": "00000000"})
                offset = _align(offset + nbytes)
            self.meta["tensors"], self.meta["data_offset"], self.meta["file_size"] = table, data_offset, offset
            header = self._header()
            if _align(_PREFIX.size + len(header)) == data_offset:
                break
            data_offset = _align(_PREFIX.size + len(header))
        self._next = 0
        self.f = open(self.tmp, "wb")
        self.f.write(_PREFIX.pack(MAGIC, VERSION, len(header), 0, 0) + header)

    def _header(self):
        try:
            return json.dumps(self.meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError as e:   # a lone surrogate, from a JSON "\ud800" escape: no UTF-8 for it
            raise FormatError(f"the tokenizer or chat template holds text that is not Unicode "
                              f"({clip(e.object[max(0, e.start - 20):e.end + 20], CLIP_ARG)})") from None

    def write(self, name, array):
        entry = self.meta["tensors"][self._next]
        if entry["name"] != name:
            raise AssertionError(f"tensors must be written in declared order: {name} != {entry['name']}")
        data = np.ascontiguousarray(array)
        if data.nbytes != entry["nbytes"]:
            raise AssertionError(f"{name}: {data.nbytes} bytes, declared {entry['nbytes']}")
        self.f.write(b"\0" * (entry["offset"] - self.f.tell()))
        self.f.write(data.reshape(-1).view(np.uint8))   # the array's own buffer: no copy of the tensor
        entry["crc32"] = f"{zlib.crc32(data.view(np.uint8).reshape(-1)):08x}"
        self._next += 1

    def close(self):
        """Finish and atomically move the file into place."""
        if self._next != len(self.meta["tensors"]):
            raise AssertionError("not every declared tensor was written")
        self.f.write(b"\0" * (self.meta["file_size"] - self.f.tell()))
        header = self._header()
        self.f.seek(0)
        self.f.write(_PREFIX.pack(MAGIC, VERSION, len(header), zlib.crc32(header), 0) + header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --- reading

def open_file(path, kind):
    """The file at `path` opened for binary reading if it is a regular file, else a one-line FormatError
    ("not a {kind}"). A FIFO is refused at once: a plain open() would wait for a writer, for ever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FormatError(f"{path}: not a {kind} ({'a folder' if stat.S_ISDIR(mode) else 'not a regular file'})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def map_file(path, min_size, kind):
    """(read-only mmap of the regular file at `path`, its size); a one-line FormatError when it cannot be
    opened or is shorter than min_size bytes ("not a {kind}")."""
    with open_file(path, kind) as f:
        size = f.seek(0, 2)
        if size < min_size:
            raise FormatError(f"{path}: not a {kind} (only {size} bytes)")
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
        except OSError as e:
            raise FormatError(f"{path}: cannot map: {e.strerror}") from None


class MgptFile:
    """A .mgpt file opened for reading: checked header, tensors as zero-copy read-only views."""

    def __init__(self, path):
        self.path = Path(path)
        self._mm, size = map_file(self.path, _PREFIX.size, "minigpt model file")
        self._parse(size)

    def _parse(self, size):
        err = lambda msg: FormatError(f"{self.path}: {msg}")
        magic, version, hlen, hcrc, _ = _PREFIX.unpack_from(self._mm, 0)
        if magic != MAGIC:
            hint = " (a GGUF file: convert it with `minigpt convert`)" if magic == b"GGUF" else ""
            raise err(f"not a minigpt model file{hint}")
        if version != VERSION:
            raise err(f"format version {version} is not supported (this minigpt reads version {VERSION})")
        if hlen > min(MAX_HEADER, size - _PREFIX.size):
            raise err("truncated or corrupt header")
        header = self._mm[_PREFIX.size:_PREFIX.size + hlen]
        if zlib.crc32(header) != hcrc:
            raise err("header checksum mismatch (file corrupt)")
        # names the exact weights (the header holds every tensor's CRC): saved chats are tied to it
        self.fingerprint = hashlib.sha256(header).hexdigest()[:16]
        try:
            meta = json.loads(header.decode("utf-8"))
            self.config = Config.from_dict(meta["config"])
            self.tokenizer = meta["tokenizer"]
            self.chat_template = meta["chat_template"]
            table, data_offset, file_size = meta["tensors"], meta["data_offset"], meta["file_size"]
        except FormatError as e:
            raise err(str(e)) from None
        except (ValueError, KeyError, TypeError, RecursionError) as e:   # RecursionError: JSON nested too deep
            raise err(f"malformed header ({e.__class__.__name__}: {clip(str(e), 100)})") from None
        if not isinstance(table, list) or not table or not all(isinstance(t, dict) for t in table) or \
                not _ints(data_offset, file_size):
            raise err("malformed header (tensor table, data offset or file size)")
        if not isinstance(self.tokenizer, dict) or not isinstance(self.chat_template, (str, type(None))):
            raise err("malformed header (the tokenizer must be an object, the chat template a string or null)")
        if file_size != size:
            raise err(f"file is {size} bytes, header says {clip(file_size, CLIP_ARG)} (truncated or appended to?)")
        if data_offset < _PREFIX.size + hlen or data_offset % ALIGN:
            raise err(f"bad data offset {clip(data_offset, CLIP_ARG)}")

        self.tensors = {}
        end = data_offset
        for t in table:
            name, qtype, shape, offset, nbytes, crc = (t.get(k) for k in ("name", "qtype", "shape", "offset",
                                                                          "nbytes", "crc32"))
            # exact types: int() would take 64.5, "64" or True, and fail on a float too large (1e999)
            if not (isinstance(name, str) and len(name) <= 200 and isinstance(qtype, str)
                    and isinstance(shape, list) and len(shape) in (1, 2) and _ints(offset, nbytes, *shape)
                    and isinstance(crc, str) and _HEX8.fullmatch(crc)):
                raise err(f"malformed tensor entry {clip(t, 80)} (name, qtype, shape, offset, nbytes or crc32)")
            info = TensorInfo(name, qtype, tuple(shape), offset, nbytes, int(crc, 16))
            if any(s <= 0 for s in info.shape):
                raise err(f"tensor {info.name}: bad shape {clip(info.shape, CLIP_ARG)}")
            try:
                expected = _nbytes(info.qtype, info.shape)
            except FormatError as e:
                raise err(f"tensor {info.name}: {e}") from None
            if info.nbytes != expected:
                raise err(f"tensor {info.name}: {clip(info.nbytes, CLIP_ARG)} bytes, but "
                          f"{info.qtype}{list(info.shape)} needs {expected}")
            if info.offset % ALIGN or info.offset < end or info.offset + info.nbytes > size:
                raise err(f"tensor {info.name}: bad offset {clip(info.offset, CLIP_ARG)} "
                          "(overlapping, unaligned or past the end)")
            end = info.offset + info.nbytes
            self.tensors[info.name] = info

    def tensor(self, name):
        """Zero-copy read-only view of a tensor in its stored form."""
        info = self.tensors.get(name)
        if info is None:
            raise FormatError(f"{self.path}: missing tensor {name!r}")
        dtype = _DTYPES.get(info.qtype, np.uint8)
        count = info.nbytes // np.dtype(dtype).itemsize
        return np.frombuffer(self._mm, dtype=dtype, count=count, offset=info.offset).reshape(info.stored_shape)

    def release(self, names):
        """Give back the resident pages of the tensors `names` and of the header (parsed at open), which no
        code reads any more: e.g. weights the compiled backend repacked into copies at load, whose pages
        stay resident after being read once. madvise(MADV_DONTNEED), on whole pages only: a run of such
        tensors in file order, its ends rounded inward, so a page that holds a byte of any other tensor is
        never given back. The mapping is read-only and file-backed: a later read still sees the same bytes
        (from the page cache or the disk), only slower. Returns the (start, end) byte ranges given back
        (none where there is no madvise, e.g. Windows)."""
        if not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return []
        names, order = set(names), sorted(self.tensors.values(), key=lambda t: t.offset)
        runs = [[0, order[0].offset]]   # [start, end): the header, then each run of given-back tensors
        for t in order:
            if t.name not in names:
                runs.append(None)
            elif runs[-1] is None:
                runs[-1] = [t.offset, t.offset + t.nbytes]
            else:   # the run goes on, over the zero padding between the two
                runs[-1][1] = t.offset + t.nbytes
        page, out = mmap.PAGESIZE, []
        for a, b in filter(None, runs):
            a, b = -(-a // page) * page, b // page * page   # whole pages inside the run
            if b > a:
                self._mm.madvise(mmap.MADV_DONTNEED, a, b - a)
                out.append((a, b))
        return out

    def verify(self, progress=None):
        """Check every tensor's CRC-32 (reads the whole file). Raises FormatError naming the first bad one."""
        for info in self.tensors.values():
            if zlib.crc32(self._mm[info.offset:info.offset + info.nbytes]) != info.crc32:
                raise FormatError(f"{self.path}: tensor {info.name} checksum mismatch (file corrupt)")
            if progress:
                progress(info.nbytes)

    @property
    def file_size(self):
        return len(self._mm)
