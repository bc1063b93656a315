"""What is particular to the numba backend; the cross-checks against numpy_ref are in test_kernels.py."""

import numpy as np
import pytest

pytest.importorskip("numba")

import numba  # noqa: E402

from minigpt import quant  # noqa: E402
from minigpt.kernels import available_backends, default_backend, get_backend, numba_  # noqa: E402


@pytest.fixture
def nb():
    yield numba_
    numba_.set_threads(1)


def test_registered_but_not_the_default(monkeypatch):
    assert "numba" in available_backends()
    assert get_backend("numba") is numba_ and numba_.name == "numba"
    if "c" in available_backends():
        assert default_backend() == "c"
    monkeypatch.setenv("MINIGPT_BACKEND", "numba")
    assert get_backend() is numba_


def test_block_scales_of_every_fp16_kind_are_exact(nb):
    # d and m read from the bytes: subnormal, -0, huge and tiny normals, decoded as NumPy decodes them
    rng = np.random.default_rng(0)
    w = quant.quantize(rng.standard_normal((64, 64)).astype(np.float32), "q4_1")
    halves = np.array([0x0001, 0x03FF, 0x8001, 0x8000, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x1234], np.uint16)
    for field in (0, 2, 20, 22):  # d and m of the first two blocks
        w[:, field:field + 2] = rng.choice(halves, 64)[:, None].view(np.uint8).reshape(64, 2)
    np.testing.assert_array_equal(nb.dequantize(w, "q4_1"), quant.dequantize(w, "q4_1"))


@pytest.mark.parametrize("qtype", ["q5_0", "q5_1"])
def test_q5_decode_reads_every_fifth_bit(nb, qtype):
    # one-hot inputs pick single weights out of the row dots: each must be its code's value, for
    # codes with only bit 4 set, with none, and random ones (float and int8 x, decode and prefill)
    from test_kernels import hostile_blocks
    rng = np.random.default_rng(3)
    w = hostile_blocks(rng, 9, 64, qtype)
    w.setflags(write=False)
    full = quant.dequantize(w, qtype)
    for cols in (range(0, 3), range(17, 20), range(31, 34), range(61, 64)):
        x = np.eye(64, dtype=np.float32)[list(cols)]
        np.testing.assert_allclose(nb.matmul(x, w, qtype), full[:, list(cols)].T, rtol=1e-6, atol=0)
        q8 = nb.matmul_q8(x, w, qtype)    # x = 1: its q8 block is d = 1/127, q = 127
        np.testing.assert_allclose(q8, full[:, list(cols)].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nb.matmul(np.eye(64, dtype=np.float32), w, qtype), full.T, rtol=1e-6, atol=0)


def test_threads_are_bounded_by_numba():
    limit = numba.config.NUMBA_NUM_THREADS
    numba_.set_threads(limit)
    assert numba_.get_threads() == limit
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        numba_.set_threads(limit + 1)
    numba_.set_threads(1)


@pytest.mark.parametrize("qtype", list(quant.QTYPES))
def test_result_does_not_depend_on_threads(nb, qtype):
    # each output is summed by the same code whichever thread owns its row: bit-identical
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread")
    from test_kernels import weight, width
    rng = np.random.default_rng(1)
    cols = width(160, qtype)
    w = weight(rng, 67, cols, qtype)
    for n in (1, 9):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        one = nb.matmul(x, w, qtype)
        nb.set_threads(2)
        np.testing.assert_array_equal(nb.matmul(x, w, qtype), one)
        nb.set_threads(1)


@pytest.mark.parametrize("qtype", list(quant.QTYPES))
def test_decode_and_prefill_paths_agree(nb, qtype):
    # n < NI dots the stored rows directly; larger n dequantizes tiles, dotted with NI inputs at a
    # time and then one at a time for the rest
    from test_kernels import weight, width
    rng = np.random.default_rng(2)
    cols = width(96, qtype)
    w = weight(rng, 2 * numba_.NR + 3, cols, qtype)
    x = rng.standard_normal((numba_.NI + 3, cols)).astype(np.float32)
    tiled = nb.matmul(x, w, qtype)
    direct = np.concatenate([nb.matmul(x[i:i + 1], w, qtype) for i in range(len(x))])
    scale = np.abs(x) @ np.abs(quant.dequantize(w, qtype)).T
    assert (np.abs(tiled - direct) <= 1e-5 * scale).all()


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_decode_rows_of_many_blocks_match_numpy(nb, qtype):
    # the decode row dots (numba_decode: one vector loop per row, summed once at its end) on rows of
    # 18 blocks, as the 135M model's, and of 49 (odd), for 1..NI-1 inputs, float and int8 x
    from test_kernels import assert_matmul_close, assert_matmul_q8_close
    rng = np.random.default_rng(5)
    for rows, cols in ((37, 576), (6, 49 * 32)):
        w = quant.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
        w.setflags(write=False)
        for n in range(1, numba_.NI):
            x = (rng.standard_normal((n, cols)) * 3).astype(np.float32)
            assert_matmul_close(nb.matmul(x, w, qtype), x, w, qtype)
            assert_matmul_q8_close(nb.matmul_q8(x, w, qtype), x, w, qtype)


@pytest.mark.parametrize("qtype", ["q4_k", "q6_k"])
def test_k_quant_rows_of_many_super_blocks_match_numpy(nb, qtype):
    # the K-quants take the tiles at every n; rows of 19 super-blocks (Qwen2.5-0.5B's ffn_down), read-only
    from test_kernels import assert_matmul_close, assert_matmul_q8_close, weight
    rng = np.random.default_rng(6)
    w = weight(rng, 13, 19 * 256, qtype)
    w.setflags(write=False)
    for n in (1, 2, numba_.NI + 1):
        x = (rng.standard_normal((n, 19 * 256)) * 3).astype(np.float32)
        assert_matmul_close(nb.matmul(x, w, qtype), x, w, qtype)
        assert_matmul_q8_close(nb.matmul_q8(x, w, qtype), x, w, qtype)
    np.testing.assert_array_equal(nb.get_rows(w, qtype, [12, 0]), quant.dequantize(w, qtype)[[12, 0]])


def test_block_scales_are_cached_for_read_only_weights_only(nb):
    # the engine's weights are read-only mmap views; a writeable weight may change between calls
    rng = np.random.default_rng(3)
    w = quant.quantize(rng.standard_normal((9, 64)).astype(np.float32), "q4_1")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    nb.matmul(x, w, "q4_1")
    w[:, :2] = np.array([2.0], np.float16).view(np.uint8)   # every row's first d
    np.testing.assert_allclose(nb.matmul(x, w, "q4_1"), x @ quant.dequantize(w, "q4_1").T, rtol=1e-5, atol=1e-5)
    w.setflags(write=False)
    nb.matmul(x, w, "q4_1")
    assert id(w) in numba_._scales_cache
    del w
    assert len([k for k, v in numba_._scales_cache.items() if v[0]() is None]) == 0


# --- attention against llama.attention ---------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_kv, group, hd", [(1, 1, 64), (3, 3, 64), (2, 3, 20), (4, 1, 36)])
def test_attention_matches_numpy(nb, threads, n_kv, group, hd):
    from minigpt.kernels.numpy_ref import attention
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("numba has one thread")
    nb.set_threads(threads)
    rng = np.random.default_rng(4)
    n_ctx = 41
    k = rng.standard_normal((n_kv, n_ctx, hd)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_ctx, hd)).astype(np.float32)
    for n, start in ((1, 0), (1, 17), (7, 0), (13, 5), (1, 40)):
        q = (rng.standard_normal((n, n_kv * group, hd)) * 2).astype(np.float32)
        got = nb.attention(q, k, v, start)
        assert got.shape == (n, n_kv * group * hd) and got.dtype == np.float32
        np.testing.assert_allclose(got, attention(q, k, v, start), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_windowed_attention_over_a_ring_matches_numpy(nb, threads):
    # Gemma 3's local layers: a sliding window, a scale of the model's, and a ring cache (slot t % cap)
    from minigpt.kernels.numpy_ref import attention
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("numba has one thread")
    nb.set_threads(threads)
    rng = np.random.default_rng(5)
    n_kv, group, hd, window = 2, 2, 24, 6
    for n, start, cap in ((1, 30, 6), (5, 17, 10), (8, 0, 13), (3, 40, 50)):
        k = rng.standard_normal((n_kv, cap, hd)).astype(np.float32)
        v = rng.standard_normal((n_kv, cap, hd)).astype(np.float32)
        q = rng.standard_normal((n, n_kv * group, hd)).astype(np.float32)
        np.testing.assert_allclose(nb.attention(q, k, v, start, 0.4, window), attention(q, k, v, start, 0.4, window),
                                   rtol=1e-5, atol=1e-5)


def test_attention_rejects_shapes_that_do_not_fit(nb):
    k = np.zeros((2, 8, 16), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        nb.attention(np.zeros((1, 3, 16), np.float32), k, k, 0)
    with pytest.raises(ValueError, match="exceed"):
        nb.attention(np.zeros((2, 4, 16), np.float32), k, k, 7)


# --- precision: quantized activations through the NumPy decoder ----------------------------------------

def test_precision_picks_the_matmul(tmp_path, monkeypatch):
    # 'exact' calls matmul only; 'balanced' matmul_q8 but for wq, wk, wv, w_down (matmul_q16) and the head; 'fast' matmul_q8
    import minigpt
    from minigpt.convert import convert
    from synthetic import tiny_llama

    tiny_llama(tmp_path / "q.gguf", wtype="Q4_1")
    convert(tmp_path / "q.gguf", tmp_path / "q.mgpt")
    ids = [1, 40, 72, 101, 108, 3]
    exact = minigpt.Model(tmp_path / "q.mgpt", backend="numba", precision="exact").logits(ids)
    calls = {"matmul": 0, "matmul_q8": 0, "matmul_q16": 0}
    for fn in calls:
        real = getattr(numba_, fn)
        monkeypatch.setattr(numba_, fn, lambda *a, _f=real, _n=fn, **k: calls.__setitem__(_n, calls[_n] + 1) or _f(*a, **k))
    per_layer = 7   # wq wk wv wo w_gate w_up w_down; then the head
    for precision, layer_q8, layer_q16, head_q8 in (("exact", 0, 0, 0), ("balanced", 3, 4, 0), ("fast", 7, 0, 1)):
        calls.update(matmul=0, matmul_q8=0, matmul_q16=0)
        m = minigpt.Model(tmp_path / "q.mgpt", backend="numba", precision=precision)
        got = m.logits(ids)
        L = m.config.n_layers
        assert calls == {"matmul_q8": layer_q8 * L + head_q8, "matmul_q16": layer_q16 * L,
                         "matmul": (per_layer - layer_q8 - layer_q16) * L + 1 - head_q8}
        scale = np.abs(exact).max()
        assert np.abs(got - exact).max() < (1e-5 if precision == "exact" else 0.05) * scale
