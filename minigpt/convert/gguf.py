"""A GGUF reader: metadata and tensor table parsed with bounds checks, tensor data as mmap views.

GGUF v2/v3 layout (little-endian): magic b"GGUF", u32 version, u64 n_tensors, u64 n_kv,
n_kv × (string key, u32 type, value), n_tensors × (string name, u32 n_dims, u64 dims[n_dims],
u32 ggml_type, u64 offset), padding to `general.alignment` (default 32), then the data section.
Strings are u64 length + UTF-8 bytes. dims[0] is the fastest-varying one, so a row-major NumPy
shape is the reverse of dims.
"""

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CLIP_ARG, FormatError, clip
from ..format import map_file

# value types of metadata
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (name, block_size, block_bytes). Only names are needed for the
# types we cannot decode; their sizes still let us check the file's extent.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2),
}

MAX_TENSORS = 1 << 20        # far above any real model; guards against absurd counts
MAX_KV = 1 << 20
MAX_DIMS = 4
# Elements of all metadata arrays together. A large vocabulary (Gemma 3: 262,144 tokens) has three or
# four arrays that long; a Python list takes about 9 times the file's bytes of a u32 array (a str: ~60
# bytes each), so a file of long arrays would otherwise cost memory far beyond its size.
MAX_ARRAY_ITEMS = 1 << 23


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_name: str           # e.g. "Q4_1"
    shape: tuple             # row-major (reversed GGUF dims): (rows, cols) for a matrix
    offset: int              # absolute offset of the data in the file
    nbytes: int
    data: np.ndarray         # uint8 view of the raw bytes: [rows, bytes_per_row]


class GGUFFile:
    """Parses a GGUF file. `metadata` maps keys to Python values; `tensors` maps names to GGUFTensor."""

    def __init__(self, path):
        self.path = Path(path)
        self._mm, size = map_file(self.path, 24, "GGUF file")
        self._buf = memoryview(self._mm)
        self._pos = 0
        self._items = 0              # metadata array elements so far (MAX_ARRAY_ITEMS)
        self._parse()

    # --- low-level readers, every one bounds-checked
    def _take(self, n):
        if n < 0 or self._pos + n > len(self._buf):
            raise FormatError(f"{self.path}: truncated GGUF header (wanted {n} bytes at offset {self._pos})")
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def _unpack(self, fmt):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self):
        n = self._unpack("<Q")
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: invalid UTF-8 string at offset {self._pos - n}") from None

    def _value(self, vtype):
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype, n = self._unpack("<I"), self._unpack("<Q")
            self._items += n
            if self._items > MAX_ARRAY_ITEMS:
                raise FormatError(f"{self.path}: metadata arrays of more than {MAX_ARRAY_ITEMS} elements in all")
            if etype in _SCALARS:   # numeric arrays are read in one go
                fmt = _SCALARS[etype]
                width = struct.calcsize(fmt)
                raw = self._take(n * width)
                return np.frombuffer(raw, dtype=np.dtype(fmt)).tolist()
            if etype == _STRING:
                if n > len(self._buf) // 8:
                    raise FormatError(f"{self.path}: absurd array length {n}")
                return [self._string() for _ in range(n)]
            raise FormatError(f"{self.path}: unsupported GGUF array element type {etype}")
        raise FormatError(f"{self.path}: unknown GGUF value type {vtype}")

    # --- the file
    def _parse(self):
        if bytes(self._take(4)) != b"GGUF":
            raise FormatError(f"{self.path}: not a GGUF file (bad magic)")
        self.version = self._unpack("<I")
        if self.version not in (2, 3):
            raise FormatError(f"{self.path}: unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise FormatError(f"{self.path}: absurd GGUF counts ({n_tensors} tensors, {n_kv} keys)")

        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._unpack("<I"))

        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise FormatError(f"{self.path}: tensor {clip(name, CLIP_ARG)} has {n_dims} dimensions")
            dims = [self._unpack("<Q") for _ in range(n_dims)]
            infos.append((name, dims, self._unpack("<I"), self._unpack("<Q")))

        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise FormatError(f"{self.path}: bad general.alignment {clip(align, CLIP_ARG)}")
        data_start = -(-self._pos // align) * align

        self.tensors = {}
        for name, dims, type_id, offset in infos:
            if type_id not in GGML_TYPES:
                raise FormatError(f"{self.path}: tensor {clip(name, CLIP_ARG)} has unknown ggml type {type_id}")
            type_name, block, block_bytes = GGML_TYPES[type_id]
            if any(d <= 0 or d > 1 << 40 for d in dims) or dims[0] % block:
                raise FormatError(f"{self.path}: tensor {clip(name, CLIP_ARG)} has bad shape {dims} for {type_name}")
            n_rows = math.prod(dims[1:])   # Python ints: 2**40 * 2**40 * 2**40 does not wrap to 0
            row_bytes = dims[0] // block * block_bytes
            nbytes = n_rows * row_bytes
            start = data_start + offset
            if offset % align or start + nbytes > len(self._buf):
                raise FormatError(f"{self.path}: tensor {clip(name, CLIP_ARG)} lies outside the file (truncated?)")
            data = np.frombuffer(self._buf, dtype=np.uint8, count=nbytes, offset=start)
            shape = tuple(reversed(dims))
            self.tensors[name] = GGUFTensor(name, type_name, shape, start, nbytes,
                                            data.reshape(n_rows, row_bytes))

    def field(self, key, default=None, required=False):
        if key in self.metadata:
            return self.metadata[key]
        if required:
            raise FormatError(f"{self.path}: missing GGUF key {key!r}")
        return default
