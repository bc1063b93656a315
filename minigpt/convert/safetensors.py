"""A safetensors reader: the JSON header checked in full, tensor data as read-only mmap views.

Layout (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes of
UTF-8 JSON, then the data section. The header maps each tensor name to {"dtype", "shape",
"data_offsets": [begin, end]} (offsets relative to the data section, end exclusive); an optional
"__metadata__" key maps strings to strings. Tensors are stored row-major, little-endian.

A Hugging Face folder holds one `model.safetensors`, or shards `model-0000k-of-0000n.safetensors`
listed by `model.safetensors.index.json` ({"weight_map": {tensor name: shard file}}): `Checkpoint`
opens either and gives one name -> tensor table over all files.
"""

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CLIP_ARG, FormatError, clip
from ..format import map_file

# safetensors dtype -> (numpy dtype of the stored bits, bytes per element). BF16 has no NumPy type:
# its bits are read as uint16 and widened by the converter.
DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8),
          "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1), "U8": ("u1", 1),
          "BOOL": ("?", 1)}
MAX_HEADER = 100 << 20       # the format's own limit (100 MB)
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class SafeTensor:
    name: str
    dtype: str               # safetensors dtype name, e.g. "BF16"
    shape: tuple
    offset: int              # absolute offset of the data in its file
    nbytes: int
    file: "SafetensorsFile"

    def array(self) -> np.ndarray:
        """The stored values as a read-only view of the mapping (BF16 as uint16 bits)."""
        return self.file.view(self)


class SafetensorsFile:
    """One .safetensors file: `tensors` maps names to SafeTensor, `metadata` is the __metadata__ dict."""

    def __init__(self, path):
        self.path = Path(path)
        self._mm, size = map_file(self.path, 8, "safetensors file")
        self.metadata, self.tensors = self._parse_header(size)

    def _fail(self, why):
        raise FormatError(f"{self.path}: bad safetensors header: {why}")

    def _parse_header(self, size):
        (n,) = struct.unpack_from("<Q", self._mm, 0)
        if n > MAX_HEADER or 8 + n > size:
            self._fail(f"header length {n} does not fit the file ({size} bytes)")
        try:   # ValueError: not UTF-8, not JSON, or a number too long; RecursionError: nested too deep
            header = json.loads(bytes(self._mm[8:8 + n]).decode("utf-8"))
        except (ValueError, RecursionError) as e:
            self._fail(f"not JSON ({e.__class__.__name__}: {clip(str(e), CLIP_ARG)})")
        if not isinstance(header, dict):
            self._fail("not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            self._fail("__metadata__ is not an object")
        start = 8 + n
        tensors = {name: self._entry(name, e, start, size - start) for name, e in header.items()}
        self._check_overlaps(tensors, start)
        return metadata, tensors

    def _entry(self, name, e, start, data_size):
        """One header entry, checked: known dtype, integer shape, offsets in the data section, and a
        byte size that matches the shape."""
        name = clip(name, CLIP_ARG)   # for the messages below
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            self._fail(f"tensor {name}: expected keys dtype, shape, data_offsets, got {clip(e, CLIP_ARG)}")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            self._fail(f"tensor {name}: unknown dtype {clip(dtype, CLIP_ARG)}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            self._fail(f"tensor {name}: bad shape {clip(shape, CLIP_ARG)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            self._fail(f"tensor {name}: data_offsets {clip(offsets, CLIP_ARG)} outside the data section "
                       f"({data_size} bytes)")
        nbytes = int(np.prod(shape, dtype=object)) * DTYPES[dtype][1]
        if offsets[1] - offsets[0] != nbytes:
            self._fail(f"tensor {name}: {offsets[1] - offsets[0]} bytes for shape {clip(shape, CLIP_ARG)} of "
                       f"{dtype} ({clip(nbytes, CLIP_ARG)} expected)")
        return SafeTensor(name, dtype, tuple(shape), start + offsets[0], nbytes, self)

    def _check_overlaps(self, tensors, start):
        prev = None
        for t in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
            if prev is not None and t.offset < prev.offset + prev.nbytes and t.nbytes:
                self._fail(f"tensors {clip(prev.name, CLIP_ARG)} and {clip(t.name, CLIP_ARG)} overlap")
            if t.nbytes:
                prev = t

    def view(self, t: SafeTensor) -> np.ndarray:
        dtype = np.dtype(DTYPES[t.dtype][0])
        return np.frombuffer(self._mm, dtype=dtype, count=t.nbytes // dtype.itemsize, offset=t.offset).reshape(t.shape)


class Checkpoint:
    """The weights of a Hugging Face folder: `model.safetensors`, or the shards its index lists.

    `tensors` maps every tensor name to its SafeTensor, whichever file holds it; a name in two
    files, a shard the index names but the folder lacks, or an index entry its shard does not hold
    is an error.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            names = self._read_index(index)
            files = sorted(set(names.values()))
        elif (self.folder / SINGLE).is_file():
            names, files = None, [SINGLE]
        else:
            raise FormatError(f"{self.folder}: no {SINGLE} and no {INDEX}")
        for f in files:
            if not _is_file(self.folder / f):
                raise FormatError(f"{self.folder}: missing shard {clip(f, CLIP_ARG)} (listed in {INDEX})")
        self.files = [SafetensorsFile(self.folder / f) for f in files]
        self.tensors = {}
        for sf in self.files:
            for name, t in sf.tensors.items():
                if name in self.tensors:
                    raise FormatError(f"{self.folder}: tensor {clip(name, CLIP_ARG)} is in both "
                                      f"{self.tensors[name].file.path.name} and {sf.path.name}")
                self.tensors[name] = t
        if names is not None:
            for name, f in names.items():
                if self.tensors.get(name) is None or self.tensors[name].file.path.name != f:
                    raise FormatError(f"{index}: tensor {clip(name, CLIP_ARG)} is not in {clip(f, CLIP_ARG)}")

    def _read_index(self, index):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, RecursionError, KeyError, TypeError) as e:   # ValueError: not UTF-8 or JSON
            raise FormatError(f"{index}: unreadable index ({e.__class__.__name__}: {clip(str(e), CLIP_ARG)})") \
                from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) and f and Path(f).name == f for f in weight_map.values()):
            raise FormatError(f"{index}: weight_map must map tensor names to file names in the folder")
        return weight_map


def _is_file(path):
    """Path.is_file, False for a name the system refuses (too long: the index names files)."""
    try:
        return path.is_file()
    except OSError:
        return False
