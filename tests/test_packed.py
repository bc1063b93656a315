"""The x8 layout (csrc/packed.c): weights repacked 8 rows at a time for the int8-activation matmul.

Packing is a permutation of the stored bytes, and matmul_q8 over a packed weight must agree with the
NumPy twin of matmul_q8 over the original, on every instruction set that has x8 kernels: this file runs
on the best one here and again, in a subprocess, on plain AVX2 when the best is AVX512-VNNI. On x86
(AVX2, AVX512-VNNI) the twin computes the kernels' own roundings, so there the floats are the same bits.
"""


import numpy as np
import pytest

from minigpt import quant, quant_k
from minigpt.kernels import get_backend, numpy_ref
from subproc import run_python
from test_kernels import assert_matmul_q8_close, hostile_blocks, inputs, weight, width

core = get_backend("c")
X8_QTYPES = [q for q in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k") if core.x8_supported(q)]
Q5_X8 = [q for q in ("q5_0", "q5_1") if q in X8_QTYPES]
K_QTYPES = [q for q in X8_QTYPES if quant.QTYPES[q].block == 256]
pytestmark = pytest.mark.skipif(not X8_QTYPES, reason=f"no x8 kernels on {core.isa()}")
TWIN = core.isa() in ("avx2", "avx512vnni")   # the instruction sets numpy_ref's x8 twin rounds as


def assert_twin(out, x, w, qtype, bits=8):
    """out, a packed matmul at `bits`, is the NumPy twin's result: bit for bit on x86, else close."""
    if TWIN:
        want = (numpy_ref.matmul_q8 if bits == 8 else numpy_ref.matmul_q16)(x, w, qtype)
        np.testing.assert_array_equal(out, want)
    elif bits == 8:
        assert_matmul_q8_close(out, x, w, qtype)
    else:
        assert_matmul_q16_close(out, x, w, qtype)


@pytest.mark.parametrize("qtype", [q for q in X8_QTYPES if q not in Q5_X8 + K_QTYPES])
def test_packing_permutes_the_stored_bytes(qtype):
    rng = np.random.default_rng(1)
    w = weight(rng, 24, 96, qtype)
    p = core.pack_x8(w, qtype)
    assert p.shape == (3, 3 * {"q8_0": 272, "q4_0": 144, "q4_1": 160}[qtype])
    assert sorted(p.tobytes()) == sorted(w.tobytes())
    # group 1, block 2: the 8 rows' fp16 scales come first, in row order
    blk = p[1].reshape(3, -1)[2]
    bb = quant.QTYPES[qtype][1]
    np.testing.assert_array_equal(blk[:16].reshape(8, 2), w[8:16, 2 * bb:2 * bb + 2])


def x8_q5_reference(w, qtype):
    """csrc/packed.c's q5 x8 layout, built in NumPy from the codes: [groups, nb, 176 or 192] bytes."""
    rows = w.shape[0]
    codes, _, _ = quant.split_blocks(w, qtype)                  # [rows, nb, 32] in 0..31
    nb, bb, hdr = codes.shape[1], quant.QTYPES[qtype].block_bytes, 32 if qtype == "q5_1" else 16
    blk = w.reshape(rows // 8, 8, nb, bb).transpose(0, 2, 1, 3)          # [g, nb, r, bb]
    c = codes.reshape(rows // 8, 8, nb, 32).transpose(0, 2, 1, 3)        # [g, nb, r, 32]
    hi = (c >> 4).astype(np.uint8)                                       # the fifth bits
    qh = np.zeros(hi.shape[:3] + (4,), np.uint8)                         # [g, nb, r, 4]
    for L in range(4):     # bit L of byte i: element 4L + i; bit 4 + L: element 16 + 4L + i
        for i in range(4):
            qh[..., i] |= hi[..., 4 * L + i] << L | hi[..., 16 + 4 * L + i] << (4 + L)
    qs = blk[..., bb - 16:].reshape(*blk.shape[:3], 4, 4).transpose(0, 1, 3, 2, 4)   # [g, nb, L, r, 4]
    parts = [blk[..., :2].reshape(*blk.shape[:2], 16)]
    if qtype == "q5_1":
        parts.append(blk[..., 2:4].reshape(*blk.shape[:2], 16))
    parts += [qh.reshape(*blk.shape[:2], 32), qs.reshape(*blk.shape[:2], 128)]
    out = np.concatenate(parts, axis=-1)
    assert out.shape[-1] == hdr + 32 + 128 == 8 * bb          # exactly the GGUF blocks' bytes
    return out.reshape(rows // 8, -1)


@pytest.mark.parametrize("qtype", Q5_X8)
def test_q5_packing_matches_its_layout(qtype):
    rng = np.random.default_rng(1)
    w = hostile_blocks(rng, 24, 96, qtype)
    p = core.pack_x8(w, qtype)
    assert p.shape == (3, 3 * 8 * quant.QTYPES[qtype].block_bytes) and p.nbytes == w.nbytes
    np.testing.assert_array_equal(p, x8_q5_reference(w, qtype))
def test_k_quant_packing_places_each_field():
    # q4_kx8: d, dmin, then the 6-bit scales and mins unpacked to bytes, then the qs vectors;
    # q6_kx8: d, the int8 scales, the ql vectors, the qh vectors (csrc/packed.c)
    rng = np.random.default_rng(2)
    for qtype, gb in (("q4_k", 1184), ("q6_k", 1680)):
        if qtype not in K_QTYPES:
            continue
        w = weight(rng, 16, 768, qtype)
        p = core.pack_x8(w, qtype)
        assert p.shape == (2, 3 * gb)
        blk = p[1].reshape(3, gb)[2]                     # group 1, super-block 2: rows 8-15
        src = w[8:16].reshape(8, 3, -1)[:, 2]            # [8 rows, block bytes]
        if qtype == "q4_k":
            np.testing.assert_array_equal(blk[:32].reshape(2, 8, 2), src[:, :4].reshape(8, 2, 2).transpose(1, 0, 2))
            sc, m = quant_k.k4_scales(src[:, 4:16])
            np.testing.assert_array_equal(blk[32:96].reshape(8, 8), sc.T)
            np.testing.assert_array_equal(blk[96:160].reshape(8, 8), m.T)
            qs = blk[160:].reshape(4, 8, 8, 4)           # [c][v][r][i] = qs byte 32c + 4v + i of row r
            np.testing.assert_array_equal(qs.transpose(2, 0, 1, 3).reshape(8, 128), src[:, 16:])
        else:
            np.testing.assert_array_equal(blk[:16].reshape(8, 2), src[:, 208:])
            np.testing.assert_array_equal(blk[16:144].reshape(16, 8), src[:, 192:208].T)
            ql = blk[144:1168].reshape(2, 2, 8, 8, 4)    # [h][p][v][r][i] = ql byte 64h + 32p + 4v + i
            np.testing.assert_array_equal(ql.transpose(3, 0, 1, 2, 4).reshape(8, 128), src[:, :128])
            qh = blk[1168:].reshape(2, 8, 8, 4)          # [h][v][r][i] = qh byte 32h + 4v + i
            np.testing.assert_array_equal(qh.transpose(2, 0, 1, 3).reshape(8, 64), src[:, 128:192])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", X8_QTYPES)
def test_packed_matmul_matches_reference(qtype, threads):
    core.set_threads(threads)
    rng = np.random.default_rng(40 + threads)
    for cols in sorted({width(c, qtype) for c in (32, 96, 576)}):
        for rows in (8, 16, 40, 264):
            w = weight(rng, rows, cols, qtype)
            p = core.pack_x8(w, qtype)
            for n in (1, 2, 3, 4, 5, 9, 17):  # around the 4-input tile
                x = inputs(rng, n, cols)
                out = core.matmul_q8(x, p, qtype + "x8")
                assert out.shape == (n, rows) and out.dtype == np.float32
                assert_twin(out, x, w, qtype)


@pytest.mark.parametrize("qtype", X8_QTYPES)
def test_packed_large_prefill_with_outliers(qtype):
    core.set_threads(2)
    rng = np.random.default_rng(41)
    w = weight(rng, 96, 1536, qtype)                     # 1536: 6 super-blocks of the K-quants
    x = inputs(rng, 130, 1536)
    x[:, 7] *= 300.0       # an outlier channel, as silu(gate) * up has
    x[5] = 0.0             # an all-zero input: d = 0 blocks
    assert_twin(core.matmul_q8(x, core.pack_x8(w, qtype), qtype + "x8"), x, w, qtype)
    assert_twin(core.matmul_q16(x, core.pack_x8(w, qtype), qtype + "x8"), x, w, qtype, 16)


def test_extreme_codes_do_not_saturate():
    # every weight -128 or 127 and every input +-127: the largest products either path can meet
    rng = np.random.default_rng(42)
    w = weight(rng, 16, 256, "q8_0").reshape(16, 8, 34).copy()
    w[:, :, 2:] = rng.choice(np.array([-128, 127], np.int8), size=(16, 8, 32)).view(np.uint8)
    w = w.reshape(16, 8 * 34)
    x = (rng.choice([-1.0, 1.0], size=(3, 256)) * 127).astype(np.float32)
    assert_matmul_q8_close(core.matmul_q8(x, core.pack_x8(w, "q8_0"), "q8_0x8"), x, w, "q8_0")


@pytest.mark.parametrize("qtype", [q for q in ("q4_0", "q4_1", "q5_0", "q5_1") if q in X8_QTYPES])
def test_extreme_q4_codes_do_not_saturate(qtype):
    # every code 15 (q5: 31) and every input +127: the int16 sums of AVX2's maddubs are at their largest
    rng = np.random.default_rng(44)
    bb = quant.QTYPES[qtype][1]
    w = weight(rng, 16, 256, qtype).reshape(16, 8, bb).copy()
    w[:, :, bb - (20 if qtype in Q5_X8 else 16):] = 0xFF
    w = w.reshape(16, 8 * bb)
    x = np.full((5, 256), 127.0, np.float32)
    x[1] = -x[1]
    for n in (1, 2, 3, 5):    # 4 accumulators a token for up to 2 tokens, 2 for 3 and 4
        assert_twin(core.matmul_q8(x[:n], core.pack_x8(w, qtype), qtype + "x8"), x[:n], w, qtype)
        assert_twin(core.matmul_q16(x[:n], core.pack_x8(w, qtype), qtype + "x8"), x[:n], w, qtype, 16)


@pytest.mark.parametrize("qtype", [q for q in X8_QTYPES if q not in K_QTYPES])   # K: random_blocks
def test_packed_any_code_bytes_match_the_twin(qtype):
    rng = np.random.default_rng(45)
    w = hostile_blocks(rng, 40, 160, qtype)
    p = core.pack_x8(w, qtype)
    for n in (1, 2, 3, 4, 7):
        x = inputs(rng, n, 160)
        assert_twin(core.matmul_q8(x, p, qtype + "x8"), x, w, qtype)
        assert_twin(core.matmul_q16(x, p, qtype + "x8"), x, w, qtype, 16)


@pytest.mark.parametrize("qtype", K_QTYPES)
def test_extreme_k_quant_codes_and_scales_do_not_saturate(qtype):
    # the largest integer sums the K-quant kernels meet: q4_k codes 15 (AVX2's int16 sums of 8 maddubs);
    # q6_k codes 0 (q - 32 = -32) and sub-block scales -128, the int16 sums of 4 maddubs and, with int16
    # inputs, sc * dot up to 2^31 - 2^16; inputs +-127 (int8) and +-32767 (int16) of one sign per row
    rng = np.random.default_rng(45)
    w = weight(rng, 16, 512, qtype).reshape(16, 2, -1).copy()
    if qtype == "q4_k":
        w[:, :, 4:] = 0xFF                               # every scale, min and code at its maximum
        w[:8, :, 4:16] = rng.integers(0, 256, size=(8, 2, 12), dtype=np.uint8)
    else:
        w[:, :, :192] = 0                                # every code 0: q - 32 = -32
        w[:, :, 192:208] = 0x80                          # every scale -128
        w[8:, :, :192] = 0xFF                            # every code 63: q - 32 = 31
    w = w.reshape(16, -1)
    x = np.full((5, 512), 127.0, np.float32)
    x[1] = -x[1]
    x[2, ::2] = -127.0
    p = core.pack_x8(w, qtype)
    assert_twin(core.matmul_q8(x, p, qtype + "x8"), x, w, qtype)
    assert_twin(core.matmul_q16(x, p, qtype + "x8"), x, w, qtype, 16)
    assert_matmul_q8_close(core.matmul_q8(x, w, qtype), x, w, qtype)   # the per-row path too


def test_bad_packed_calls_are_value_errors():
    rng = np.random.default_rng(43)
    w = weight(rng, 12, 64, "q4_0")
    with pytest.raises(ValueError, match="multiple of 8 rows"):
        core.pack_x8(w, "q4_0")
    with pytest.raises(ValueError, match="f16"):
        core.pack_x8(weight(rng, 8, 64, "f16"), "f16")
    p = core.pack_x8(weight(rng, 8, 64, "q4_0"), "q4_0")
    with pytest.raises(ValueError, match="matmul_q8 or matmul_q16 only"):
        core.matmul(inputs(rng, 1, 64), p, "q4_0x8")
    with pytest.raises(ValueError, match="columns"):
        core.matmul_q8(inputs(rng, 1, 96), p, "q4_0x8")
    with pytest.raises(ValueError, match="not a multiple"):
        core.matmul_q8(inputs(rng, 1, 64), p[:, :100], "q4_0x8")
    if "q6_k" in K_QTYPES:
        p = core.pack_x8(weight(rng, 8, 512, "q6_k"), "q6_k")
        assert core.check_weight(p, "q6_kx8") == (8, 512)
        with pytest.raises(ValueError, match="columns"):
            core.matmul_q8(inputs(rng, 1, 256), p, "q6_kx8")
        with pytest.raises(ValueError, match="not a multiple of 1680"):
            core.matmul_q8(inputs(rng, 1, 512), p[:, :1700], "q6_kx8")


@pytest.mark.skipif(core.isa() != "avx512vnni", reason="plain AVX2 is already the best here")
def test_avx2_kernels_in_subprocess():
    r = run_python("-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not subprocess",
                   env={"MINIGPT_ISA": "avx2"}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "passed" in r.stdout


# --- int16 activations (matmul_q16) ------------------------------------------------------------------

def assert_matmul_q16_close(got, x, w, qtype):
    want = numpy_ref.matmul_q16(x, w, qtype)
    scale = np.abs(x) @ np.abs(quant.dequantize(w, qtype)).T
    bad = np.abs(got - want) > 1e-5 * scale + 1e-30
    assert not bad.any(), f"{bad.sum()} of {bad.size} outputs differ, e.g. {got[bad][:3]} vs {want[bad][:3]}"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("qtype", X8_QTYPES)
def test_packed_matmul_q16_matches_reference(qtype, threads):
    core.set_threads(threads)
    rng = np.random.default_rng(60 + threads)
    for cols, rows in ((32, 8), (96, 40), (1536, 264)):
        cols = width(cols, qtype)
        w = weight(rng, rows, cols, qtype)
        p = core.pack_x8(w, qtype)
        for n in (1, 2, 3, 4, 5, 9, 17):
            x = inputs(rng, n, cols)
            x[:, 3] *= 500.0  # an outlier channel: what int16 is for
            out = core.matmul_q16(x, p, qtype + "x8")
            assert_twin(out, x, w, qtype, 16)
            # and within int16 rounding (half a step, d/2, per input) of the float32 matmul
            _, d, _ = quant.quantize_act(x, 16)
            wabs = np.abs(quant.dequantize(w, qtype)).astype(np.float64)
            bound = (np.repeat(d, 32, axis=1) / 2) @ wabs.T + 1e-5 * (np.abs(x) @ wabs.T)
            assert (np.abs(out - core.matmul(x, w, qtype)) <= bound).all()


def test_matmul_q16_of_unpacked_weights_is_matmul():
    rng = np.random.default_rng(61)
    for qtype in ("f32", "q4_1"):
        w = weight(rng, 12, 64, qtype)
        x = inputs(rng, 3, 64)
        np.testing.assert_array_equal(core.matmul_q16(x, w, qtype), core.matmul(x, w, qtype))
