"""The K-quants minigpt stores, q4_k and q6_k: ggml's Q4_K and Q6_K super-blocks of 256 elements, byte
for byte. Their bit layouts, decoders and ggml's reference quantizers (quantize_row_q4_K_ref,
quantize_row_q6_K_ref), in NumPy and vectorized over blocks; minigpt.quant registers them in its table
and API. Block functions map uint8 [nb, block_bytes] <-> float32 [nb, 256].
"""

import numpy as np


def _f16_field(blocks, start):
    # blocks: uint8 [nb, block_bytes] -> float32 [nb, 1] read from bytes start, start+1 (as quant's)
    return np.ascontiguousarray(blocks[:, start:start + 2]).view("<f2").astype(np.float32)


# --- K-quants: 256-element super-blocks, ggml's bit layouts ----------------------------------------

def _bits(bytes_, shifts, width):
    # bytes_: uint8 [nb, n] -> uint8 [nb, len(shifts), n]: (byte >> shift) & mask for each shift
    s = np.asarray(shifts, dtype=np.uint8)[None, :, None]
    return (bytes_[:, None, :] >> s) & np.uint8((1 << width) - 1)


def k4_scales(sc):
    """Q4_K / Q5_K sub-block scales and mins: 12 bytes uint8 [nb, 12] -> (scale, min), each uint8 [nb, 8]
    in 0..63.

    bytes 0-3:  scale j (j < 4) in bits 0-5; bits 6-7 are the high bits of scale j+4
    bytes 4-7:  min j (j < 4) in bits 0-5;   bits 6-7 are the high bits of min j+4
    bytes 8-11: low 4 bits of scale j+4 in bits 0-3, low 4 bits of min j+4 in bits 4-7
    """
    lo, mid, hi = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return scale, mins


def q4_k_fields(blk):
    """uint8 [nb, 144] -> d, dmin float32 [nb, 1]; sc, m uint8 [nb, 8]; q uint8 [nb, 8, 32] (sub-block, element).

    bytes 0-1 fp16 d | 2-3 fp16 dmin | 4-15 scales (k4_scales) | 16-143 qs: element i = 64c + 32n + l
    (c < 4, n < 2, l < 32) is nibble n (0 low, 1 high) of qs byte 32c + l; it is in sub-block i/32.
    """
    nb = blk.shape[0]
    sc, m = k4_scales(blk[:, 4:16])
    q = _bits(blk[:, 16:144].reshape(nb * 4, 32), [0, 4], 4).reshape(nb, 8, 32)
    return _f16_field(blk, 0), _f16_field(blk, 2), sc, m, q


def q6_k_fields(blk):
    """uint8 [nb, 210] -> d float32 [nb, 1]; sc int8 [nb, 16]; q int8 [nb, 16, 16] (sub-block, element),
    the codes minus 32 (-32..31).

    bytes 0-127 ql: low 4 bits; element i = 128h + 32k + l (h < 2, k < 4, l < 32) is nibble k//2 of
    ql byte 64h + 32(k%2) + l | 128-191 qh: its high 2 bits are bits 2k, 2k+1 of qh byte 128 + 32h + l
    | 192-207 scales: int8, one per sub-block of 16 | 208-209 fp16 d
    """
    nb = blk.shape[0]
    nib = _bits(blk[:, 0:128].reshape(nb * 4, 32), [0, 4], 4).reshape(nb, 2, 2, 2, 32)  # [h, k%2, k//2, l]
    low = nib.transpose(0, 1, 3, 2, 4).reshape(nb, 2, 4, 32)                            # [h, k, l]
    high = _bits(blk[:, 128:192].reshape(nb * 2, 32), [0, 2, 4, 6], 2).reshape(nb, 2, 4, 32)
    q = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    return _f16_field(blk, 208), blk[:, 192:208].view(np.int8), q.reshape(nb, 16, 16)


def dequantize_q4_k(blk):
    # float32 in ggml's order: d1 = d * sc, m1 = dmin * m, then d1 * q - m1
    d, dmin, sc, m, q = q4_k_fields(blk)
    dl, ml = d * sc.astype(np.float32), dmin * m.astype(np.float32)
    return (dl[:, :, None] * q.astype(np.float32) - ml[:, :, None]).reshape(-1, 256)


def dequantize_q6_k(blk):
    # float32 in ggml's order: (d * sc) * (q - 32)
    d, sc, q = q6_k_fields(blk)
    dl = d * sc.astype(np.float32)
    return (dl[:, :, None] * q.astype(np.float32)).reshape(-1, 256)


# --- K-quant quantizers: ggml's quantize_row_q4_K_ref / quantize_row_q6_K_ref, vectorized ----------
# Every loop of ggml that sums in float32 sums in element order here too (_seqsum), and every float
# step is a float32 operation in ggml's order, so the bytes are ggml's.

_F = np.float32


def _seqsum(a):
    # a: float32 [n, m] -> float32 [n], summed left to right as a C loop does (not pairwise)
    return np.add.accumulate(a, axis=1, dtype=np.float32)[:, -1]


def _nearest_int(v):
    # ggml's nearest_int (the 1.5 * 2^23 trick): halves to even, exact for |v| < 2^22
    return np.rint(v).astype(np.int32)


def _make_qkx2_quants(x, w, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20):
    """ggml's make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, false) on
    sub-blocks x, w: float32 [n, 32] -> (scale [n], the_min [n] = -min, L uint8 [n, 32])."""
    mn = np.minimum(x.min(axis=1), _F(0))
    mx = x.max(axis=1)
    sum_w, sum_x = _seqsum(w), _seqsum(w * x)
    flat = mx == mn                                   # every value the same (and >= 0... or all 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = _F(nmax) / (mx - mn)
        scale = _F(1) / iscale
        L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        diff = (scale[:, None] * L.astype(_F) + mn[:, None]) - x
        best = _seqsum(w * (diff * diff))
        for step in range(nstep + 1):   # ggml's loop reads min as it updates it, here too
            isc = ((_F(rmin) + _F(rdelta) * _F(step)) + _F(nmax)) / (mx - mn)
            la = np.clip(_nearest_int(isc[:, None] * (x - mn[:, None])), 0, nmax)
            lf = la.astype(_F)
            sum_l, sum_l2, sum_xl = _seqsum(w * lf), _seqsum((w * lf) * lf), _seqsum((w * lf) * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, _F(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            diff = (this_scale[:, None] * lf + this_min[:, None]) - x
            mad = _seqsum(w * (diff * diff))
            take = (D > 0) & (mad < best) & ~flat
            L = np.where(take[:, None], la, L)
            best = np.where(take, mad, best)
            scale = np.where(take, this_scale, scale)
            mn = np.where(take, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, _F(0), scale)
    return scale.astype(_F), (-mn).astype(_F), L.astype(np.uint8)


def quantize_q4_k(b):
    # b: float32 [nb, 256] -> uint8 [nb, 144]
    nb = b.shape[0]
    x = b.reshape(nb * 8, 32)
    av_x = np.sqrt(_seqsum(x * x) / _F(32))
    scales, mins, L = _make_qkx2_quants(x, av_x[:, None] + np.abs(x))
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), _F(0))
    max_min = np.maximum(mins.max(axis=1), _F(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, _F(63) / max_scale, _F(0))
        inv_min = np.where(max_min > 0, _F(63) / max_min, _F(0))
    # uint8_t ls = nearest_int(...) wraps a negative value before MIN(63, ls), as ggml's does
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales) & 255, 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins) & 255, 63).astype(np.uint8)
    xs = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # beyond fp16: inf, as ggml
        d16, dmin16 = (max_scale / _F(63)).astype("<f2"), (max_min / _F(63)).astype("<f2")
        d = d16.astype(_F)[:, None] * ls.astype(_F)                              # [nb, 8]
        dm = dmin16.astype(_F)[:, None] * lm.astype(_F)
        q = np.clip(_nearest_int((xs + dm[:, :, None]) / d[:, :, None]), 0, 15).astype(np.uint8)
    q = np.where((d == 0)[:, :, None], L.reshape(nb, 8, 32), q)                    # ggml keeps L there
    sc = np.empty((nb, 12), np.uint8)
    sc[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    sc[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << np.uint8(4))).reshape(nb, 128)            # sub-blocks 2c, 2c + 1
    return np.concatenate([d16[:, None].view(np.uint8), dmin16[:, None].view(np.uint8), sc, qs], axis=1)


def _make_qx_quants(x, nmax=32):
    """ggml's make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) on sub-blocks x: float32 [n, 16] ->
    (scale [n], L uint8 [n, 16] = l + nmax)."""
    ax = np.abs(x)
    imax = ax.argmax(axis=1)[:, None]                 # first of the largest, as the C strict '>'
    mx = np.take_along_axis(x, imax, axis=1)[:, 0]
    zero = ax.max(axis=1) < _F(1e-15)
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        def attempt(iscale):
            l = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
            lf = l.astype(_F)
            return l, _seqsum((w * x) * lf), _seqsum((w * lf) * lf)
        L, sumlx, suml2 = attempt(_F(-nmax) / mx)
        scale = np.where(suml2 != 0, sumlx / suml2, _F(0))
        best = scale * sumlx
        for step in [s for s in range(-9, 10) if s]:
            l, sumlx, suml2 = attempt(-(_F(nmax) + _F(0.1) * _F(step)) / mx)
            take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(take[:, None], l, L)
            scale = np.where(take, sumlx / suml2, scale)
            best = np.where(take, scale * sumlx, best)
    L = np.where(zero[:, None], -nmax, L)            # all zero: L = 0, i.e. l = -nmax
    return np.where(zero, _F(0), scale).astype(_F), (L + nmax).astype(np.uint8)


def quantize_q6_k(b):
    # b: float32 [nb, 256] -> uint8 [nb, 210]
    nb = b.shape[0]
    x = b.reshape(nb * 16, 16)
    scales, L = _make_qx_quants(x)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 16, 16)
    imax = np.abs(scales).argmax(axis=1)[:, None]
    max_scale = np.take_along_axis(scales, imax, axis=1)[:, 0]
    zero = np.abs(max_scale) < _F(1e-15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = _F(-128) / max_scale
        d16 = np.where(zero, _F(0), _F(1) / iscale).astype("<f2")
        ls = np.minimum(_nearest_int(iscale[:, None] * scales), 127)
        ls = np.where(zero[:, None], 0, ls).astype(np.int8)
        d = d16.astype(_F)[:, None] * ls.astype(_F)                               # [nb, 16]
        q = np.clip(_nearest_int(x.reshape(nb, 16, 16) / d[:, :, None]), -32, 31) + 32
    q = np.where((d == 0)[:, :, None], L, q).astype(np.uint8)
    q = np.where(zero[:, None, None], 0, q).reshape(nb, 2, 4, 32)                  # [h, k, l]
    ql = np.concatenate([q[:, :, 0] & 0x0F | (q[:, :, 2] & 0x0F) << 4,             # [nb, 2 (h), 2 (k%2), 32]
                         q[:, :, 1] & 0x0F | (q[:, :, 3] & 0x0F) << 4], axis=2).reshape(nb, 128)
    qh = (q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6).reshape(nb, 64)
    return np.concatenate([ql, qh, ls.view(np.uint8), d16[:, None].view(np.uint8)], axis=1)
