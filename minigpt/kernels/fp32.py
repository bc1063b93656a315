"""float32 arithmetic as csrc does it, in NumPy: the steps whose rounding NumPy would otherwise change.

The compiled path rounds every float32 operation in an order its code fixes (it is built with
-ffp-contract=off, so only the FMAs it writes are fused). NumPy's own float32 add and multiply round
the same way; what it lacks is the fused multiply-add, csrc's exp, and csrc's order of summing the
8 lanes of a vector. They are here:

    fma(a, b, c)   a * b + c rounded once: the product of two float32 is exact in float64, the sum
                   is rounded to float64 and then to float32. The two roundings differ from one only
                   when the float64 result falls on a float32 halfway point (about 1 in 2^29).
    exp(x)         csrc/ops_avx2.c's exp8, step for step (Cody-Waite reduction, degree-7 polynomial,
                   2^n applied in two halves).
    hsum8(a)       the last axis (8 lanes) added as hsum8 adds a vector: (l0+l4 + l2+l6) + (l1+l5 + l3+l7).
    fold8(a)       the same, added as fold4 (two horizontal adds) does: (l0+l1 + l2+l3) + (l4+l5 + l6+l7).
"""

import numpy as np

f32 = np.float32


def fma(a, b, c, out=None, scratch=None):
    """a * b + c of float32 arrays (b may be float64 holding a float32 or an integer below 2^29),
    into out if given, through a float64 scratch array of the result's shape if given."""
    r = np.multiply(a, b, dtype=np.float64, out=scratch)   # exact
    r += c
    if out is None:
        return r.astype(f32)
    np.copyto(out, r, casting="unsafe")                    # rounds to nearest
    return out


def hsum8(a):
    t = a[..., :4] + a[..., 4:]               # lo + hi
    return (t[..., 0] + t[..., 2]) + (t[..., 1] + t[..., 3])


def fold8(a):
    t = a[..., 0::2] + a[..., 1::2]           # adjacent pairs
    return (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])


_LOG2E, _LN2_HI, _LN2_LO = f32(1.44269504088896341), f32(0.693147182464599609375), f32(-1.904654299957768e-09)
_POLY = [f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                          1.6666665459e-1, 5.0000001201e-1)]


def exp(x):
    """e^x of a float32 array, bit for bit csrc's exp8 (under 1 ulp from the exact value)."""
    x = np.minimum(f32(89), np.maximum(f32(-104), np.asarray(x, f32)))   # NaN stays NaN
    n = np.rint(x * _LOG2E)
    r = fma(-n, _LN2_HI, x)
    r = fma(-n, _LN2_LO, r)
    p = np.full_like(r, _POLY[0])
    for c in _POLY[1:]:
        p = fma(p, r, c)
    y = fma(p, r * r, r) + f32(1)
    ni = np.where(np.isnan(n), f32(0), n).astype(np.int32)
    n1 = ni >> 1
    s1 = ((n1 + 127) << 23).view(f32)
    s2 = ((ni - n1 + 127) << 23).view(f32)
    with np.errstate(over="ignore"):         # inf above 88.73, as in C
        return (y * s1) * s2
