"""The numba backend's decode dots: matmul and matmul_q8 below NI inputs, one stored row at a time.

Float32 x (matmul): each block's codes are widened to float32, multiplied with x's 32 values and added,
scaled by d_w, into a 32-lane accumulator; the row's lanes are summed once, pairwise, at its end:
    q8_0, q4_0, q5_0: sum_b d_w sum_j c_j x_j      q4_1, q5_1: the same over the codes + sum_b m_w sum(x_b)
int8 x (matmul_q8): x is quantized per block of 32 exactly as quant.quantize_act (q int8, d, s = d * sum(q)); each block
of a stored row is dotted with x's codes in integers, exact, and scaled by d_w d_x:
    q8_0: sum_b d_w d_x sum_j q_w q_x   (products summed in pairs, into a 16-lane float accumulator)
    q4_0: sum_b d_w d_x sum_j nib q_x - sum_b 8 d_w s_x      (q5_0: 5-bit codes, - 16 d_w s_x)
    q4_1: sum_b d_w d_x sum_j nib q_x + sum_b m_w s_x        (q5_1: 5-bit codes)
The q5 codes are the nibbles with bit j of the block's u32 qh put in as bit 4 of code j.
The K-quants (q4_k, q6_k) have plain numba loops instead, over float x (matmul_q8 gives them x rounded
to its int8 blocks, d * q): per sub-block, (d*sc) * sum q x - (dmin*m) * sum x (q4_k) or (d*sc) * sum
(q - 32) x (q6_k), summed in element order, with d and dmin decoded once per weight (numba_._scales).
For nibbles each block's integer dot is summed whole, unsigned by signed bytes: LLVM lowers that add
reduction to a few instructions (vpdpbusd with VNNI), shorter than any lane-wise form of it found.
Each row is one LLVM loop written as vector IR (numba widens int32 sums to int64, which LLVM then leaves
scalar, and does not vectorize float dots over numba arrays). Every row is summed by the same code in
the same order: the result depends on neither the thread count nor the call.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from minigpt import quant

Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K = (
    quant.QTYPES[n].code for n in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k"))
QK = 32
PREFETCH = 1024  # bytes ahead in the weight rows
NR = 4  # rows per thread chunk granule, as numba_.NR

_JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy", boundscheck=False)
_TINY = np.float32(np.finfo(np.float32).tiny)


@njit(**_JIT)
def quantize(x, q, d, s):
    """x float32 [n, cols] -> q int8 [n, cols], d, s float32 [n, cols / QK], as quant.quantize_act
    (float32 steps: d = amax/127, q = rint(x * (1/d)); d below the smallest normal: zeros)."""
    for i in range(x.shape[0]):
        for b in range(x.shape[1] // QK):
            o = QK * b
            amax = np.float32(0)
            for j in range(QK):
                a = abs(x[i, o + j])
                amax = a if a > amax else amax
            db = amax / np.float32(127)
            if db < _TINY:
                db = np.float32(0)
            inv = np.float32(1) / db if db != 0 else np.float32(0)
            total = 0
            for j in range(QK):
                v = np.rint(x[i, o + j] * inv)
                c = np.int32(v) if np.isfinite(v) else np.int32(0)
                q[i, o + j] = c
                total += c
            d[i, b] = db
            s[i, b] = db * np.float32(total)


# --- the row dots, as LLVM vector IR ----------------------------------------------------------------
# One loop per row over its blocks, on whole 2-D arrays with the row and input indices: a numba slice
# per row (w[r], d[r], x[i], ...) costs an atomic incref and decref each, ~30 ns a row, as much as
# the head's dots themselves. Each block adds its products lane-wise into a vector accumulator that is
# summed once, at the end of the row (a horizontal sum per block would double the cost).

_I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V16I8, _V32I8, _V32I16 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 32), ir.VectorType(_I16, 32)
_V16I32, _V32I32 = ir.VectorType(_I32, 16), ir.VectorType(_I32, 32)
_V16F32, _V32F32 = ir.VectorType(_F32, 16), ir.VectorType(_F32, 32)


def _lanes(*idx):
    return ir.Constant(ir.VectorType(_I32, len(idx)), list(idx))


def _splat(builder, v, vty):
    # scalar v -> vty with v in every lane
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, _lanes(*[0] * vty.count))


def _fmuladd(builder, a, b, c):
    # a * b + c, fused where the CPU has FMA (llvm.fmuladd: the choice is fixed per compiled kernel)
    name = f"llvm.fmuladd.v{a.type.count}f32" if isinstance(a.type, ir.VectorType) else "llvm.fmuladd.f32"
    mod = builder.module
    fn = mod.globals.get(name) or ir.Function(mod, ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(fn, [a, b, c])


def _prefetch(builder, p):
    # a read hint for the byte at p, non-temporal (never faults, any address): the weights stream from
    # memory once per token; the head's 30 MB then reads at ~17 GB/s instead of ~13
    name, ptr_t = "llvm.prefetch.p0i8", _I8.as_pointer()
    mod = builder.module
    fn = mod.globals.get(name) or ir.Function(mod, ir.FunctionType(ir.VoidType(), [ptr_t, _I32, _I32, _I32]), name)
    builder.call(fn, [builder.bitcast(p, ptr_t), ir.Constant(_I32, 0), ir.Constant(_I32, 0), ir.Constant(_I32, 1)])


def _fsum(builder, v):
    # <n x float> -> the sum of its lanes, pairwise, halves first (a fixed order)
    while v.type.count > 1:
        k = v.type.count // 2
        v = builder.fadd(builder.shuffle_vector(v, v, _lanes(*range(k))),
                         builder.shuffle_vector(v, v, _lanes(*range(k, 2 * k))))
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _reduce_add(builder, v):
    # <32 x i32> -> the sum of its lanes, i32 (exact here: |sum| < 2^31)
    name = "llvm.vector.reduce.add.v32i32"
    mod = builder.module
    fn = mod.globals.get(name) or ir.Function(mod, ir.FunctionType(_I32, [v.type]), name)
    return builder.call(fn, [v])


def _madd(builder, a, b):
    # a, b: <32 x i16> -> <16 x i32>, lane k: a_k b_k + a_k+16 b_k+16, exact
    lo, hi = _lanes(*range(16)), _lanes(*range(16, 32))
    prod = [builder.mul(builder.sext(builder.shuffle_vector(a, a, k), _V16I32),
                        builder.sext(builder.shuffle_vector(b, b, k), _V16I32)) for k in (lo, hi)]
    return builder.add(*prod)


def _row_intrinsic(code, int8):
    """The row dot of one block type: (w uint8 [rows, row_bytes], r, d, m float32 [rows, nb],
    x [n, cols], xd, xs float32 [n, nb], i) -> float32, stored row r . input i (the module docstring's
    sums). Float x (int8=False): x float32, xd unused; 32 lanes. int8 x: x the int8 codes; q8_0 in 16
    lanes, 4- and 5-bit codes one scalar per block. m_w s_x (q4_1, q5_1) and -8 d_w s_x, -16 d_w s_x
    (q4_0, q5_0; int8 x) are summed apart."""
    # bytes per block, where the nibbles start, what float x subtracts from a code, the bias per d (int8 x)
    bb, skip, off, bias = {Q8_0: (34, 2, 0, None), Q4_0: (18, 2, 8, -8.0), Q4_1: (20, 4, 0, None),
                           Q5_0: (22, 6, 16, -16.0), Q5_1: (24, 8, 0, None)}[code]
    off = 0 if int8 else off   # int8 x dots the codes as stored; the bias takes the offset out
    q5 = code in (Q5_0, Q5_1)
    has_m = code in (Q4_1, Q5_1)
    whole = int8 and code != Q8_0  # the block's integer dot summed to a scalar

    def codegen(context, builder, sig, args):
        w, r, d, m, x, xd, xs, i = args
        arrays = dict(zip(("w", "d", "m", "x", "xd", "xs"), zip(sig.args[:1] + sig.args[2:7], (w, d, m, x, xd, xs))))
        arrays = {k: (t, context.make_array(t)(context, builder, v)) for k, (t, v) in arrays.items()}

        def ptr(k, row, col, vty=None):  # &k[row, col], as a vty* if given
            t, a = arrays[k]
            p = cgutils.get_item_pointer2(context, builder, a.data, cgutils.unpack_tuple(builder, a.shape, 2),
                                          cgutils.unpack_tuple(builder, a.strides, 2), t.layout, [row, col])
            return builder.bitcast(p, vty.as_pointer()) if vty else p

        def block(b, acc, macc):  # block b's dots added into the accumulators
            at = builder.add(builder.mul(b, ir.Constant(_I64, bb)), ir.Constant(_I64, skip))
            _prefetch(builder, builder.gep(ptr("w", r, at), [ir.Constant(_I64, PREFETCH)]))
            if code == Q8_0:
                codes = builder.load(ptr("w", r, at, _V32I8), align=1)
            else:  # the 16 bytes' low nibbles, then their high ones (q5: | bit j of qh << 4), minus off
                v16 = builder.load(ptr("w", r, at, _V16I8), align=1)
                lo = builder.and_(v16, ir.Constant(_V16I8, [15] * 16))
                hi = builder.lshr(v16, ir.Constant(_V16I8, [4] * 16))
                codes = builder.shuffle_vector(lo, hi, _lanes(*range(32)))
                if q5:
                    qat = builder.sub(at, ir.Constant(_I64, 4))
                    qh = builder.load(builder.bitcast(ptr("w", r, qat), _I32.as_pointer()), align=1)
                    bits = builder.lshr(_splat(builder, qh, _V32I32), ir.Constant(_V32I32, list(range(32))))
                    bits = builder.trunc(builder.and_(bits, ir.Constant(_V32I32, [1] * 32)), _V32I8)
                    codes = builder.or_(codes, builder.shl(bits, ir.Constant(_V32I8, [4] * 32)))
                codes = builder.sub(codes, ir.Constant(_V32I8, [off] * 32))
            xat = builder.mul(b, ir.Constant(_I64, QK))
            scale = builder.load(ptr("d", r, b))
            if whole:
                q = builder.load(ptr("x", i, xat, _V32I8), align=1)
                dots = _reduce_add(builder, builder.mul(builder.zext(codes, _V32I32), builder.sext(q, _V32I32)))
                dots = builder.sitofp(dots, _F32)
                scale = builder.fmul(scale, builder.load(ptr("xd", i, b)))
            elif int8:
                q = builder.load(ptr("x", i, xat, _V32I8), align=1)
                dots = _madd(builder, builder.sext(codes, _V32I16), builder.sext(q, _V32I16))
                dots = builder.sitofp(dots, acc.type.pointee)
                scale = builder.fmul(scale, builder.load(ptr("xd", i, b)))
            else:
                dots = builder.fmul(builder.sitofp(codes, _V32F32), builder.load(ptr("x", i, xat, _V32F32), align=4))
            builder.store(_fmuladd(builder, dots, scale if whole else _splat(builder, scale, dots.type),
                                   builder.load(acc)), acc)
            if has_m or whole:
                if has_m:
                    mw = builder.load(ptr("m", r, b))
                else:
                    mw = builder.fmul(ir.Constant(_F32, bias), builder.load(ptr("d", r, b)))
                builder.store(_fmuladd(builder, mw, builder.load(ptr("xs", i, b)), builder.load(macc)), macc)

        nb = cgutils.unpack_tuple(builder, arrays["d"][1].shape, 2)[1]
        vty = _F32 if whole else (_V16F32 if int8 else _V32F32)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vty, 0.0 if whole else [0.0] * vty.count))
        macc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        with cgutils.for_range(builder, nb) as loop:
            block(loop.index, acc, macc)
        total = builder.load(acc) if whole else _fsum(builder, builder.load(acc))
        return builder.fadd(total, builder.load(macc)) if has_m or whole else total

    def typer(typingctx, w, r, d, m, x, xd, xs, i):
        if any(a.layout != "C" for a in (w, d, m, x, xd, xs)):  # the vector loads need contiguous rows
            return None
        return types.float32(w, r, d, m, x, xd, xs, i), codegen
    return intrinsic(typer)


_CODES = (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
_frow_q8_0, _frow_q4_0, _frow_q4_1, _frow_q5_0, _frow_q5_1 = (_row_intrinsic(c, False) for c in _CODES)
_row_q8_0, _row_q4_0, _row_q4_1, _row_q5_0, _row_q5_1 = (_row_intrinsic(c, True) for c in _CODES)


# --- float32 x: matmul ---------------------------------------------------------------------------

@njit(**_JIT)
def _frows(x, xs, w, code, d, m, out, r_lo, r_hi):
    """out[:, r_lo:r_hi] = x @ W[r_lo:r_hi]^T; w: uint8 [rows, row_bytes]; xs: x's block sums (q4_1, q5_1)."""
    for r in range(r_lo, r_hi):
        for i in range(x.shape[0]):
            if code == Q8_0:
                out[i, r] = _frow_q8_0(w, r, d, m, x, xs, xs, i)
            elif code == Q4_0:
                out[i, r] = _frow_q4_0(w, r, d, m, x, xs, xs, i)
            elif code == Q4_1:
                out[i, r] = _frow_q4_1(w, r, d, m, x, xs, xs, i)
            elif code == Q5_0:
                out[i, r] = _frow_q5_0(w, r, d, m, x, xs, xs, i)
            else:
                out[i, r] = _frow_q5_1(w, r, d, m, x, xs, xs, i)


@njit(**_JIT)
def fmatmul_serial(x, xs, w, code, d, m, out, n_chunks):
    _frows(x, xs, w, code, d, m, out, 0, w.shape[0])


@njit(parallel=True, **_JIT)
def fmatmul_parallel(x, xs, w, code, d, m, out, n_chunks):
    rows = w.shape[0]
    step = ((rows + n_chunks - 1) // n_chunks + NR - 1) // NR * NR
    for c in prange(n_chunks):
        _frows(x, xs, w, code, d, m, out, min(rows, c * step), min(rows, (c + 1) * step))


# --- int8 x: matmul_q8 ---------------------------------------------------------------------------

@njit(**_JIT)
def _rows(xq, xd, xs, w, code, d, m, out, r_lo, r_hi):
    """out[:, r_lo:r_hi] = dequant(q8(x)) @ W[r_lo:r_hi]^T; w: uint8 [rows, row_bytes]."""
    for r in range(r_lo, r_hi):
        for i in range(xq.shape[0]):
            if code == Q8_0:
                out[i, r] = _row_q8_0(w, r, d, m, xq, xd, xs, i)
            elif code == Q4_0:
                out[i, r] = _row_q4_0(w, r, d, m, xq, xd, xs, i)
            elif code == Q4_1:
                out[i, r] = _row_q4_1(w, r, d, m, xq, xd, xs, i)
            elif code == Q5_0:
                out[i, r] = _row_q5_0(w, r, d, m, xq, xd, xs, i)
            else:
                out[i, r] = _row_q5_1(w, r, d, m, xq, xd, xs, i)


@njit(**_JIT)
def matmul_serial(xq, xd, xs, w, code, d, m, out, n_chunks):
    _rows(xq, xd, xs, w, code, d, m, out, 0, w.shape[0])


@njit(parallel=True, **_JIT)
def matmul_parallel(xq, xd, xs, w, code, d, m, out, n_chunks):
    rows = w.shape[0]
    step = ((rows + n_chunks - 1) // n_chunks + NR - 1) // NR * NR
    for c in prange(n_chunks):
        _rows(xq, xd, xs, w, code, d, m, out, min(rows, c * step), min(rows, (c + 1) * step))


# --- the K-quants: one row dot per super-block loop, float x ------------------------------------------

# No fastmath here: LLVM would vectorize these float sums in an order that depends on where the row dot
# is inlined (serial or parallel build), and a row's result must not depend on the thread count.
_JIT_K = dict(cache=True, fastmath=False, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_JIT_K)
def _krow_q4_k(w, r, d, m, x, i):
    """stored q4_k row r . x[i]; d, m: the super-blocks' d and dmin [rows, nb] (layout: quant_k.q4_k_fields)"""
    acc = np.float32(0)
    for b in range(d.shape[1]):
        p, o = 144 * b, 256 * b
        for c in range(4):      # qs bytes 32c..32c+31: sub-blocks 2c (low nibbles) and 2c + 1 (high)
            j0, j1 = 2 * c, 2 * c + 1
            if c < 2:
                sc0, mn0 = np.int32(w[r, p + 4 + j0]) & 63, np.int32(w[r, p + 8 + j0]) & 63
                sc1, mn1 = np.int32(w[r, p + 4 + j1]) & 63, np.int32(w[r, p + 8 + j1]) & 63
            else:
                a0, a1 = np.int32(w[r, p + 8 + j0]), np.int32(w[r, p + 8 + j1])
                sc0 = (a0 & 15) | ((np.int32(w[r, p + j0]) >> 6) << 4)
                mn0 = (a0 >> 4) | ((np.int32(w[r, p + 4 + j0]) >> 6) << 4)
                sc1 = (a1 & 15) | ((np.int32(w[r, p + j1]) >> 6) << 4)
                mn1 = (a1 >> 4) | ((np.int32(w[r, p + 4 + j1]) >> 6) << 4)
            base, e0, e1 = p + 16 + 32 * c, o + 32 * j0, o + 32 * j1
            s0 = np.float32(0)
            s1 = np.float32(0)
            x0 = np.float32(0)
            x1 = np.float32(0)
            for l in range(32):
                v = np.int32(w[r, base + l])
                a, bx = x[i, e0 + l], x[i, e1 + l]
                s0 += np.float32(v & 15) * a
                s1 += np.float32(v >> 4) * bx
                x0 += a
                x1 += bx
            acc += (d[r, b] * np.float32(sc0) * s0 - m[r, b] * np.float32(mn0) * x0
                    + d[r, b] * np.float32(sc1) * s1 - m[r, b] * np.float32(mn1) * x1)
    return acc


@njit(**_JIT_K)
def _q6_scale(w, r, at):
    v = np.int32(w[r, at])
    return np.float32(v - 256 if v > 127 else v)


@njit(**_JIT_K)
def _krow_q6_k(w, r, d, x, i):
    """stored q6_k row r . x[i]; d: the super-blocks' d [rows, nb] (layout: quant_k.q6_k_fields)"""
    acc = np.float32(0)
    for b in range(d.shape[1]):
        p, o = 210 * b, 256 * b
        for h in range(2):
            for half in range(2):   # elements 128h + 32k + l, l in [16 half, 16 half + 16), for k < 4
                s0 = np.float32(0)
                s1 = np.float32(0)
                s2 = np.float32(0)
                s3 = np.float32(0)
                e = o + 128 * h + 16 * half
                for l in range(16 * half, 16 * half + 16):
                    lo0, lo1 = np.int32(w[r, p + 64 * h + l]), np.int32(w[r, p + 64 * h + 32 + l])
                    hb = np.int32(w[r, p + 128 + 32 * h + l])
                    t = l - 16 * half
                    s0 += np.float32(((lo0 & 15) | ((hb & 3) << 4)) - 32) * x[i, e + t]
                    s1 += np.float32(((lo1 & 15) | (((hb >> 2) & 3) << 4)) - 32) * x[i, e + 32 + t]
                    s2 += np.float32(((lo0 >> 4) | (((hb >> 4) & 3) << 4)) - 32) * x[i, e + 64 + t]
                    s3 += np.float32(((lo1 >> 4) | ((hb >> 6) << 4)) - 32) * x[i, e + 96 + t]
                sub = p + 192 + 8 * h + half    # sub-block 8h + 2k + half has scale byte 192 + that
                acc += d[r, b] * (_q6_scale(w, r, sub) * s0 + _q6_scale(w, r, sub + 2) * s1
                                  + _q6_scale(w, r, sub + 4) * s2 + _q6_scale(w, r, sub + 6) * s3)
    return acc


@njit(**_JIT)
def _krows(x, w, code, d, m, out, r_lo, r_hi):
    for r in range(r_lo, r_hi):
        for i in range(x.shape[0]):
            out[i, r] = _krow_q4_k(w, r, d, m, x, i) if code == Q4_K else _krow_q6_k(w, r, d, x, i)


@njit(**_JIT)
def kmatmul_serial(x, w, code, d, m, out, n_chunks):
    _krows(x, w, code, d, m, out, 0, w.shape[0])


@njit(parallel=True, **_JIT)
def kmatmul_parallel(x, w, code, d, m, out, n_chunks):
    rows = w.shape[0]
    step = ((rows + n_chunks - 1) // n_chunks + NR - 1) // NR * NR
    for c in prange(n_chunks):
        _krows(x, w, code, d, m, out, min(rows, c * step), min(rows, (c + 1) * step))
