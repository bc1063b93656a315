"""Decoders for the ggml K-quants minigpt reads: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

A GGUF tensor in Q2_K, Q3_K or Q5_K is decoded to float32 on import and requantized to a minigpt type
(minigpt.quant). Q4_K and Q6_K are minigpt's q4_k and q6_k, stored as they are; their decoders
(minigpt.quant_k, through minigpt.quant) serve here too, as minigpt.quant's do for Q5_0 and Q5_1, also
stored natively. Layouts follow the GGUF / ggml specification; all fields are little-endian, fp16
fields are IEEE half. Each decoder maps uint8 blocks [nb, block_bytes] -> float32 [nb, block] and is
vectorized over blocks. Element i of a block is written x[i].

K-quants (256 weights, "super-blocks"): one fp16 d (and for the asymmetric types an fp16 dmin) for
the whole block, scaled per sub-block by small integers (16 sub-blocks of 16, or 8 of 32).

Arithmetic is float32 in the order the spec writes it (scale = d * sub_scale, then scale * q, then
- min), so results match ggml's reference dequantizers bit for bit.
"""

import numpy as np

from ..quant import dequantize_blocks
from .. import quant_k
from ..quant_k import k4_scales

# name -> (block_size, block_bytes)
TYPES = {
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}

_CHUNK_BLOCKS = 1 << 14   # blocks decoded per step: bounds temporaries to a few tens of MB


# --- field helpers -------------------------------------------------------------------------------

# the fp16 and bit-field readers of the stored K-quants (minigpt/quant_k.py), shared, not copied
_f16, _bits = quant_k._f16_field, quant_k._bits


# --- K-quants: 256-weight super-blocks -----------------------------------------------------------

def dequantize_q2_k(blk):
    # bytes 0-15 scales: sub-block s (16 weights) has scale = byte s & 15, min = byte s >> 4
    #       16-79 qs: 2-bit codes; element i = 128h + 32j + l (h < 2, j < 4, l < 32) is
    #             bits 2j..2j+1 of qs byte 32h + l
    #       80-81 fp16 d | 82-83 fp16 dmin
    # x[i] = (d * scale[i/16]) * q[i] - (dmin * min[i/16])
    nb = blk.shape[0]
    sc = blk[:, 0:16]
    q = _bits(blk[:, 16:80].reshape(nb * 2, 32), [0, 2, 4, 6], 2).reshape(nb, 16, 16)
    dl = _f16(blk, 80) * (sc & np.uint8(0x0F)).astype(np.float32)   # [nb, 16]
    ml = _f16(blk, 82) * (sc >> np.uint8(4)).astype(np.float32)
    return (dl[:, :, None] * q.astype(np.float32) - ml[:, :, None]).reshape(nb, 256)


def dequantize_q3_k(blk):
    # bytes 0-31 hmask: the third bit of element i = 128h + 32j + l (h < 2, j < 4, l < 32) is
    #            bit 4h + j of hmask byte l; a clear bit subtracts 4
    #       32-95 qs: low 2 bits, as in Q2_K (bits 2j..2j+1 of qs byte 32h + l)
    #       96-107 scales: 16 six-bit scales; scale s has low 4 bits = (byte s%8 >> 4*(s//8)) & 15
    #             and high 2 bits = (byte 8 + s%4 >> 2*(s//4)) & 3; stored with an offset of 32
    #       108-109 fp16 d
    # x[i] = (d * (scale[i/16] - 32)) * (q_low[i] - (high bit clear ? 4 : 0))
    nb = blk.shape[0]
    low = _bits(blk[:, 32:96].reshape(nb * 2, 32), [0, 2, 4, 6], 2).reshape(nb, 2, 4, 32)
    high = _bits(blk[:, 0:32], range(8), 1).reshape(nb, 2, 4, 32)   # bit 4h + j -> [h, j]
    q = low.astype(np.int8) - np.where(high == 0, np.int8(4), np.int8(0))
    sb = blk[:, 96:108]
    s = np.arange(16)
    sc_low = (sb[:, s % 8] >> (4 * (s // 8)).astype(np.uint8)) & np.uint8(0x0F)
    sc_high = (sb[:, 8 + s % 4] >> (2 * (s // 4)).astype(np.uint8)) & np.uint8(3)
    scale = (sc_low | (sc_high << np.uint8(4))).astype(np.float32) - np.float32(32)   # [nb, 16]
    dl = _f16(blk, 108) * scale
    return (dl[:, :, None] * q.reshape(nb, 16, 16).astype(np.float32)).reshape(nb, 256)


def dequantize_q4_k(blk):
    # minigpt's q4_k, byte for byte (layout: minigpt.quant_k.q4_k_fields)
    return dequantize_blocks(blk, "q4_k")


def dequantize_q5_k(blk):
    # bytes 0-1 fp16 d | 2-3 fp16 dmin | 4-15 scales (as Q4_K: quant_k.k4_scales)
    #       16-47 qh: the fifth bit of element i = 32k + l (k < 8, l < 32) is bit k of qh byte l
    #       48-175 qs: the low 4 bits, laid out as Q4_K's
    # x[i] = (d * scale[i/32]) * q[i] - (dmin * min[i/32])
    nb = blk.shape[0]
    scale, mins = k4_scales(blk[:, 4:16])
    low = _bits(blk[:, 48:176].reshape(nb * 4, 32), [0, 4], 4).reshape(nb, 8, 32)
    high = _bits(blk[:, 16:48], range(8), 1)                                # [nb, 8, 32]
    q = low | (high << np.uint8(4))
    dl = _f16(blk, 0) * scale.astype(np.float32)
    ml = _f16(blk, 2) * mins.astype(np.float32)
    return (dl[:, :, None] * q.astype(np.float32) - ml[:, :, None]).reshape(nb, 256)


def dequantize_q6_k(blk):
    # minigpt's q6_k, byte for byte (layout: minigpt.quant_k.q6_k_fields)
    return dequantize_blocks(blk, "q6_k")


_DEQUANTIZE = {
    "Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k,
    "Q4_K": dequantize_q4_k, "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k,
}


def dequantize(data, type_name):
    """Raw bytes of a tensor in `type_name` (a key of TYPES), uint8 [rows, row_bytes] -> float32 [rows, cols]."""
    if type_name not in TYPES:
        raise ValueError(f"unknown ggml type {type_name!r}; expected one of {', '.join(TYPES)}")
    block, block_bytes = TYPES[type_name]
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % block_bytes:
        raise ValueError(f"{type_name} data must be uint8 [rows, k*{block_bytes}], got {data.dtype} {data.shape}")
    rows, cols = data.shape[0], data.shape[1] // block_bytes * block
    blocks = np.ascontiguousarray(data).reshape(-1, block_bytes)
    out = np.empty((blocks.shape[0], block), dtype=np.float32)
    fn = _DEQUANTIZE[type_name]
    for b0 in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[b0:b0 + _CHUNK_BLOCKS] = fn(blocks[b0:b0 + _CHUNK_BLOCKS])
    return out.reshape(rows, cols)
