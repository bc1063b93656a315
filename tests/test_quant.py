"""minigpt.quant: the NumPy quantizers every kernel is checked against."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from minigpt import quant

BLOCK_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
K_TYPES = ["q4_k", "q6_k"]   # 256-element super-blocks, ggml's Q4_K and Q6_K
FIX = Path(__file__).parent / "fixtures"


def f16_bytes(v):
    return list(np.array([v], dtype="<f2").view(np.uint8))


# --- layout ----------------------------------------------------------------------------------------

def test_qtypes_table():
    assert {name: (t.block, t.block_bytes) for name, t in quant.QTYPES.items()} == {
        "f32": (1, 4), "f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20),
        "q5_0": (32, 22), "q5_1": (32, 24), "q4_k": (256, 144), "q6_k": (256, 210)}
    assert sorted(t.code for t in quant.QTYPES.values()) == list(range(len(quant.QTYPES)))


def test_the_compiled_table_is_checked_against_it(monkeypatch):
    _core = pytest.importorskip("minigpt.kernels._core")
    _core._check_qtype_table()   # what import did
    monkeypatch.setitem(quant.QTYPES, "q4_1", quant.QType(32, 22, 4, np.dtype(np.uint8)))
    with pytest.raises(ImportError, match="differ"):
        _core._check_qtype_table()


@pytest.mark.parametrize("qtype, shape", [
    ("f32", (3, 96)), ("f16", (3, 96)), ("q8_0", (3, 102)), ("q4_0", (3, 54)), ("q4_1", (3, 60)),
    ("q5_0", (3, 66)), ("q5_1", (3, 72))])
def test_storage_shape(qtype, shape):
    assert quant.storage_shape(qtype, 3, 96) == shape
    x = np.zeros((3, 96), np.float32)
    assert quant.quantize(x, qtype).shape == shape


@pytest.mark.parametrize("qtype, shape", [("q4_k", (3, 288)), ("q6_k", (3, 420))])
def test_storage_shape_of_k_quants(qtype, shape):
    assert quant.storage_shape(qtype, 3, 512) == shape
    for cols in (32, 96, 800, -256):      # Gemma's 640 and Qwen's 896 rows are fine, not as columns
        with pytest.raises(ValueError, match=str(cols)):
            quant.storage_shape(qtype, 3, cols)


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
@pytest.mark.parametrize("cols", [33, 16, 100, -32])
def test_storage_shape_rejects_partial_blocks(qtype, cols):
    with pytest.raises(ValueError, match=str(cols)):
        quant.storage_shape(qtype, 4, cols)


def test_storage_shape_rejects_bad_args():
    with pytest.raises(ValueError, match="q5_k"):
        quant.storage_shape("q5_k", 1, 32)
    with pytest.raises(ValueError, match="-1"):
        quant.storage_shape("q8_0", -1, 32)


# --- blocks worked out by hand from the spec -------------------------------------------------------

def test_q8_0_hand_block():
    # amax = 127 -> d = 1 exactly, so q = roundf(x): halves go away from zero (2.5 -> 3, -0.5 -> -1)
    x = np.zeros(32, np.float32)
    x[:8] = [127, -127, 2.5, -2.5, 0.5, -0.5, 1.49, -1.51]
    w = quant.quantize(x[None], "q8_0")
    q = [127, -127, 3, -3, 1, -1, 1, -2] + [0] * 24
    expected = f16_bytes(1.0) + list(np.array(q, np.int8).view(np.uint8))
    assert w.tolist() == [expected]
    np.testing.assert_array_equal(quant.dequantize(w, "q8_0")[0], np.array(q, np.float32))


def test_q4_0_hand_block():
    # the largest |x| is -8, so d = -8/-8 = 1 and q = min(15, trunc(x + 8.5))
    x = np.zeros(32, np.float32)
    x[[0, 1, 2, 3]] = [-8, 0.5, 7.6, 1.0]
    x[[16, 17, 18, 19]] = [7, -0.5, -7.6, -1.0]
    # q: x0 0, x1 9, x2 15 (16.1 clipped), x3 9 | x16 15, x17 8, x18 0 (0.9), x19 7; zeros -> 8
    qs = [0x00 | 0xF0, 0x09 | 0x80, 0x0F | 0x00, 0x09 | 0x70] + [0x88] * 12
    w = quant.quantize(x[None], "q4_0")
    assert w.tolist() == [f16_bytes(1.0) + qs]
    y = quant.dequantize(w, "q4_0")[0]
    assert y[[0, 1, 2, 3]].tolist() == [-8, 1, 7, 1]
    assert y[[16, 17, 18, 19]].tolist() == [7, 0, -8, -1]
    assert not y[4:16].any() and not y[20:].any()


def test_q4_0_positive_max_gives_negative_scale():
    x = np.zeros((1, 32), np.float32)
    x[0, 5] = 8.0
    w = quant.quantize(x, "q4_0")
    assert w[0, :2].tolist() == f16_bytes(-1.0)
    assert w[0, 2 + 5] & 0x0F == 0  # 8 * (1/-1) + 8.5 = 0.5 -> 0
    assert quant.dequantize(w, "q4_0")[0, 5] == 8.0


def test_q4_1_hand_block():
    # min -1, max 14 -> d = 1, m = -1, q = min(15, trunc(x - m + 0.5))
    x = np.full(32, -1.0, np.float32)
    x[[0, 1]] = [-1, 0.4]
    x[[16, 17]] = [14, 0.5]
    qs = [0x00 | 0xF0, 0x01 | 0x20] + [0x00] * 14
    w = quant.quantize(x[None], "q4_1")
    assert w.tolist() == [f16_bytes(1.0) + f16_bytes(-1.0) + qs]
    y = quant.dequantize(w, "q4_1")[0]
    assert y[[0, 1, 16, 17]].tolist() == [-1, 0, 14, 1]


def test_q5_0_hand_block():
    # x = 2 (j - 16): the largest |x| is x[0] = -32, so d = -32/-16 = 2 and code j = j
    x = (2 * (np.arange(32) - 16)).astype(np.float32)
    w = quant.quantize(x[None], "q5_0")
    codes = np.arange(16, dtype=np.uint8)
    assert w[0].tolist() == f16_bytes(2.0) + [0, 0, 0xFF, 0xFF] + (codes | codes << 4).tolist()
    assert quant.dequantize(w, "q5_0")[0].tolist() == x.tolist()


def test_q5_1_hand_block():
    # x = j/2 + 1: m = 1, d = 15.5/31 = 0.5, code j = j
    x = (np.arange(32) / 2 + 1).astype(np.float32)
    w = quant.quantize(x[None], "q5_1")
    codes = np.arange(16, dtype=np.uint8)
    assert w[0].tolist() == f16_bytes(0.5) + f16_bytes(1.0) + [0, 0, 0xFF, 0xFF] + (codes | codes << 4).tolist()
    assert quant.dequantize(w, "q5_1")[0].tolist() == x.tolist()


@pytest.mark.parametrize("qtype", ["q5_0", "q5_1"])
def test_q5_split_blocks_reads_every_bit(qtype):
    # random bytes in qh and qs: code j is nibble j | bit j of qh << 4, x = d * code + offset
    rng = np.random.default_rng(8)
    bb = quant.QTYPES[qtype].block_bytes
    w = rng.integers(0, 256, (3, 2 * bb), dtype=np.uint8)
    w.reshape(6, bb)[:, :bb - 20] = np.array([0.25, -1.5] if qtype == "q5_1" else [0.25], "<f2").view(np.uint8)
    codes, d, offset = quant.split_blocks(w, qtype)
    blk = w.reshape(6, bb)
    qh = blk[:, bb - 20:bb - 16].copy().view("<u4")[:, 0]
    for k in range(6):
        for j in range(32):
            nib = blk[k, bb - 16 + j % 16] >> (4 * (j // 16)) & 15
            assert codes.reshape(6, 32)[k, j] == nib | (qh[k] >> j & 1) << 4
    want = d[..., None] * codes + offset[..., None]
    np.testing.assert_array_equal(quant.dequantize(w, qtype), want.reshape(3, 64))


@pytest.mark.parametrize("qtype", ["q5_0", "q5_1"])
def test_q5_dequantize_matches_gguf_py(qtype):
    # tests/fixtures/kquants_reference.npz: random blocks and gguf-py's values (tools/make_kquant_fixtures.py)
    z = np.load(FIX / "kquants_reference.npz")
    raw, want = z[f"{qtype.upper()}/raw"], z[f"{qtype.upper()}/values"]
    got = quant.dequantize(raw, qtype)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # and a round trip: requantizing a dequantized block gives it back when its scales survive
    again = quant.dequantize(quant.quantize(got, qtype), qtype)
    step = np.abs(quant.split_blocks(raw, qtype)[1])
    assert (np.abs(again - got) <= step * 1.001 + 1e-6).all()


@pytest.mark.parametrize("qtype, block", [
    ("q8_0", [0, 0] + [0] * 32),
    ("q4_0", [0, 0x80] + [0x88] * 16),  # d = 0.0/-8 = -0.0, as in ggml
    ("q4_1", [0, 0, 0, 0] + [0] * 16),
    ("q5_0", [0, 0x80] + [0xFF] * 4 + [0] * 16),   # d = -0.0, every code 16
    ("q5_1", [0] * 8 + [0] * 16)])
def test_all_zero_block(qtype, block):
    w = quant.quantize(np.zeros((2, 32), np.float32), qtype)
    assert w.tolist() == [block, block]
    assert not quant.dequantize(w, qtype).any()


def test_f16_is_round_to_nearest_even():
    x = np.array([[1.0, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 65520.0]], np.float32)
    w = quant.quantize(x, "f16")
    assert w.dtype == np.float16
    assert quant.dequantize(w, "f16").tolist() == [[1.0, 1.0, 1.0 + 2.0**-9, np.inf]]


def k_blocks(rng, qtype, n):
    from synthetic import random_blocks   # random codes and scales, finite fp16 fields
    return random_blocks(rng, qtype.upper(), n, 0.05)


def test_q4_k_hand_block():
    # sub-block 5: scale and min from the high bits of bytes 1 and 5 and the two nibbles of byte 13;
    # its elements (160..191) are the high nibbles of qs 64..95
    b = np.zeros(144, np.uint8)
    b[0:2], b[2:4] = f16_bytes(0.5), f16_bytes(0.25)
    b[4 + 1] = 0b10_000011       # scale 1 = 3; bits 6-7: high bits of scale 5 = 2
    b[4 + 5] = 0b01_000000       # min 1 = 0; high bits of min 5 = 1
    b[4 + 9] = 0x97              # scale 5 low bits 7, min 5 low bits 9
    b[16 + 64:16 + 96] = np.arange(32) % 16 << 4 | 1          # low nibble 1 (sub-block 4), high nibble l % 16
    y = quant.dequantize(b[None], "q4_k")[0]
    sc5, m5 = (2 << 4) | 7, (1 << 4) | 9
    np.testing.assert_array_equal(y[160:192], np.float32(0.5 * sc5) * (np.arange(32) % 16) - np.float32(0.25 * m5))
    np.testing.assert_array_equal(y[32:64], np.float32(0.5 * 3) * np.zeros(32))  # sub-block 1: codes 0
    np.testing.assert_array_equal(y[128:160], np.full(32, 0.0, np.float32))      # sub-block 4: scale 0, min 0


def test_q6_k_hand_block():
    # element 128 + 64 + 7 (h 1, k 2, l 7): nibble 1 of ql[64 + 7], bits 4-5 of qh[32 + 7], sub-block 12
    b = np.zeros(210, np.uint8)
    b[208:210] = f16_bytes(0.125)
    b[64 + 7] = 0xA0             # high nibble 10
    b[128 + 32 + 7] = 0b11 << 4  # high bits 3: code 0x3A = 58
    b[192:208] = np.arange(16, dtype=np.int8).view(np.uint8) - 8   # scale s = s - 8
    y = quant.dequantize(b[None], "q6_k")[0]
    assert y[199] == np.float32(0.125 * (12 - 8)) * np.float32(58 - 32)
    assert y[7] == np.float32(0.125 * -8) * np.float32(-32)        # code 0 -> -32, scale -8
    assert y[8 * 16] == 0.0                                         # sub-block 8: scale 0


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_split_blocks_is_dequantize(qtype):
    # the x8 twin's view of the blocks (per 32 elements: d * code + offset) is the same numbers
    rng = np.random.default_rng(8)
    w = k_blocks(rng, qtype, 6).reshape(3, -1)
    codes, d, offset = quant.split_blocks(w, qtype)
    assert codes.shape == (3, 16, 32) and d.shape == offset.shape if offset is not None else True
    y = d[:, :, None] * codes.astype(np.float32)
    if offset is not None:
        y = y + offset[:, :, None]
    np.testing.assert_array_equal(y.reshape(3, 512), quant.dequantize(w, qtype))


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quant_special_blocks(qtype):
    # all zero: every byte 0 (d = 0); one sub-block zero; a constant super-block
    z = quant.quantize(np.zeros((1, 256), np.float32), qtype)
    assert not z.any()
    x = np.random.default_rng(9).standard_normal((2, 256)).astype(np.float32)
    x[0, :32] = 0
    x[1] = 2.5
    y = quant.dequantize(quant.quantize(x, qtype), qtype)
    np.testing.assert_array_equal(y[0, :32], 0)
    assert np.abs(y[1] - 2.5).max() < 0.05


# --- bit-exact known vectors (reference bytes produced by llama.cpp's gguf-py 0.19.0, or ggml; q5_0 and
# q5_1 by llama.cpp's own quantize_row_q5_0_ref / _q5_1_ref, libggml-base of llama-cpp-python 0.3.36) --

GOLDEN_SHA256 = {
    "q5_0": "743fa339d2a90b5e7df0c42dfad22fecb7e8c1e405196acffd5d43b21763013e",
    "q5_1": "096da93eb5643e94ff42b240f5c43c90380fce757e66cd42674590ba7468478c",
    "q8_0": "abe11e1493276701977cfe752d7c17ba296f2d0ac854b9ba19d38350a81d710d",
    "q4_0": "6f7e5e3f0e8a7707b97940ac76b8f585ab6806c047e8bdc5be46d705e92d4161",
    "q4_1": "b822e641489e5505f97697064c522807453bee2af08dca1385c988039e20debe",
    "f16": "7b604fba53bd1aeb0471aac9b63ec18922ac3685f8b25cda19bee749835405a4",
    # ggml's quantize_row_q4_K_ref / quantize_row_q6_K_ref in llama-cpp-python 0.3.36 (tools/kquant_golden.py)
    "q4_k": "96bcb7662cae5ea8230283821bcdaa0dea72655b0bced98f65e6b8bd7bb88658",
    "q6_k": "dcf664c995c568a831d6772fdb2d4dfcb7de7c0d80d57f8e8b534b3298fc237c",
}


def golden_input():
    # exact integer arithmetic then one float division: the same float32s on every platform
    i = np.arange(8 * 256, dtype=np.int64)
    x = (((i * 7919) % 1000 - 500) / 37.0).astype(np.float32).reshape(8, 256)
    x[1, 32:64] = 0
    x[2, :32] = 3.0
    x[3, :32] *= np.float32(1e-6)
    return x


@pytest.mark.parametrize("qtype", sorted(GOLDEN_SHA256))
def test_matches_ggml_reference_bytes(qtype):
    w = quant.quantize(golden_input(), qtype)
    assert hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest() == GOLDEN_SHA256[qtype]


# --- error bounds ----------------------------------------------------------------------------------

def random_weights(rng, rows=64, cols=256):
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x *= rng.uniform(1e-3, 1e3, size=(rows, 1)).astype(np.float32)  # rows of very different scale
    x[0] += 5.0  # a row far from zero-mean, where q4_1's offset matters
    return x


def per_block(x, fn):
    return fn(x.reshape(-1, 32), axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q8_0_error_bound(seed):
    x = random_weights(np.random.default_rng(seed))
    err = np.abs(quant.dequantize(quant.quantize(x, "q8_0"), "q8_0") - x).reshape(-1, 32)
    amax = per_block(np.abs(x), np.max)
    # half a step, plus the fp16 rounding of d (relative 2^-11) times the largest code
    assert (err <= amax * (0.5 / 127 + 2.0**-11) * 1.001).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q4_0_error_bound(seed):
    x = random_weights(np.random.default_rng(seed))
    err = np.abs(quant.dequantize(quant.quantize(x, "q4_0"), "q4_0") - x).reshape(-1, 32)
    amax = per_block(np.abs(x), np.max)
    # half a step, except the +8 side, which is clipped to 7 steps: up to a whole step there
    assert (err <= amax * (1 / 8 + 2.0**-10) * 1.001).all()
    assert np.median(err / amax) < 1 / 16


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q4_1_error_bound(seed):
    x = random_weights(np.random.default_rng(seed))
    err = np.abs(quant.dequantize(quant.quantize(x, "q4_1"), "q4_1") - x).reshape(-1, 32)
    lo, hi = per_block(x, np.min), per_block(x, np.max)
    step = (hi - lo) / 15
    # half a step, plus fp16 rounding of d (times up to 15 codes) and of m
    assert (err <= (step * (0.5 + 15 * 2.0**-11) + np.abs(lo) * 2.0**-11) * 1.001).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q5_0_error_bound(seed):
    x = random_weights(np.random.default_rng(seed))
    err = np.abs(quant.dequantize(quant.quantize(x, "q5_0"), "q5_0") - x).reshape(-1, 32)
    amax = per_block(np.abs(x), np.max)
    # half a step, except the +16 side, which is clipped to 15 steps: up to a whole step there
    assert (err <= amax * (1 / 16 + 2.0**-10) * 1.001).all()
    assert np.median(err / amax) < 1 / 32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q5_1_error_bound(seed):
    x = random_weights(np.random.default_rng(seed))
    err = np.abs(quant.dequantize(quant.quantize(x, "q5_1"), "q5_1") - x).reshape(-1, 32)
    lo, hi = per_block(x, np.min), per_block(x, np.max)
    step = (hi - lo) / 31
    assert (err <= (step * (0.5 + 31 * 2.0**-11) + np.abs(lo) * 2.0**-11) * 1.001).all()


def test_relative_rms_error_ordering():
    x = np.random.default_rng(3).standard_normal((128, 512)).astype(np.float32)
    rel = {q: np.sqrt(np.mean((quant.dequantize(quant.quantize(x, q), q) - x) ** 2)) / x.std()
           for q in quant.QTYPES}
    assert rel["f32"] == 0
    assert rel["f16"] < 1e-3 < rel["q8_0"] < rel["q6_k"] < 0.03
    assert rel["q4_k"] < rel["q4_1"] < rel["q4_0"] < 0.15
    assert rel["q8_0"] < rel["q5_1"] < rel["q5_0"] < rel["q4_1"]


# --- argument handling -----------------------------------------------------------------------------

def test_quantize_along_last_axis_of_any_rank():
    x = np.random.default_rng(4).standard_normal((2, 3, 64)).astype(np.float32)
    w = quant.quantize(x, "q4_1")
    assert w.shape == (2, 3, 40)
    np.testing.assert_array_equal(w.reshape(6, 40), quant.quantize(x.reshape(6, 64), "q4_1"))


@pytest.mark.parametrize("qtype", ["q4_0", "q4_k", "q6_k"])
def test_quantize_is_chunk_independent(monkeypatch, qtype):
    x = np.random.default_rng(5).standard_normal((37, 512)).astype(np.float32)
    whole = quant.quantize(x, qtype)
    monkeypatch.setattr(quant, "_CHUNK_ELEMS", 1200)  # a few rows per chunk
    np.testing.assert_array_equal(quant.quantize(x, qtype), whole)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_rejects_non_finite(bad):
    x = np.zeros((1, 32), np.float32)
    x[0, 3] = bad
    with pytest.raises(ValueError, match=str(bad)):
        quant.quantize(x, "q8_0")


def test_quantize_rejects_bad_args():
    with pytest.raises(ValueError, match="q3"):
        quant.quantize(np.zeros((1, 32), np.float32), "q3")
    with pytest.raises(ValueError, match="48"):
        quant.quantize(np.zeros((1, 48), np.float32), "q4_0")
    with pytest.raises(ValueError, match="dimension"):
        quant.quantize(np.float32(1.0), "q8_0")
    with pytest.raises(ValueError, match="dtype"):
        quant.quantize(np.array([["a"] * 32]), "q8_0")


@pytest.mark.parametrize("qtype", BLOCK_TYPES + K_TYPES)
def test_dequantize_flat_bytes_with_cols(qtype):
    rng = np.random.default_rng(6)
    cols = quant.QTYPES[qtype].block * 2
    w = quant.quantize(rng.standard_normal((3, cols)).astype(np.float32), qtype)
    np.testing.assert_array_equal(quant.dequantize(w.reshape(-1), qtype, cols=cols), quant.dequantize(w, qtype))
    with pytest.raises(ValueError, match="cols"):
        quant.dequantize(w.reshape(-1), qtype)
    with pytest.raises(ValueError, match=str(cols * 3 // 2)):
        quant.dequantize(w, qtype, cols=cols * 3 // 2)
    with pytest.raises(ValueError, match="multiple"):
        quant.dequantize(w[:, :-1], qtype)
    with pytest.raises(ValueError, match="uint8"):
        quant.dequantize(w.astype(np.int16), qtype)


@pytest.mark.parametrize("qtype", ["f32", "f16"])
def test_dequantize_float_types_from_raw_bytes(qtype):
    x = np.random.default_rng(7).standard_normal((3, 10)).astype(np.float32)
    w = quant.quantize(x, qtype)
    expect = w.astype(np.float32)
    np.testing.assert_array_equal(quant.dequantize(w, qtype), expect)
    np.testing.assert_array_equal(quant.dequantize(w.view(np.uint8), qtype), expect)
    np.testing.assert_array_equal(quant.dequantize(w.view(np.uint8).reshape(-1), qtype, cols=10), expect)
    with pytest.raises(ValueError, match="dtype"):
        quant.dequantize(x.astype(np.float64), qtype)


# --- activations for the integer matmul ------------------------------------------------------------

def test_quantize_act_hand_block():
    # amax = 127 -> d = 1, so q = rint(x): halves go to even (2.5 -> 2, -0.5 -> -0, 1.5 -> 2)
    x = np.zeros((1, 64), np.float32)
    x[0, :8] = [127, -127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.51]
    x[0, 32:64] = 1e-40  # d would be subnormal: the block is zeros
    q, d, s = quant.quantize_act(x)
    assert q[0, :8].tolist() == [127, -127, 2, -2, 0, 0, 2, -2] and not q[0, 8:].any()
    assert d.tolist() == [[1.0, 0.0]] and s.tolist() == [[0.0, 0.0]]
    assert q.dtype == np.int8 and d.dtype == s.dtype == np.float32


def test_quantize_act_error_bound():
    x = (np.random.default_rng(1).standard_normal((4, 96)) * 5).astype(np.float32)
    q, d, s = quant.quantize_act(x)
    xd = (q.reshape(4, 3, 32) * d[:, :, None]).reshape(4, 96)
    amax = np.abs(x.reshape(4, 3, 32)).max(axis=2)
    assert (np.abs(xd - x).reshape(4, 3, 32).max(axis=2) <= amax / 254 * (1 + 1e-6)).all()
    np.testing.assert_allclose(s, q.reshape(4, 3, 32).sum(axis=2) * d, rtol=1e-7)


@pytest.mark.parametrize("x, match", [
    (np.zeros((2, 33), np.float32), "33"), (np.zeros(32, np.float32), "2-D"), (np.zeros((1, 32)), "float32")])
def test_quantize_act_rejects_bad_args(x, match):
    with pytest.raises(ValueError, match=match):
        quant.quantize_act(x)
