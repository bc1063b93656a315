"""Every kernel backend against its NumPy twin (numpy_ref), on random inputs with odd shapes."""

import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from minigpt import quant
from minigpt.errors import MinigptError
from minigpt.kernels import PROTOCOL, available_backends, get_backend, numpy_ref
from subproc import run_python
from synthetic import random_blocks

QTYPES = list(quant.QTYPES)
BLOCK_QTYPES = [q for q in QTYPES if quant.QTYPES[q].block > 1]
QK32_QTYPES = [q for q in BLOCK_QTYPES if quant.QTYPES[q].block == 32]   # the layouts hostile_blocks edits
BACKENDS = available_backends()
RTOL = 1e-5  # of sum |x_j * W_ij|: float32 rounding in a different summation order stays far below


Q8_BACKENDS = [name for name in BACKENDS if hasattr(get_backend(name), "matmul_q8")]


@pytest.fixture(params=BACKENDS)
def be(request):
    backend = get_backend(request.param)
    yield backend
    backend.set_threads(1)


@pytest.fixture(params=Q8_BACKENDS)
def be8(request):
    backend = get_backend(request.param)
    yield backend
    backend.set_threads(1)


def width(cols, qtype):
    """cols rounded up to whole blocks of qtype: the K-quants (q4_k, q6_k) need multiples of 256."""
    block = quant.QTYPES[qtype].block
    return -(-cols // block) * block


def weight(rng, rows, cols, qtype):
    if quant.QTYPES[qtype].block == 256:
        # the K-quants: random bytes (every code and sub-block scale pattern), fp16 d (and dmin) of
        # rows of very different scale
        nb = cols // 256
        scale = np.repeat(rng.uniform(1e-4, 0.1, size=rows), nb)
        return random_blocks(rng, qtype.upper(), rows * nb, scale).reshape(rows, -1)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.uniform(0.01, 10, size=(rows, 1)).astype(np.float32)
    return quant.quantize(w, qtype)


def inputs(rng, n, cols):
    return (rng.standard_normal((n, cols)) * 3).astype(np.float32)


def assert_matmul_close(got, x, w, qtype):
    want = numpy_ref.matmul(x, w, qtype)
    scale = np.abs(x) @ np.abs(quant.dequantize(w, qtype)).T
    bad = np.abs(got - want) > RTOL * scale + 1e-30
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs differ, e.g. {got[bad][:3]} vs {want[bad][:3]}"


def test_c_backend_is_built():
    assert "c" in BACKENDS, "the compiled backend is missing: python setup.py build_ext --inplace"
    assert BACKENDS[0] == "c"


# --- agreement with the NumPy twin -----------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", QTYPES)
def test_matmul_matches_reference(be, qtype, threads):
    be.set_threads(threads)
    assert be.get_threads() == threads
    rng = np.random.default_rng(threads)
    for cols in sorted({width(c, qtype) for c in (32, 96, 576)}):
        for rows in (1, 7, 33, 257):
            w = weight(rng, rows, cols, qtype)
            for n in (1, 2, 5, 17):
                x = inputs(rng, n, cols)
                out = be.matmul(x, w, qtype)
                assert out.shape == (n, rows) and out.dtype == np.float32
                assert_matmul_close(out, x, w, qtype)


@pytest.mark.parametrize("qtype", QTYPES)
def test_few_inputs_are_each_input_alone(qtype):
    # below one GEMM panel (16 inputs with AVX2, 8 in portable C) the C matmul dots each weight row
    # with each input, four at a time where the ISA has a kernel for it: a batch of decode steps must
    # give every sequence the floats it would get alone
    c = get_backend("c")
    rng = np.random.default_rng(5)
    cols = width(576, qtype)
    w = weight(rng, 37, cols, qtype)
    x = inputs(rng, 15 if c.isa().startswith("avx") else 7, cols)
    alone = np.concatenate([c.matmul(x[i:i + 1], w, qtype) for i in range(len(x))])
    for n in range(1, len(x) + 1):
        np.testing.assert_array_equal(c.matmul(x[:n], w, qtype), alone[:n], err_msg=f"{n} inputs")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", ["q4_1", "q8_0", "q4_k", "q6_k"])
def test_matmul_large_prefill(be, qtype, threads):
    # more inputs than one packed group, cols spanning several column chunks
    be.set_threads(threads)
    rng = np.random.default_rng(11)
    cols = width(1056, qtype)
    w = weight(rng, 70, cols, qtype)
    x = inputs(rng, 300, cols)
    assert_matmul_close(be.matmul(x, w, qtype), x, w, qtype)


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_and_get_rows_are_exact(be, qtype):
    # d*q (+ m) is exact in float32 for every type, so any backend must agree bit for bit
    rng = np.random.default_rng(2)
    for rows, cols in ((1, 32), (7, 96), (33, 576)):
        cols = width(cols, qtype)
        w = weight(rng, rows, cols, qtype)
        full = be.dequantize(w, qtype)
        np.testing.assert_array_equal(full, quant.dequantize(w, qtype))
        ids = rng.integers(0, rows, size=9)
        ids[:2] = [0, rows - 1]
        np.testing.assert_array_equal(be.get_rows(w, qtype, ids), full[ids])
        np.testing.assert_array_equal(be.get_rows(w, qtype, ids.tolist()), full[ids])


def hostile_blocks(rng, rows, cols, qtype):
    """A stored weight of a 32-element block type whose code bytes are random, all ones or all zeros (any pattern of codes, the
    extremes included), with finite fp16 fields."""
    w = weight(rng, rows, cols, qtype)
    blk = w.reshape(-1, quant.QTYPES[qtype].block_bytes)
    start = 4 if qtype in ("q4_1", "q5_1") else 2              # the codes (q5: qh, then qs)
    blk[0::3, start:] = rng.integers(0, 256, blk[0::3, start:].shape, dtype=np.uint8)
    blk[1::3, start:] = 0xFF
    blk[2::6, start:] = 0
    return w


@pytest.mark.parametrize("qtype", QK32_QTYPES)
def test_any_code_bytes_agree(be8, qtype):
    # every bit pattern of the code bytes is a valid block: all backends read the same numbers
    rng = np.random.default_rng(5)
    for rows, cols in ((8, 32), (13, 96), (40, 256)):
        w = hostile_blocks(rng, rows, cols, qtype)
        np.testing.assert_array_equal(be8.dequantize(w, qtype), quant.dequantize(w, qtype))
        for n in (1, 5):
            x = inputs(rng, n, cols)
            assert_matmul_close(be8.matmul(x, w, qtype), x, w, qtype)
            assert_matmul_q8_close(be8.matmul_q8(x, w, qtype), x, w, qtype)


@pytest.mark.parametrize("qtype", QK32_QTYPES)
def test_non_finite_scales_do_not_crash(be8, qtype):
    # fp16 inf / nan scales (a damaged file: the reader does not look at scales, the engine refuses
    # non-finite logits) only make that row's outputs non-finite, as in the twin
    rng = np.random.default_rng(6)
    w = hostile_blocks(rng, 16, 96, qtype)
    bb = quant.QTYPES[qtype].block_bytes
    blk = w.reshape(16, 3, bb)
    blk[3, 1, :2] = np.array([np.inf], "<f2").view(np.uint8)
    blk[9, 0, :2] = np.array([np.nan], "<f2").view(np.uint8)
    if qtype in ("q4_1", "q5_1"):
        blk[12, 2, 2:4] = np.array([-np.inf], "<f2").view(np.uint8)
    np.testing.assert_array_equal(be8.dequantize(w, qtype), quant.dequantize(w, qtype))
    x = inputs(rng, 3, 96)
    for fn in ("matmul", "matmul_q8", "matmul_q16"):
        if not hasattr(be8, fn):
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            got, want = getattr(be8, fn)(x, w, qtype), getattr(numpy_ref, fn)(x, w, qtype)
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        assert not np.isfinite(got[:, 9]).any() and np.isfinite(got[:, :3]).all()
        pw, pq = be8.prepare(w, qtype, 8)
        out = be8.matmul_q8(x, pw, pq)
        assert np.array_equal(np.isfinite(out), np.isfinite(want))


def test_every_f16_bit_pattern(be):
    # inf, nan payloads, subnormals, -0: the conversion must match NumPy's bit for bit
    w = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(2048, 32)
    got = be.dequantize(w, "f16")
    np.testing.assert_array_equal(got.view(np.uint32), w.astype(np.float32).view(np.uint32))
    x = np.eye(32, dtype=np.float32)[:3]
    np.testing.assert_array_equal(be.matmul(x, w[:300], "f16"), w[:300, :3].T.astype(np.float32))  # finite rows


def test_out_argument_is_filled_and_returned(be):
    rng = np.random.default_rng(3)
    w = weight(rng, 33, 96, "q4_0")
    x = inputs(rng, 5, 96)
    out = np.full((5, 33), np.nan, np.float32)
    assert be.matmul(x, w, "q4_0", out=out) is out
    assert_matmul_close(out, x, w, "q4_0")
    rows_out = np.full((2, 96), np.nan, np.float32)
    assert be.get_rows(w, "q4_0", [3, 4], out=rows_out) is rows_out
    np.testing.assert_array_equal(rows_out, quant.dequantize(w, "q4_0")[[3, 4]])


def test_read_only_weights(be):
    # weights are read-only mmap views in the engine
    rng = np.random.default_rng(4)
    w = weight(rng, 7, 64, "q4_1")
    w.setflags(write=False)
    x = inputs(rng, 3, 64)
    assert_matmul_close(be.matmul(x, w, "q4_1"), x, w, "q4_1")
    np.testing.assert_array_equal(be.get_rows(w, "q4_1", [6]), quant.dequantize(w, "q4_1")[[6]])


def test_empty_shapes(be):
    w = weight(np.random.default_rng(5), 7, 64, "q8_0")
    assert be.matmul(np.zeros((0, 64), np.float32), w, "q8_0").shape == (0, 7)
    assert be.get_rows(w, "q8_0", np.zeros(0, np.int64)).shape == (0, 64)
    assert be.get_rows(w, "q8_0", []).shape == (0, 64)


# --- int8 activations: matmul_q8 against its twin ---------------------------------------------------

def assert_matmul_q8_close(got, x, w, qtype):
    # the twin sums exact products in float64; C sums float32 scale products per block
    want = numpy_ref.matmul_q8(x, w, qtype)
    if quant.QTYPES[qtype][0] == 1:
        xd = x
    else:
        q, d, _ = quant.quantize_act(x)
        xd = (q.reshape(len(x), -1, 32) * d[:, :, None]).reshape(x.shape)
    scale = np.abs(xd) @ np.abs(quant.dequantize(w, qtype)).T
    bad = np.abs(got - want) > RTOL * scale + 1e-30
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs differ, e.g. {got[bad][:3]} vs {want[bad][:3]}"


def test_c_quantize_act_matches_quant_bytes():
    # the C quantizer (scalar or AVX2) must give quant.quantize_act's bytes exactly
    core = get_backend("c")
    rng = np.random.default_rng(20)
    x = inputs(rng, 17, 576) * rng.uniform(1e-6, 1e4, size=(17, 1)).astype(np.float32)
    x[0, :32] = 0.0                                                   # all-zero block: d = 0
    x[1, :32] = np.arange(32) - 15.5                                  # exact halves x*id = k + 0.5
    x[1, 31] = 127.0
    x[2, :32] = np.float32(1e-40)                                     # subnormals: zeros
    x[2, 32:64] = np.float32(1.6e-36)                                 # just above that
    x[3, 32:64] = -x[3, 32:64]
    blocks = core._quantize_act(x).reshape(17, 18, 44)
    q, d, s = quant.quantize_act(x)
    np.testing.assert_array_equal(blocks[:, :, 0:4].copy().view(np.float32)[..., 0], d)
    np.testing.assert_array_equal(blocks[:, :, 4:8].copy().view(np.float32)[..., 0], s)
    np.testing.assert_array_equal(blocks[:, :, 8:12].copy().view(np.int32)[..., 0], q.reshape(17, 18, 32).sum(-1))
    np.testing.assert_array_equal(blocks[:, :, 12:].copy().view(np.int8).reshape(17, 576), q)


def test_c_quantize_act16_matches_quant_values():
    # the same for the int16 blocks, whose values are stored in groups of 4 as (x0, x2, x1, x3)
    core = get_backend("c")
    rng = np.random.default_rng(50)
    x = inputs(rng, 9, 576) * rng.uniform(1e-6, 1e4, size=(9, 1)).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :32] = (np.arange(32) - 15.5) * 1000
    x[1, 31] = 32767.0
    x[2, :32] = np.float32(1e-40)
    x[3, 32:64] = -x[3, 32:64]
    blocks = core._quantize_act(x, 16).reshape(9, 18, 72)
    q, d, s = quant.quantize_act(x, 16)
    np.testing.assert_array_equal(blocks[:, :, 0:4].copy().view(np.float32)[..., 0], d)
    np.testing.assert_array_equal(blocks[:, :, 4:8].copy().view(np.float32)[..., 0], s)
    stored = blocks[:, :, 8:].copy().view(np.int16).reshape(9, 18, 8, 4)
    np.testing.assert_array_equal(stored[..., [0, 2, 1, 3]].reshape(9, 576), q)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", QTYPES)
def test_matmul_q8_matches_reference(be8, qtype, threads):
    be8.set_threads(threads)
    rng = np.random.default_rng(30 + threads)
    for cols in sorted({width(c, qtype) for c in (32, 96, 576)}):
        for rows in (1, 7, 33, 257):
            w = weight(rng, rows, cols, qtype)
            for n in (1, 2, 3, 4, 5, 9, 17):  # around the 4-input kernel
                x = inputs(rng, n, cols)
                out = be8.matmul_q8(x, w, qtype)
                assert out.shape == (n, rows) and out.dtype == np.float32
                assert_matmul_q8_close(out, x, w, qtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", BLOCK_QTYPES)
def test_matmul_q8_large_prefill(be8, qtype, threads):
    # several input groups, the last one not a multiple of 4
    be8.set_threads(threads)
    rng = np.random.default_rng(12)
    cols = width(1056, qtype)
    w = weight(rng, 70, cols, qtype)
    x = inputs(rng, 203, cols)
    assert_matmul_q8_close(be8.matmul_q8(x, w, qtype), x, w, qtype)


@pytest.mark.parametrize("qtype", ["f32", "f16"])
def test_matmul_q8_of_float_weights_is_matmul(be8, qtype):
    rng = np.random.default_rng(13)
    w = weight(rng, 33, 70, qtype)
    for n in (1, 9):
        x = inputs(rng, n, 70)
        np.testing.assert_array_equal(be8.matmul_q8(x, w, qtype), be8.matmul(x, w, qtype))


@pytest.mark.parametrize("qtype", BLOCK_QTYPES)
def test_matmul_q8_is_near_exact_matmul(be8, qtype):
    # int8 activations cost well under 1% of the output scale
    rng = np.random.default_rng(14)
    cols = width(576, qtype)
    w = weight(rng, 64, cols, qtype)
    x = inputs(rng, 5, cols)
    scale = np.abs(x) @ np.abs(quant.dequantize(w, qtype)).T
    assert (np.abs(be8.matmul_q8(x, w, qtype) - be8.matmul(x, w, qtype)) < 0.01 * scale).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's, for inf * 0 and NaN sums
@pytest.mark.parametrize("qtype", ["q4_k", "q6_k"])
def test_non_finite_scales_stay_in_their_rows(be8, qtype):
    # The reader does not look at block scales (docs/format.md, "Validation on open"): a NaN or an infinity
    # in d or dmin must reach only the outputs of its own row, on every path, and crash nothing; the
    # engine then stops on non-finite logits.
    rng = np.random.default_rng(16)
    w = weight(rng, 24, 512, qtype).reshape(24, 2, -1).copy()
    offsets = {"q4_k": (0, 2), "q6_k": (208,)}[qtype]
    bad = [3, 8, 17, 23]
    for r, v in zip(bad, [np.nan, np.inf, -np.inf, np.nan]):
        off = offsets[r % len(offsets)]
        w[r, r % 2, off:off + 2] = np.array([v], "<f2").view(np.uint8)
    w = w.reshape(24, -1)
    ok = ~np.isin(np.arange(24), bad)
    x = inputs(rng, 5, 512)
    np.testing.assert_array_equal(be8.dequantize(w, qtype), quant.dequantize(w, qtype))   # NaN where NaN
    for n in (1, 5):
        for f in (be8.matmul, be8.matmul_q8, be8.matmul_q16):
            for ww, qt in [(w, qtype), be8.prepare(w, qtype, 8)]:
                if qt.endswith("x8") and f is be8.matmul:
                    continue
                out = f(x[:n], ww, qt)
                assert (np.isfinite(out) == ok).all(), (f.__name__, qt)


def test_matmul_q8_out_and_empty(be8):
    rng = np.random.default_rng(15)
    w = weight(rng, 33, 96, "q4_1")
    x = inputs(rng, 5, 96)
    out = np.full((5, 33), np.nan, np.float32)
    assert be8.matmul_q8(x, w, "q4_1", out=out) is out
    assert_matmul_q8_close(out, x, w, "q4_1")
    assert be8.matmul_q8(np.zeros((0, 96), np.float32), w, "q4_1").shape == (0, 33)
    with pytest.raises(ValueError, match="overlap"):
        buf = np.zeros((2, 64), np.float32)
        be8.matmul_q8(buf, np.zeros((64, 64), np.float32), "f32", out=buf)


# --- instruction sets ----------------------------------------------------------------------------

def test_isa_is_reported():
    core = get_backend("c")
    assert core.isa() in ("avx512vnni", "avx2", "neon", "scalar")
    if os.environ.get("MINIGPT_ISA", "auto") not in ("", "auto"):
        assert core.isa() == os.environ["MINIGPT_ISA"]


def _run_python(code, **env):
    return run_python("-c", code, env=env, timeout=120)


def test_bad_isa_names_the_value():
    r = _run_python("import minigpt.kernels._core", MINIGPT_ISA="avx9")
    assert r.returncode != 0 and "avx9" in r.stderr


@pytest.mark.skipif(os.environ.get("MINIGPT_ISA") == "scalar", reason="already the scalar run")
def test_scalar_isa_in_subprocess():
    # the portable C path is what non-AVX2 CPUs run: re-run this file's compiled-backend tests on it
    assert _run_python("from minigpt.kernels import _core; print(_core.isa())",
                       MINIGPT_ISA="scalar").stdout.strip() == "scalar"
    r = run_python("-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                   "-k", "not numpy and not numba and not subprocess", env={"MINIGPT_ISA": "scalar"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# --- bad input is a ValueError, never a crash ------------------------------------------------------

def bad_matmul_calls():
    x = np.zeros((2, 64), np.float32)
    w = np.zeros((3, 40), np.uint8)  # q4_1, 64 cols
    return [
        ("qtype", (x, w, "q5_k"), {}),
        ("qtype", (x, w, None), {}),
        ("dtype", (x.astype(np.float64), w, "q4_1"), {}),
        ("dtype", (x, w.astype(np.int8), "q4_1"), {}),
        ("dtype", (x, np.zeros((3, 64), np.float64), "f32"), {}),
        ("dtype", (x, np.zeros((3, 64), np.float32), "f16"), {}),
        ("2-D", (x[0], w, "q4_1"), {}),
        ("2-D", (x, w.reshape(-1), "q4_1"), {}),
        ("2-D", (x[None], w, "q4_1"), {}),
        ("numpy array", (x.tolist(), w, "q4_1"), {}),
        ("contiguous", (np.zeros((64, 2), np.float32).T, w, "q4_1"), {}),
        ("contiguous", (np.zeros((2, 128), np.float32)[:, ::2], w, "q4_1"), {}),
        ("contiguous", (x, np.zeros((3, 80), np.uint8)[:, :40], "q4_1"), {}),
        ("columns", (np.zeros((2, 96), np.float32), w, "q4_1"), {}),
        ("multiple of 20", (x, np.zeros((3, 41), np.uint8), "q4_1"), {}),
        ("multiple of 18", (x, w, "q4_0"), {}),
        ("shape", (x, w, "q4_1"), {"out": np.zeros((3, 2), np.float32)}),
        ("dtype", (x, w, "q4_1"), {"out": np.zeros((2, 3), np.float64)}),
        ("contiguous", (x, w, "q4_1"), {"out": np.zeros((3, 2), np.float32).T}),
        ("read-only", (x, w, "q4_1"), {"out": np.zeros((2, 3), np.float32, order="C")[:]}),
    ]


@pytest.mark.parametrize("i", range(len(bad_matmul_calls())))
def test_matmul_rejects_bad_input(be, i):
    match, args, kwargs = bad_matmul_calls()[i]
    if match == "read-only":
        kwargs["out"].setflags(write=False)
    with pytest.raises(ValueError, match=match):
        be.matmul(*args, **kwargs)


@pytest.mark.parametrize("i", range(len(bad_matmul_calls())))
def test_matmul_q8_rejects_bad_input(be8, i):
    match, args, kwargs = bad_matmul_calls()[i]
    if match == "read-only":
        kwargs["out"].setflags(write=False)
    with pytest.raises(ValueError, match=match):
        be8.matmul_q8(*args, **kwargs)


def test_matmul_rejects_overlapping_out(be):
    buf = np.zeros((2, 64), np.float32)
    w = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        be.matmul(buf, w, "f32", out=buf)
    with pytest.raises(ValueError, match="overlap"):
        be.matmul(np.zeros((2, 64), np.float32), w, "f32", out=w[:2])


@pytest.mark.parametrize("ids, match", [
    ([0, 7], "7"), ([-1], "-1"), ([[0, 1]], "1-D"), ([0.0, 1.0], "integers"), (np.array([2**40]), "range")])
def test_get_rows_rejects_bad_ids(be, ids, match):
    w = np.zeros((7, 36), np.uint8)  # q4_0, 64 cols
    with pytest.raises(ValueError, match=match):
        be.get_rows(w, "q4_0", ids)


def test_get_rows_rejects_bad_out(be):
    w = np.zeros((7, 36), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        be.get_rows(w, "q4_0", [1, 2], out=np.zeros((2, 32), np.float32))


def test_dequantize_rejects_bad_weight(be):
    with pytest.raises(ValueError, match="multiple of 34"):
        be.dequantize(np.zeros((2, 35), np.uint8), "q8_0")
    with pytest.raises(ValueError, match="qtype"):
        be.dequantize(np.zeros((2, 34), np.uint8), "Q8_0")


@pytest.mark.parametrize("n", [0, -1, 100000, 1.5, "2", True])
def test_set_threads_rejects_bad_counts(be, n):
    with pytest.raises(ValueError):
        be.set_threads(n)


# --- threads ---------------------------------------------------------------------------------------

def test_concurrent_calls_from_python_threads(be):
    # the compiled backend releases the GIL; its one pool must serve callers one job at a time
    be.set_threads(2)
    rng = np.random.default_rng(6)
    w = weight(rng, 257, 576, "q4_1")
    xs = [inputs(rng, n, 576) for n in (1, 17, 2, 40, 1, 5, 64, 3)]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda x: be.matmul(x, w, "q4_1"), xs * 3))
    for x, out in zip(xs * 3, outs):
        assert_matmul_close(out, x, w, "q4_1")


def _matmul_in_child(name, conn):
    be = get_backend(name)
    rng = np.random.default_rng(7)
    w = weight(rng, 257, 576, "q8_0")
    x = inputs(rng, 9, 576)
    got = be.matmul(x, w, "q8_0")
    conn.send(bool(np.allclose(got, numpy_ref.matmul(x, w, "q8_0"), rtol=1e-4, atol=1e-3)))


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs fork()")
def test_pool_survives_fork(be):
    be.set_threads(2)
    be.matmul(inputs(np.random.default_rng(8), 9, 64), weight(np.random.default_rng(8), 64, 64, "f32"), "f32")
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_matmul_in_child, args=(be.name, child))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("matmul deadlocked in a forked child")
    assert proc.exitcode == 0 and parent.recv() is True


# --- choosing a backend ----------------------------------------------------------------------------

def test_get_backend_by_name_and_env(monkeypatch):
    assert get_backend("numpy") is numpy_ref
    assert "numpy" in available_backends()
    monkeypatch.setenv("MINIGPT_BACKEND", "numpy")
    assert get_backend() is numpy_ref
    monkeypatch.delenv("MINIGPT_BACKEND")
    assert get_backend().name == available_backends()[0]


def test_unknown_backend_lists_available(monkeypatch):
    with pytest.raises(MinigptError, match="numpy"):
        get_backend("cuda")
    monkeypatch.setenv("MINIGPT_BACKEND", "nope")
    with pytest.raises(MinigptError, match="nope"):
        get_backend()


def test_every_backend_implements_the_whole_protocol():
    for name in BACKENDS:
        be = get_backend(name)
        assert be.name == name
        for fn in PROTOCOL[1:]:
            assert callable(getattr(be, fn)), (name, fn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "f16"])
@pytest.mark.parametrize("bits", [8, 16, 32])
def test_prepare_keeps_what_matmul_computes(backend, qtype, bits):
    # whatever form prepare() gives a weight (the C backend packs it x8), matmul at those bits is unchanged
    be = get_backend(backend)
    rng = np.random.default_rng(bits)
    w = quant.quantize(rng.standard_normal((24, 96)).astype(np.float32), qtype)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    fn = {8: "matmul_q8", 16: "matmul_q16", 32: "matmul"}[bits]
    data, qt = be.prepare(w, qtype, bits)
    np.testing.assert_allclose(getattr(be, fn)(x, data, qt), getattr(be, fn)(x, w, qtype), rtol=1e-4, atol=2e-3)
    ref = getattr(numpy_ref, fn)(x, w, qtype)   # and the oracle agrees
    np.testing.assert_allclose(getattr(be, fn)(x, data, qt), ref, rtol=1e-4, atol=2e-3)


def test_numpy_backend_records_threads():
    numpy_ref.set_threads(3)
    assert numpy_ref.get_threads() == 3
    numpy_ref.set_threads(1)

