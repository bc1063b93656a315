"""The numba backend's decode dots: matmul and matmul_q8 below NI inputs, one stored row at a time.

Float32 x (matmul): each block's codes are widened to float32 and dotted with x's 32 values, the sum
taken pairwise in vector lanes (a fixed order), scaled once per block:
    q8_0, q4_0: d_w * sum(c_j x_j)          q4_1: d_w * sum(nib_j x_j) + m_w * sum(x_j)
int8 x (matmul_q8): x is quantized per block of 32 exactly as quant.quantize_act (q int8, d, s = d * sum(q)); each block
of a stored row is then dotted with x's codes in int32, exact, and scaled once:
    q8_0: d_w * d_x * sum(q_w q_x)          q4_0: d_w * d_x * sum((nib - 8) q_x)
    q4_1: d_w * d_x * sum(nib q_x) + m_w * s_x
The 32-element integer loops are plain reductions over loads, which LLVM vectorizes for the host CPU
(no stores in the loop, so no aliasing doubt), unlike float dots over numba arrays. Per-block float
sums run in block order: the result depends on neither the thread count nor the call.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

Q8_0, Q4_0, Q4_1 = 2, 3, 4
QK = 32
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


# --- the block dots, as LLVM vector IR: numba widens int32 sums to int64, which LLVM then leaves scalar

def _byte_ptr(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [idx])


def _reduce_dot(builder, a, b):
    # a, b: <32 x i32> -> their dot product, int64
    red = "llvm.vector.reduce.add.v32i32"
    mod = builder.module
    fn = mod.globals.get(red) or ir.Function(mod, ir.FunctionType(ir.IntType(32), [a.type]), red)
    return builder.sext(builder.call(fn, [builder.mul(a, b)]), ir.IntType(64))


_V32I8, _V16I8 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(8), 16)
_V32I32, _V32F32 = ir.VectorType(ir.IntType(32), 32), ir.VectorType(ir.FloatType(), 32)


@intrinsic
def _dot_q8(typingctx, w, iw, x, ix):
    """sum_j int8(w[iw + j]) * int8(x[ix + j]) for j < 32; w, x: 1-D uint8 or int8 arrays."""
    def codegen(context, builder, sig, args):
        vw, vx = (builder.load(builder.bitcast(_byte_ptr(context, builder, sig.args[k], args[k], args[k + 1]),
                                               _V32I8.as_pointer()), align=1) for k in (0, 2))
        return _reduce_dot(builder, builder.sext(vw, _V32I32), builder.sext(vx, _V32I32))
    return types.int64(w, iw, x, ix), codegen


@intrinsic
def _dot_q4(typingctx, w, iw, x, ix, off):
    """sum_j (nib_j - off) * int8(x[ix + j]) for j < 32: nib_j the low nibbles of w[iw:iw + 16], then
    the high ones (the q4_0 / q4_1 block order)."""
    def codegen(context, builder, sig, args):
        nib = _nibbles(context, builder, sig.args[0], args[0], args[1], args[4])
        px = builder.bitcast(_byte_ptr(context, builder, sig.args[2], args[2], args[3]), _V32I8.as_pointer())
        return _reduce_dot(builder, nib, builder.sext(builder.load(px, align=1), _V32I32))
    return types.int64(w, iw, x, ix, off), codegen


def _f32_ptr(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _V32F32.as_pointer())


def _fdot(builder, codes, xv):
    # codes <32 x i32>, xv <32 x float> -> sum(codes * xv), float32: lanes summed pairwise, halves first
    v = builder.fmul(builder.sitofp(codes, _V32F32), xv)
    width = 32
    while width > 1:
        width //= 2
        half = ir.VectorType(ir.FloatType(), width)
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
        v = builder.fadd(lo, hi)
        assert v.type == half
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _nibbles(context, builder, arrty, arr, idx, off):
    # the 32 nibbles of w[idx:idx + 16] (low ones first) minus off -> <32 x i32>
    p = builder.bitcast(_byte_ptr(context, builder, arrty, arr, idx), _V16I8.as_pointer())
    v16 = builder.load(p, align=1)
    lo = builder.and_(v16, ir.Constant(_V16I8, [15] * 16))
    hi = builder.lshr(v16, ir.Constant(_V16I8, [4] * 16))
    nib = builder.zext(builder.shuffle_vector(lo, hi, ir.Constant(_V32I32, list(range(32)))), _V32I32)
    ov = builder.insert_element(ir.Constant(_V32I32, ir.Undefined), builder.trunc(off, ir.IntType(32)),
                                ir.Constant(ir.IntType(32), 0))
    return builder.sub(nib, builder.shuffle_vector(ov, ov, ir.Constant(_V32I32, [0] * 32)))


@intrinsic
def _fdot_q8(typingctx, w, iw, x, ix):
    """sum_j int8(w[iw + j]) * x[ix + j] for j < 32; x: 1-D float32."""
    def codegen(context, builder, sig, args):
        vw = builder.load(builder.bitcast(_byte_ptr(context, builder, sig.args[0], args[0], args[1]),
                                          _V32I8.as_pointer()), align=1)
        xv = builder.load(_f32_ptr(context, builder, sig.args[2], args[2], args[3]), align=4)
        return _fdot(builder, builder.sext(vw, _V32I32), xv)
    return types.float32(w, iw, x, ix), codegen


@intrinsic
def _fdot_q4(typingctx, w, iw, x, ix, off):
    """sum_j (nib_j - off) * x[ix + j] for j < 32 (nibble order as _dot_q4); x: 1-D float32."""
    def codegen(context, builder, sig, args):
        nib = _nibbles(context, builder, sig.args[0], args[0], args[1], args[4])
        xv = builder.load(_f32_ptr(context, builder, sig.args[2], args[2], args[3]), align=4)
        return _fdot(builder, nib, xv)
    return types.float32(w, iw, x, ix, off), codegen


@njit(**_JIT)
def _frow(row, code, ds, ms, x, xs):
    """One stored row . float32 x [cols]; ds, ms: the row's block scales; xs: x's block sums (q4_1)."""
    total = np.float32(0)
    for b in range(xs.shape[0]):
        if code == Q8_0:
            total += ds[b] * _fdot_q8(row, 34 * b + 2, x, QK * b)
        elif code == Q4_0:
            total += ds[b] * _fdot_q4(row, 18 * b + 2, x, QK * b, 8)
        else:
            total += ds[b] * _fdot_q4(row, 20 * b + 4, x, QK * b, 0) + ms[b] * xs[b]
    return total


@njit(**_JIT)
def _frows(x, xs, w, code, d, m, out, r_lo, r_hi):
    for r in range(r_lo, r_hi):
        mr = m[r] if code == Q4_1 else d[r]  # d[r]: unused, any float32 row
        for i in range(x.shape[0]):
            out[i, r] = _frow(w[r], code, d[r], mr, x[i], xs[i])


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
def _row_q8_0(row, ds, xq, xd):
    """One q8_0 row (bytes) . one quantized input; ds: the row's block scales."""
    total = np.float32(0)
    for b in range(xd.shape[0]):
        total += ds[b] * xd[b] * np.float32(_dot_q8(row, 34 * b + 2, xq, QK * b))
    return total


@njit(**_JIT)
def _row_q4_0(row, ds, xq, xd):
    total = np.float32(0)
    for b in range(xd.shape[0]):
        total += ds[b] * xd[b] * np.float32(_dot_q4(row, 18 * b + 2, xq, QK * b, 8))
    return total


@njit(**_JIT)
def _row_q4_1(row, ds, ms, xq, xd, xs):
    total = np.float32(0)
    for b in range(xd.shape[0]):
        total += ds[b] * xd[b] * np.float32(_dot_q4(row, 20 * b + 4, xq, QK * b, 0)) + ms[b] * xs[b]
    return total


@njit(**_JIT)
def _rows(xq, xd, xs, w, code, d, m, out, r_lo, r_hi):
    """out[:, r_lo:r_hi] = dequant(q8(x)) @ W[r_lo:r_hi]^T; w: uint8 [rows, row_bytes]."""
    for r in range(r_lo, r_hi):
        for i in range(xq.shape[0]):
            if code == Q8_0:
                out[i, r] = _row_q8_0(w[r], d[r], xq[i], xd[i])
            elif code == Q4_0:
                out[i, r] = _row_q4_0(w[r], d[r], xq[i], xd[i])
            else:
                out[i, r] = _row_q4_1(w[r], d[r], m[r], xq[i], xd[i], xs[i])


@njit(**_JIT)
def matmul_serial(xq, xd, xs, w, code, d, m, out, n_chunks):
    _rows(xq, xd, xs, w, code, d, m, out, 0, w.shape[0])


@njit(parallel=True, **_JIT)
def matmul_parallel(xq, xd, xs, w, code, d, m, out, n_chunks):
    rows = w.shape[0]
    step = ((rows + n_chunks - 1) // n_chunks + NR - 1) // NR * NR
    for c in prange(n_chunks):
        _rows(xq, xd, xs, w, code, d, m, out, min(rows, c * step), min(rows, (c + 1) * step))
