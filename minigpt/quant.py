"""NumPy quantizers: the oracle every kernel is tested against.

Weights are stored in ggml's block layout, unchanged, so a GGUF's Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 /
Q4_K / Q6_K tensor carries over byte for byte. A 2-D weight W of logical shape [rows, cols] is stored
row-major:

    f32   float32 [rows, cols]
    f16   float16 [rows, cols]
    q8_0  per block of 32: fp16 d, 32 x int8 q                    x = d*q        34 bytes/block
    q4_0  per block of 32: fp16 d, 16 bytes of nibbles            x = d*(q-8)    18 bytes/block
    q4_1  per block of 32: fp16 d, fp16 m, 16 bytes of nibbles    x = d*q + m    20 bytes/block
    q5_0  per block of 32: fp16 d, u32 qh, 16 bytes of nibbles    x = d*(q-16)   22 bytes/block
    q5_1  per block of 32: fp16 d, fp16 m, u32 qh, 16 bytes       x = d*q + m    24 bytes/block
    q4_k  per super-block of 256: fp16 d, fp16 dmin, 12 bytes of 6-bit scales sc and mins m (8
          sub-blocks of 32), 128 bytes of nibbles         x = (d*sc)*q - (dmin*m)      144 bytes/block
    q6_k  per super-block of 256: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 int8
          scales sc (sub-blocks of 16), fp16 d            x = (d*sc)*(q - 32)          210 bytes/block

Nibble order (q4_0, q4_1, q5_*): byte j of a block holds element j in its low nibble and element j+16
in its high nibble; the q5 types keep the fifth bit of element i's code as bit i of the little-endian
u32 qh. The K-quants are ggml's Q4_K and Q6_K byte for byte (their bit layouts, decoders and
quantizers: minigpt/quant_k.py). fp16 fields are little-endian IEEE half. A block-quantized W is uint8
[rows, nb*block_bytes] with nb = cols/block.

Everything here is vectorized over blocks; the only Python loop walks chunks of rows to bound the size
of temporaries on large tensors.
"""

from typing import NamedTuple

import numpy as np

from . import quant_k


class QType(NamedTuple):
    block: int          # elements per block; float types are "blocks" of one element
    block_bytes: int    # bytes per block
    code: int           # its enum mg_qtype in csrc/kernels.h (kernels._core checks the C table at import)
    dtype: np.dtype     # dtype of the stored array


# The one table of weight types: every module that needs a block size or a byte count reads it here.
QTYPES = {
    "f32": QType(1, 4, 0, np.dtype(np.float32)),
    "f16": QType(1, 2, 1, np.dtype(np.float16)),
    "q8_0": QType(32, 34, 2, np.dtype(np.uint8)),
    "q4_0": QType(32, 18, 3, np.dtype(np.uint8)),
    "q4_1": QType(32, 20, 4, np.dtype(np.uint8)),
    "q5_0": QType(32, 22, 5, np.dtype(np.uint8)),
    "q5_1": QType(32, 24, 6, np.dtype(np.uint8)),
    "q4_k": QType(256, 144, 7, np.dtype(np.uint8)),
    "q6_k": QType(256, 210, 8, np.dtype(np.uint8)),
}

_FLOAT_DTYPES = {name: t.dtype for name, t in QTYPES.items() if t.block == 1}
_CHUNK_ELEMS = 1 << 20  # elements quantized per step: keeps float64 temporaries ~8 MB


def _check_qtype(qtype):
    """-> (block, block_bytes) of a known qtype name; ValueError otherwise."""
    if not isinstance(qtype, str) or qtype not in QTYPES:
        raise ValueError(f"unknown qtype {qtype!r}; expected one of {', '.join(QTYPES)}")
    return QTYPES[qtype][:2]


def row_bytes(qtype, cols):
    """Bytes one stored row of `cols` logical elements takes; ValueError if cols does not fit the blocks."""
    block, block_bytes = _check_qtype(qtype)
    cols = int(cols)
    if cols < 0 or cols % block:
        raise ValueError(f"cols={cols} is not a non-negative multiple of the {qtype} block size {block}")
    return cols // block * block_bytes


def storage_shape(qtype, rows, cols):
    """Shape of the stored array for a [rows, cols] weight; ValueError if cols is not a multiple of the block."""
    rows = int(rows)
    if rows < 0:
        raise ValueError(f"rows={rows} is negative")
    nbytes = row_bytes(qtype, cols)
    if qtype in _FLOAT_DTYPES:
        return (rows, int(cols))
    return (rows, nbytes)


# --- fp16 fields ---------------------------------------------------------------------------------

def _f16_bytes(v):
    # v: float32 [nb, 1] -> uint8 [nb, 2]; astype rounds to nearest even, as GGML_FP32_TO_FP16 does
    return v.astype("<f2").view(np.uint8)


def _f16_field(blocks, start):
    # blocks: uint8 [nb, block_bytes] -> float32 [nb, 1] read from bytes start, start+1
    return np.ascontiguousarray(blocks[:, start:start + 2]).view("<f2").astype(np.float32)


def _pack_nibbles(q):
    # q: uint8 [nb, 32] in 0..15 -> [nb, 16]; element j low nibble, element j+16 high nibble
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _unpack_nibbles(qs):
    # qs: uint8 [nb, 16] -> uint8 [nb, 32]
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


_BIT = np.arange(32, dtype=np.uint32)


def _pack_q5(q):
    # q: uint8 [nb, 32] in 0..31 -> (qh uint8 [nb, 4]: bit i = bit 4 of element i, qs [nb, 16])
    qh = ((q >> np.uint8(4)).astype(np.uint32) << _BIT).sum(axis=1, dtype=np.uint32)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4), _pack_nibbles(q & np.uint8(0x0F))


def _unpack_q5(qh_bytes, qs):
    # qh_bytes: uint8 [nb, 4] (u32 little-endian), qs: uint8 [nb, 16] -> codes uint8 [nb, 32] in 0..31
    qh = np.ascontiguousarray(qh_bytes).view("<u4")                      # [nb, 1]
    high = ((qh >> _BIT) & np.uint32(1)).astype(np.uint8)
    return _unpack_nibbles(qs) | (high << np.uint8(4))


def _roundf(v):
    # C roundf: halves away from zero. Not floor(|v| + 0.5), which float32 rounding breaks at 0.49999997.
    a = np.abs(v)
    fl = np.floor(a)
    return np.copysign(fl + (a - fl >= 0.5), v)


# --- block quantizers: blocks float32 [nb, 32] -> uint8 [nb, block_bytes] ------------------------

def _quantize_q8_0(b):
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = _roundf(b * inv).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _symmetric_codes(b, half):
    """d and codes 0..2*half-1 of q4_0 (half 8) and q5_0 (16): the signed value of largest magnitude maps
    to -half exactly (d = max/-half), so one side gets `half` levels, the other half - 1."""
    imax = np.abs(b).argmax(axis=1)[:, None]  # first occurrence, like the C strict '<'
    vmax = np.take_along_axis(b, imax, axis=1)
    d = vmax / np.float32(-half)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    # x*id + (half + 0.5f) as FMA builds of ggml compute it (gguf-py does the same): the float64 product
    # is exact, so the result is rounded once in the add (to float64) and once more to float32.
    t = (b.astype(np.float64) * inv.astype(np.float64) + (half + 0.5)).astype(np.float32)
    return d, np.minimum(np.trunc(t), 2 * half - 1).astype(np.uint8)


def _affine_codes(b, levels):
    """d, m and codes 0..levels of q4_1 (levels 15) and q5_1 (31): d = (max-min)/levels, m = min."""
    vmin = b.min(axis=1, keepdims=True)
    vmax = b.max(axis=1, keepdims=True)
    d = (vmax - vmin) / np.float32(levels)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    t = (b - vmin) * inv + np.float32(0.5)  # separate float32 roundings, as ggml and gguf-py do
    return d, vmin, np.minimum(np.trunc(t), levels).astype(np.uint8)


def _quantize_q4_0(b):
    d, q = _symmetric_codes(b, 8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _quantize_q4_1(b):
    d, m, q = _affine_codes(b, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_nibbles(q)], axis=1)


def _quantize_q5_0(b):
    d, q = _symmetric_codes(b, 16)
    return np.concatenate([_f16_bytes(d), *_pack_q5(q)], axis=1)


def _quantize_q5_1(b):
    d, m, q = _affine_codes(b, 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), *_pack_q5(q)], axis=1)


# --- block dequantizers: uint8 [nb, block_bytes] -> float32 [nb, 32] -----------------------------

def _dequantize_q8_0(blk):
    return _f16_field(blk, 0) * blk[:, 2:].view(np.int8).astype(np.float32)


def _dequantize_q4_0(blk):
    q = _unpack_nibbles(blk[:, 2:]).astype(np.float32) - np.float32(8)
    return _f16_field(blk, 0) * q


def _dequantize_q4_1(blk):
    q = _unpack_nibbles(blk[:, 4:]).astype(np.float32)
    return _f16_field(blk, 0) * q + _f16_field(blk, 2)


def _dequantize_q5_0(blk):
    q = _unpack_q5(blk[:, 2:6], blk[:, 6:]).astype(np.float32) - np.float32(16)
    return _f16_field(blk, 0) * q


def _dequantize_q5_1(blk):
    q = _unpack_q5(blk[:, 4:8], blk[:, 8:]).astype(np.float32)
    return _f16_field(blk, 0) * q + _f16_field(blk, 2)


_CODES_AT = {"q8_0": 2, "q4_0": 2, "q4_1": 4, "q5_0": 6, "q5_1": 8}   # where a block's codes (q5: qs) start
_D_OFFSET = {"q4_0": -8, "q5_0": -16}   # x = d * (code + this); q4_1, q5_1 add their fp16 m (bytes 2-3)


def split_blocks(w, qtype):
    """A stored block-type weight [rows, row bytes] -> its 32-element blocks as the x8 kernels dot them:
    (codes [rows, nb, 32]; d float32 [rows, nb]; offset float32 [rows, nb] or None), nb = cols/32,
    x = d * code + offset. For each type:
      q8_0  codes int8 as stored, offset None
      q4_0  codes 0..15, offset -8 d
      q4_1  codes 0..15, offset m
      q5_0  codes 0..31, offset -16 d
      q5_1  codes 0..31, offset m
      q4_k  codes 0..15 of sub-block j, d = d*sc_j, offset = -dmin * m_j (both products exact in float32)
      q6_k  codes int16 sc_s * (q - 32), each element's sub-block scale folded in; d = the super-block's
            d for each of its 8 blocks; offset None
    """
    _, block_bytes = _check_qtype(qtype)
    rows = w.shape[0]
    blk = np.ascontiguousarray(w).reshape(-1, block_bytes)
    if qtype == "q4_k":
        d, dmin, sc, m, q = quant_k.q4_k_fields(blk)
        return (q.reshape(rows, -1, 32), (d * sc.astype(np.float32)).reshape(rows, -1),
                (-dmin * m.astype(np.float32)).reshape(rows, -1))
    if qtype == "q6_k":
        d, sc, q = quant_k.q6_k_fields(blk)
        codes = sc.astype(np.int16)[:, :, None] * q.astype(np.int16)
        return codes.reshape(rows, -1, 32), np.repeat(d, 8, axis=1).reshape(rows, -1), None
    d = _f16_field(blk, 0).reshape(rows, -1)
    at = _CODES_AT[qtype]
    if qtype == "q8_0":
        return blk[:, at:].view(np.int8).reshape(rows, -1, 32), d, None
    if qtype in ("q5_0", "q5_1"):
        codes = _unpack_q5(blk[:, at - 4:at], blk[:, at:])
    else:
        codes = _unpack_nibbles(blk[:, at:])
    if qtype in _D_OFFSET:
        offset = d * np.float32(_D_OFFSET[qtype])
    else:
        offset = _f16_field(blk, 2).reshape(rows, -1)
    return codes.reshape(rows, -1, 32), d, offset


_QUANTIZE = {"q8_0": _quantize_q8_0, "q4_0": _quantize_q4_0, "q4_1": _quantize_q4_1,
             "q5_0": _quantize_q5_0, "q5_1": _quantize_q5_1, "q4_k": quant_k.quantize_q4_k,
             "q6_k": quant_k.quantize_q6_k}
_DEQUANTIZE = {"q8_0": _dequantize_q8_0, "q4_0": _dequantize_q4_0, "q4_1": _dequantize_q4_1,
               "q5_0": _dequantize_q5_0, "q5_1": _dequantize_q5_1, "q4_k": quant_k.dequantize_q4_k,
               "q6_k": quant_k.dequantize_q6_k}


def _positive_cols(cols):
    # a 1-D weight is a flat run of rows; only a positive row length can split it
    if cols is None or int(cols) <= 0:
        raise ValueError(f"a 1-D weight needs a positive cols, got {cols!r}")
    return int(cols)


# --- public API ----------------------------------------------------------------------------------

def quantize(x, qtype):
    """Quantize float32 x [..., cols] along its last axis -> the stored form (see the module docstring).

    f32 is a copy; f16 rounds to nearest even (|x| > 65504 becomes inf). The block types follow ggml's reference quantizers
    (quantize_row_*_ref) bit for bit:
      q8_0  d = amax/127 (float32), q = roundf(x/d), halves away from zero.
      q4_0  d = max/-8 where max is the signed value of largest |x| (first one on ties);
            q = min(15, trunc(x*(1/d) + 8.5)), the multiply-add fused as with FMA (float64, then float32).
      q4_1  d = (max-min)/15, m = min; q = min(15, trunc((x-m)*(1/d) + 0.5)), float32 at each step.
      q5_0  as q4_0 with d = max/-16 and q = min(31, trunc(x*(1/d) + 16.5)).
      q5_1  as q4_1 with d = (max-min)/31 and q = min(31, ...).
      q4_k  ggml's quantize_row_q4_K_ref (minigpt/quant_k.py): per sub-block of 32, make_qkx2_quants
            (a scale and a min fitted by weighted least squares over 21 candidate scales, weights
            rms(x) + |x|); the 8 scales and mins then rounded to 6 bits against d = max scale/63,
            dmin = max min/63 (fp16), and the codes recomputed from those.
      q6_k  ggml's quantize_row_q6_K_ref: per sub-block of 16, make_qx_quants (19 candidate scales,
            weights x^2); the 16 scales rounded to int8 against d = max |scale|/128 (fp16), the
            codes recomputed from those.
    d and m are rounded to fp16 only when stored; the codes use the float32 d. An all-zero block stores
    d = 0 (q4_0, q5_0: -0.0) and codes 0 (q4_0: 8, q5_0: 16). Non-finite input raises ValueError for
    block types. tools/kquant_golden.py compares q4_k and q6_k with ggml's C functions byte for byte.
    """
    block, block_bytes = _check_qtype(qtype)
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"x must be a real number array, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if qtype in _FLOAT_DTYPES:
        with np.errstate(over="ignore"):  # beyond fp16 range -> inf, as ggml does
            return np.ascontiguousarray(x, dtype=_FLOAT_DTYPES[qtype])

    cols = x.shape[-1]
    nbytes = row_bytes(qtype, cols)
    if not np.isfinite(x).all():
        bad = x.reshape(-1)[~np.isfinite(x.reshape(-1))][0]
        raise ValueError(f"cannot quantize non-finite value {bad} to {qtype}")
    rows = x.reshape(int(np.prod(x.shape[:-1])), cols)
    out = np.empty((rows.shape[0], nbytes), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMS // max(cols, 1))
    fn = _QUANTIZE[qtype]
    for r0 in range(0, rows.shape[0], step):
        chunk = rows[r0:r0 + step]
        blocks = chunk.reshape(-1, block)
        out[r0:r0 + step] = fn(blocks).reshape(chunk.shape[0], nbytes)
    return out.reshape(*x.shape[:-1], nbytes)


def quantize_act(x, bits=8):
    """Activations for the integer matmuls (kernels' matmul_q8, matmul_q16): float32 x [n, cols], cols a
    multiple of 32 -> (q int8 or int16 [n, cols], d float32 [n, cols/32], s float32 [n, cols/32]),
    x ~ d*q per block.

    Per block of 32: d = amax/qmax (qmax = 127 for 8 bits, 32767 for 16), q = rint(x * (1/d)) (halves
    to even), s = d * sum(q), every step a float32 operation as in csrc (so the values match exactly).
    A block with d below the smallest normal float32 (1/d would overflow) is all zeros: d = 0, q = 0,
    s = 0. The scale stays float32, where llama.cpp's q8_0 / q8_1 round it to fp16. Non-finite x:
    unspecified result. (csrc stores q16 blocks with each group of 4 reordered; q here is in order.)
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype != np.float32:
        raise ValueError(f"x must be 2-D float32, got shape {x.shape} dtype {x.dtype}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    n, cols = x.shape
    if cols % 32:
        raise ValueError(f"x has {cols} columns, not a multiple of 32")
    qmax, qdtype = (np.float32(127), np.int8) if bits == 8 else (np.float32(32767), np.int16)
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, initial=np.float32(0)) / qmax
    d[d < np.finfo(np.float32).tiny] = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
        q = np.rint(b * inv[:, None])
    q = np.nan_to_num(q, nan=0, posinf=0, neginf=0).astype(qdtype)
    s = d * q.sum(axis=1, dtype=np.int32).astype(np.float32)
    return q.reshape(n, cols), d.reshape(n, cols // 32), s.reshape(n, cols // 32)


def dequantize_blocks(blocks, qtype):
    """Blocks of a block type, uint8 [nb, block_bytes] -> float32 [nb, block] (for convert/kquants.py,
    which decodes the GGUF types minigpt reads; these are the K-quants it also stores)."""
    block, block_bytes = _check_qtype(qtype)
    if qtype in _FLOAT_DTYPES or blocks.dtype != np.uint8 or blocks.ndim != 2 or blocks.shape[1] != block_bytes:
        raise ValueError(f"{qtype} blocks must be uint8 [nb, {block_bytes}], got {blocks.dtype} {blocks.shape}")
    return _DEQUANTIZE[qtype](np.ascontiguousarray(blocks))


def dequantize(w, qtype, cols=None):
    """Stored weight -> float32 [rows, cols].

    w is what quantize() returns (2-D), or raw uint8 bytes of that form, 1-D or 2-D. `cols` is the
    logical row length; it is required for a 1-D w and checked against w otherwise.
    """
    block, block_bytes = _check_qtype(qtype)
    w = np.asarray(w)
    if qtype in _FLOAT_DTYPES:
        want = _FLOAT_DTYPES[qtype]
        if w.dtype == np.uint8 and w.ndim >= 1:
            if w.shape[-1] % want.itemsize:
                raise ValueError(f"a {qtype} row of {w.shape[-1]} bytes is not a multiple of {want.itemsize}")
            w = np.ascontiguousarray(w).view(want)  # raw bytes of a float tensor
        if w.dtype != want:
            raise ValueError(f"a {qtype} weight must have dtype {want} (or uint8 bytes), got {w.dtype}")
        if w.ndim == 1:
            w = w.reshape(-1, _positive_cols(cols))
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D, got shape {w.shape}")
        if cols is not None and w.shape[1] != int(cols):
            raise ValueError(f"cols={cols} does not match the weight's {w.shape[1]} columns")
        return w.astype(np.float32, copy=False)   # f32 weights: no copy (the reference path reads them per token)

    if w.dtype != np.uint8:
        raise ValueError(f"a {qtype} weight must have dtype uint8, got {w.dtype}")
    if w.ndim == 1:
        nbytes = row_bytes(qtype, _positive_cols(cols))
        if w.size % nbytes:
            raise ValueError(f"{w.size} bytes is not a whole number of {qtype} rows of cols={cols}")
        w = w.reshape(-1, nbytes)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D, got shape {w.shape}")
    if w.shape[1] % block_bytes:
        raise ValueError(f"a {qtype} row of {w.shape[1]} bytes is not a multiple of {block_bytes}")
    n_cols = w.shape[1] // block_bytes * block
    if cols is not None and int(cols) != n_cols:
        raise ValueError(f"cols={cols} does not match the weight's {n_cols} columns")
    blocks = np.ascontiguousarray(w).reshape(-1, block_bytes)
    return _DEQUANTIZE[qtype](blocks).reshape(w.shape[0], n_cols)


# --- KV cache rows -------------------------------------------------------------------------------
# How a KV cache (minigpt/engine/cache.py) stores a key or value row of head_dim floats; the compiled
# decoder and attention (csrc/ops.h enum mg_kv_type) read and write the same bytes:
#   f32   float32 [head_dim]
#   f16   float16 [head_dim] (IEEE half, rounded to nearest even)
#   q8_0  uint8 [head_dim + head_dim // 8]: int8 q[head_dim], then float32 d[head_dim // 32] (little-endian),
#         x ~ d * q per block of 32, rounded as the int8 activations are (quantize_act)

KV_TYPES = ("f32", "f16", "q8_0")


def kv_row(kv_type, head_dim):
    """(dtype, values per stored row) of a cache row of head_dim floats."""
    if kv_type == "q8_0":
        if head_dim % 32:
            raise ValueError(f"a q8_0 cache needs head_dim a multiple of 32, got {head_dim}")
        return np.dtype(np.uint8), head_dim + head_dim // 8
    return np.dtype(np.float16 if kv_type == "f16" else np.float32), head_dim


def kv_type_of(a, head_dim):
    """The kv_type of stored rows a [..., row] of head_dim floats, from its dtype and row width;
    ValueError if they are none of KV_TYPES'."""
    row = a.shape[-1] if a.ndim else -1
    if a.dtype == np.float32 and row == head_dim:
        return "f32"
    if a.dtype == np.float16 and row == head_dim:
        return "f16"
    if a.dtype == np.uint8 and head_dim % 32 == 0 and row == head_dim + head_dim // 8:
        return "q8_0"
    raise ValueError(f"a cache of {a.dtype} rows of {row} is not one of head_dim {head_dim}: float32 or "
                     f"float16 [..., {head_dim}], or q8_0 uint8 [..., {head_dim + head_dim // 8}]")


def kv_encode(x, kv_type):
    """float32 x [..., head_dim] -> the rows a cache of kv_type stores (the NumPy twin of the decoder's store)."""
    x = np.asarray(x, dtype=np.float32)
    if kv_type == "f32":
        return x.copy()
    if kv_type == "f16":
        return x.astype(np.float16)
    hd = x.shape[-1]
    kv_row(kv_type, hd)
    q, d, _ = quantize_act(np.ascontiguousarray(x.reshape(-1, hd)), 8)
    rows = np.concatenate([q.view(np.uint8), d.astype("<f4").view(np.uint8)], axis=1)
    return rows.reshape(x.shape[:-1] + (hd + hd // 8,))


def kv_decode(a, kv_type, head_dim):
    """Stored rows [..., row] of a cache of kv_type -> float32 [..., head_dim], exactly what attention reads."""
    if kv_type != "q8_0":
        return np.asarray(a).astype(np.float32)
    a = np.ascontiguousarray(a)
    q = a[..., :head_dim].view(np.int8).astype(np.float32)
    d = a[..., head_dim:].view("<f4").astype(np.float32)
    return (q.reshape(q.shape[:-1] + (-1, 32)) * d[..., None]).reshape(q.shape)
