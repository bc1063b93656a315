"""The KV cache's row types (quant.KV_TYPES: f32, f16, q8_0) on every backend.

What the cache stores is quant.kv_encode's bytes, and attention over a cache is the float32 attention
of quant.kv_decode's rows: the C slots (ops.c, ops_avx2.c), the C decoder and attention, the NumPy
twin and numba are each held to that. On x86 with AVX2 the C and NumPy decoders give the same bits for
every type, as for float32; the portable C run (MINIGPT_ISA=scalar, in a subprocess below) is held to
float32 tolerances. Tiny synthetic models (tests/synthetic.py) as in test_forward_c.py.
"""

import os
import tracemalloc

import numpy as np
import pytest

import minigpt
from minigpt import quant
from minigpt.engine import KVCache, PyDecoder
from minigpt.engine import cache as kvcache
from minigpt.engine.engine import prepare_weights
from minigpt.kernels import numpy_ref

from subproc import run_python
from test_forward_c import IDS, close, make_decoder, reference, run, same, tiny_model

_core = pytest.importorskip("minigpt.kernels._core")
TWIN = _core.isa() in ("avx2", "avx512vnni")   # the instruction sets the NumPy twins round as
TYPES = quant.KV_TYPES


@pytest.fixture
def threads(request):
    before = _core.get_threads()
    _core.set_threads(request.param)
    yield request.param
    _core.set_threads(before)


# --- rows: kv_encode / kv_decode, and the C slots that store and load them

def special_floats():
    """float32 values around every edge of the f16 conversion: subnormal halves and below, the normal
    range's ends, halfway cases, overflow, inf, NaN, both signs; and a stride over all 2^32 bit patterns."""
    bits = [np.arange(0, 1 << 32, 65537 * 13, dtype=np.uint64).astype(np.uint32),
            np.arange(0x33000000, 0x33800100, 97, dtype=np.uint32),    # around 2^-25: half the least subnormal
            np.arange(0x387fe000, 0x38802000, dtype=np.uint32),        # around 2^-14: the least normal half
            np.arange(0x477fe000, 0x47801000, dtype=np.uint32),        # around 65504 .. 65536: max and overflow
            np.uint32([0, 1, 0x00800000, 0x3f800000, 0x3f801000, 0x3f803000, 0x7f7fffff, 0x7f800000, 0x7fc00000])]
    bits = np.concatenate(bits)
    return np.concatenate([bits, bits | 0x80000000]).view(np.float32)


def test_f16_rows_are_numpy_halves():
    x = special_floats()
    with np.errstate(all="ignore"):
        want = x.astype(np.float16)
    nan = np.isnan(x)
    with np.errstate(over="ignore"):
        ours = quant.kv_encode(x[None], "f16")[0]
    for got in (ours, _core._kv_store(x.reshape(-1, 2), "f16").reshape(-1)):
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
        assert np.isnan(got[nan]).all()
        quiet = x[nan].view(np.uint32) & 0x00400000 != 0   # quiet NaNs keep their top payload bits, as NumPy's
        np.testing.assert_array_equal(got[nan][quiet].view(np.uint16), want[nan][quiet].view(np.uint16))
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)   # every half, back
    back = _core._kv_load(halves.reshape(-1, 64), "f16", 64).reshape(-1)
    hn = np.isnan(halves)
    np.testing.assert_array_equal(back[~hn].view(np.uint32), halves[~hn].astype(np.float32).view(np.uint32))
    assert np.isnan(back[hn]).all()
    np.testing.assert_array_equal(quant.kv_decode(halves, "f16", 1)[~hn], back[~hn])


@pytest.mark.parametrize("hd", [32, 64, 96, 1024])
def test_q8_0_rows_are_the_int8_activations(hd):
    rng = np.random.default_rng(hd)
    x = rng.standard_normal((37, hd)).astype(np.float32) * np.float32(3)
    x[1] = 0                                  # a zero row: d = 0
    x[2, :32] = 1e-40                         # a block of subnormals: d below FLT_MIN -> zeros
    x[3] *= np.float32(1e6)
    x[4, :32] = np.float32(127) / 2 * np.arange(32) / 127   # exact halves: rounded to even
    rows = quant.kv_encode(x, "q8_0")
    assert rows.dtype == np.uint8 and rows.shape == (37, hd + hd // 8)
    q, d, _ = quant.quantize_act(x, 8)
    np.testing.assert_array_equal(rows[:, :hd].view(np.int8), q)
    np.testing.assert_array_equal(rows[:, hd:].copy().view("<f4"), d)
    np.testing.assert_array_equal(_core._kv_store(x, "q8_0"), rows)          # the decoder's store, this ISA
    dec = quant.kv_decode(rows, "q8_0", hd)
    np.testing.assert_array_equal(dec, (q.astype(np.float32).reshape(37, -1, 32) * d[..., None]).reshape(37, hd))
    np.testing.assert_array_equal(_core._kv_load(rows, "q8_0", hd), dec)      # what attention reads
    assert not dec[2, :32].any()
    keep = np.arange(37) != 2
    big = np.abs(x[keep]).reshape(36, -1, 32).max(-1, keepdims=True)
    assert np.all(np.abs(dec[keep] - x[keep]).reshape(36, -1, 32) <= big / 254 * 1.0001)   # half a step
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.kv_encode(x[:, :24], "q8_0")


def test_kv_type_of():
    assert quant.kv_type_of(np.zeros((2, 3, 24), np.float32), 24) == "f32"
    assert quant.kv_type_of(np.zeros((2, 3, 24), np.float16), 24) == "f16"
    assert quant.kv_type_of(np.zeros((2, 3, 36), np.uint8), 32) == "q8_0"
    for a, hd in [(np.zeros((2, 3, 24), np.float64), 24), (np.zeros((2, 3, 27), np.uint8), 24),
                  (np.zeros((2, 3, 32), np.uint8), 32), (np.zeros((2, 3, 24), np.float32), 32),
                  (np.zeros((2, 3, 24), ">f4"), 24)]:
        with pytest.raises(ValueError, match="not one of head_dim"):
            quant.kv_type_of(a, hd)


# --- attention over stored rows: exactly the float32 attention of the decoded rows

# (n, start, cap, n_heads, n_kv_heads, head_dim, window): groups of 1, 3, 5, odd head counts, hd wider
# than the conversion scratch holds in one go (1024: tiles converted in parts), rings
ATTN_CASES = [(5, 0, 9, 3, 1, 32, 0), (13, 4, 40, 6, 2, 64, 0), (17, 70, 100, 15, 3, 64, 0), (1, 150, 200, 9, 3, 96, 0),
              (3, 200, 256, 8, 2, 256, 0), (1, 90, 99, 16, 1, 1024, 0), (70, 31, 128, 4, 1, 32, 0),
              (24, 60, 96, 6, 2, 64, 5), (1, 80, 16, 5, 1, 32, 16), (6, 37, 10, 6, 2, 32, 5)]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "n{}-s{}-c{}-h{}-kv{}-d{}-w{}".format(*c))
def test_attention_reads_the_decoded_rows(case, kv_type, threads):
    n, start, cap, H, kv, hd, window = case
    rng = np.random.default_rng(n * 1000 + start)
    q = rng.standard_normal((n, H, hd), dtype=np.float32)
    kc = quant.kv_encode(rng.standard_normal((kv, cap, hd), dtype=np.float32), kv_type)
    vc = quant.kv_encode(rng.standard_normal((kv, cap, hd), dtype=np.float32), kv_type)
    kf, vf = quant.kv_decode(kc, kv_type, hd), quant.kv_decode(vc, kv_type, hd)
    got = _core.attention(q, kc, vc, start, 0.3, window)
    want = _core.attention(q, kf, vf, start, 0.3, window)
    np.testing.assert_array_equal(got, want)     # the same float kernels over the same floats, any ISA
    twin = numpy_ref.attention(q, kc, vc, start, 0.3, window)
    np.testing.assert_array_equal(twin, numpy_ref.attention(q, kf, vf, start, 0.3, window))
    if TWIN:
        np.testing.assert_array_equal(got, twin)
    else:
        np.testing.assert_allclose(got, twin, rtol=0, atol=2e-5)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("hd", [8, 24, 40, 48])
def test_f16_attention_of_any_width(hd, threads):
    """f16 rows whose head_dim is a multiple of 8 but not always of 16: the AVX-512 P.V takes the
    widths it covers and hands the others to the AVX2 slot, the same floats either way."""
    rng = np.random.default_rng(hd)
    q = rng.standard_normal((1, 6, hd), dtype=np.float32)
    kc = quant.kv_encode(rng.standard_normal((2, 90, hd), dtype=np.float32), "f16")
    vc = quant.kv_encode(rng.standard_normal((2, 90, hd), dtype=np.float32), "f16")
    got = _core.attention(q, kc, vc, 80, 0.3)
    np.testing.assert_array_equal(got, _core.attention(q, quant.kv_decode(kc, "f16", hd),
                                                       quant.kv_decode(vc, "f16", hd), 80, 0.3))
    if TWIN:
        np.testing.assert_array_equal(got, numpy_ref.attention(q, kc, vc, 80, 0.3))


def test_attention_refuses_mixed_or_odd_caches():
    q = np.zeros((1, 2, 32), np.float32)
    f32, f16 = np.zeros((1, 8, 32), np.float32), np.zeros((1, 8, 32), np.float16)
    q8 = np.zeros((1, 8, 36), np.uint8)
    kerns = [_core, numpy_ref]
    try:
        from minigpt.kernels import numba_
        kerns.append(numba_)
    except ImportError:
        pass
    for kern in kerns:
        for k, v, msg in [(f16, f32, "float16|differ"), (f32, q8, "float32|differ"), (q8[..., :35], q8[..., :35], "not one"),
                          (f32.astype(np.float64), f32, "not one"), (f16[..., :30], f16[..., :30], "not one")]:
            with pytest.raises(ValueError, match=msg):
                kern.attention(q, k, v, 0)


def test_numba_attention_reads_every_row_type():
    nb = pytest.importorskip("minigpt.kernels.numba_")
    rng = np.random.default_rng(7)
    for n, start, cap, window in ((1, 30, 40, 0), (5, 3, 10, 0), (3, 40, 9, 6), (1, 50, 12, 6)):
        q = rng.standard_normal((n, 6, 32), dtype=np.float32)
        for kv_type in TYPES:
            kc = quant.kv_encode(rng.standard_normal((2, cap, 32), dtype=np.float32), kv_type)
            vc = quant.kv_encode(rng.standard_normal((2, cap, 32), dtype=np.float32), kv_type)
            np.testing.assert_allclose(nb.attention(q, kc, vc, start, 0.4, window),
                                       numpy_ref.attention(q, kc, vc, start, 0.4, window), rtol=1e-5, atol=1e-5)


@pytest.fixture
def nb_threads(request):
    nb = pytest.importorskip("minigpt.kernels.numba_")
    import numba
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("numba has one thread")
    nb.set_threads(request.param)
    yield nb
    nb.set_threads(1)


def _no_full_decode(monkeypatch):
    # numba's attention reads the stored rows in place: decoding the whole cache is a bug
    def refuse(*args):
        raise AssertionError("the cache was decoded whole")
    monkeypatch.setattr(numpy_ref, "decode_cache", refuse)
    monkeypatch.setattr(quant, "kv_decode", refuse)


@pytest.mark.parametrize("nb_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "n{}-s{}-c{}-h{}-kv{}-d{}-w{}".format(*c))
def test_numba_attention_reads_the_stored_rows(case, kv_type, nb_threads, monkeypatch):
    # f16 / q8_0 rows decoded one key at a time give exactly the f32 cache of the decoded rows, read in place
    nb = nb_threads
    n, start, cap, H, kv, hd, window = case
    rng = np.random.default_rng(n * 1000 + start)
    q = rng.standard_normal((n, H, hd), dtype=np.float32)
    kc = quant.kv_encode(rng.standard_normal((kv, cap, hd), dtype=np.float32), kv_type)
    vc = quant.kv_encode(rng.standard_normal((kv, cap, hd), dtype=np.float32), kv_type)
    if kv_type == "f16":   # every 7th key value a subnormal or zero, every 5th value any half below 16, both signs
        for rows, step, top in ((kc, 7, 0x0400), (vc, 5, 0x4C00)):
            bits = rows.view(np.uint16)[..., ::step]
            bits[...] = rng.integers(0, top, bits.shape) | rng.integers(0, 2, bits.shape) << 15
    kf, vf = quant.kv_decode(kc, kv_type, hd), quant.kv_decode(vc, kv_type, hd)
    want = nb.attention(q, kf, vf, start, 0.3, window)
    twin = numpy_ref.attention(q, kc, vc, start, 0.3, window)
    _no_full_decode(monkeypatch)
    got = nb.attention(q, kc, vc, start, 0.3, window)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, twin, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_numba_attention_copies_no_cache(kv_type, monkeypatch):
    # a decode step deep into a large cache makes no float32 copy of it (32 MiB per K or V here): what
    # it allocates is the output and the kernels' scratch, scores [g, context] (768 KiB) and a row of hd
    nb = pytest.importorskip("minigpt.kernels.numba_")
    cap, hd = 1 << 16, 64
    rng = np.random.default_rng(3)
    kc = quant.kv_encode(rng.standard_normal((2, cap, hd), dtype=np.float32), kv_type)
    vc = quant.kv_encode(rng.standard_normal((2, cap, hd), dtype=np.float32), kv_type)
    q = rng.standard_normal((1, 6, hd), dtype=np.float32)
    _no_full_decode(monkeypatch)
    nb.attention(q, kc, vc, cap - 1)   # compiled before measuring
    tracemalloc.start()
    try:
        got = nb.attention(q, kc, vc, cap - 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * cap * 4 + (64 << 10), peak
    assert np.isfinite(got).all()


# --- the C decoder against the NumPy decoder, per row type

# head_dim 32 (q8_0 needs a multiple of 32); odd groups: 6 query heads on 2 or 3 kv heads, MQA; Gemma-like
# models with sliding windows (their caches are rings below)
MODELS = {"gqa3": dict(dim=192, n_heads=6, n_kv_heads=2), "mha3": dict(dim=96, n_heads=3, n_kv_heads=3),
          "mqa": dict(dim=128, n_heads=4, n_kv_heads=1, wtype="Q8_0"),
          "gemma3": dict(arch="gemma3", n_layers=7, head_dim=32, window=4, n_kv_heads=1),
          "gemma3-gqa": dict(arch="gemma3", n_layers=3, n_heads=6, n_kv_heads=3, head_dim=32, window=5, wtype="Q8_0")}


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kv_type", TYPES)
@pytest.mark.parametrize("kind", MODELS)
def test_prefill_then_decode_matches_numpy_decoder(tmp_path, kind, kv_type, threads):
    m = tiny_model(tmp_path, **MODELS[kind])
    dec, ref = make_decoder(m), reference(m)
    cache, ref_cache = KVCache(m.config, 64, kv_type=kv_type), KVCache(m.config, 64, kv_type=kv_type)
    same(run(dec, IDS[:9], 0, cache, True), run(ref, IDS[:9], 0, ref_cache, True))
    for pos in range(9, len(IDS)):
        same(run(dec, [IDS[pos]], pos, cache), run(ref, [IDS[pos]], pos, ref_cache))
    n = len(IDS)
    for a, b in zip(cache.k + cache.v, ref_cache.k + ref_cache.v):
        assert a.dtype == quant.kv_row(kv_type, m.config.head_dim)[0]
        if TWIN:   # the same bytes stored (elsewhere the float32 K/V differ in last bits: q8_0 codes may flip)
            np.testing.assert_array_equal(a[:, :n], b[:, :n])
    same(run(dec, IDS[:2], n, cache, True), run(ref, IDS[:2], n, ref_cache, True))


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("backend", ["c", "numpy", "numba"])
def test_rings_and_truncate_for_every_type(tmp_path, monkeypatch, kv_type, backend):
    # a ring (slot t % cap) holds rows like any cache: the ring gives what a cache keeping everything
    # gives, long after wrapping; truncate then continue is a fresh prefill of the same tokens
    if backend == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(kvcache, "RING_SLACK", 7)
    path = tmp_path / "t.mgpt"
    tiny_model(tmp_path, **MODELS["gemma3"])
    m = minigpt.Model(path, backend=backend, precision="exact", kv_type=kv_type)
    ids = [int(i) for i in np.random.default_rng(0).integers(4, 250, 50)]
    ring, full = KVCache(m.config, 100, kv_type=kv_type), KVCache(m.config, 100, slack=1000, kv_type=kv_type)
    assert ring.ring == 4 + 7 and full.ring == 100
    got, want = m.engine.prefill(ids[:40], True, cache=ring), m.engine.prefill(ids[:40], True, cache=full)
    tol = 1e-4 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    for tok in ids[40:45]:
        np.testing.assert_allclose(m.engine.decode_step(tok, ring), m.engine.decode_step(tok, full), rtol=0, atol=tol)
    assert ring.truncate(43) == 43 and full.truncate(43) == 43
    again = m.engine.prefill(ids[43:50], cache=ring)
    np.testing.assert_allclose(again, m.engine.prefill(ids[43:50], cache=full), rtol=0, atol=tol)
    fresh = m.engine.prefill(ids[:50], cache=KVCache(m.config, 100, slack=1000, kv_type=kv_type))
    np.testing.assert_allclose(again, fresh, rtol=0, atol=tol)
    assert ring.truncate(20) == 0     # needs keys the ring has overwritten: start afresh


@pytest.mark.parametrize("kind", ["gqa3", "gemma3"])
def test_f16_and_q8_0_stay_close_to_f32(tmp_path, kind):
    # f16 rounds each K/V value by at most 2^-11 (5e-4) of itself, q8_0 by half a step, amax / 254 (4e-3)
    # of its block's largest value. Attention averages those errors over keys and the layers after it do
    # not amplify them much: the logits moved by at most 1e-4 (f16) and 2.3e-3 (q8_0) of their largest
    # magnitude on these five random models. The bounds are those per-value roundings (5e-4 and 1e-2, a
    # little over twice q8_0's own): a bound broken means an error beyond what the storage itself makes.
    m = tiny_model(tmp_path, **MODELS[kind])
    ids = [int(i) for i in np.random.default_rng(2).integers(4, 250, 40)]
    dec = make_decoder(m)
    want = run(dec, ids, 0, KVCache(m.config, 64, kv_type="f32"), True)
    scale = np.abs(want).max()
    for kv_type, rel in (("f16", 5e-4), ("q8_0", 1e-2)):
        got = run(dec, ids, 0, KVCache(m.config, 64, kv_type=kv_type), True)
        err = np.abs(got - want).max() / scale
        assert 0 < err < rel, (kv_type, err)
        assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.95


def test_precision_and_kv_type_together_match_numpy_decoder(tmp_path):
    # balanced precision (int8 / int16 activations) over a q8_0 cache: both roundings as the twins do
    m = tiny_model(tmp_path, **MODELS["mqa"])
    dec, ref = make_decoder(m, "balanced"), reference(m, "balanced")
    got = run(dec, IDS, 0, KVCache(m.config, 32, kv_type="q8_0"), True)
    same(got, run(ref, IDS, 0, KVCache(m.config, 32, kv_type="q8_0"), True), rel=3e-2)
    py = PyDecoder(m.config, prepare_weights(m.config, m.weights, numpy_ref, "balanced"), numpy_ref, m.engine.rope)
    close(run(py, IDS, 0, KVCache(m.config, 32, kv_type="q8_0"), True), got, rel=1e-5 if TWIN else 3e-2)


# --- bind: the cache's type checked once

def test_bind_takes_every_type_and_refuses_the_rest(tmp_path):
    m = tiny_model(tmp_path, **MODELS["gqa3"])
    dec = make_decoder(m, max_batch=4)
    caches = {t: KVCache(m.config, 16, kv_type=t) for t in TYPES}
    for t, c in caches.items():
        assert dec.bind(c.k, c.v).kv_type == t
    f32, f16, q8 = caches["f32"], caches["f16"], caches["q8_0"]
    ro = np.stack(f16.k)
    ro.flags.writeable = False
    bad = [((f16.k, f32.v), "mix row types"), ((q8.k, f16.v), "mix row types"),
           ((f16.k[:1] + f32.k[1:], f16.v), "mix row types"),
           (([a.astype(np.float64) for a in f32.k], f32.v), "not one of head_dim"),
           (([a[..., :-1].copy() for a in q8.k], q8.v), "not one of head_dim"),
           (([a.view(np.int8) for a in q8.k], q8.v), "not one of head_dim"),
           (([np.zeros((3,) + a.shape[1:], a.dtype) for a in f16.k], f16.v), "shape"),
           (([a.astype(">f2") for a in f16.k], f16.v), "not one of head_dim"),
           ((ro, f16.v), "read-only"), ((f16.k, f16.k), "overlap"),
           (([np.zeros(a.shape[:2] + (2 * a.shape[2],), np.float16)[..., ::2] for a in f16.k], f16.v), "contiguous"),
           ((f16.k, [np.ascontiguousarray(a[:, :8]) for a in f16.v]), "16 slots, v_cache 8")]
    for (k, v), msg in bad:
        with pytest.raises(ValueError, match=msg):
            dec.bind(k, v)


@pytest.mark.skipif(os.environ.get("MINIGPT_ISA") == "scalar", reason="already the scalar run")
def test_scalar_isa_in_subprocess():
    # the portable C slots (ops.c): this file's tests again on them
    r = run_python("-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not subprocess and not numba",
                   env={"MINIGPT_ISA": "scalar"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif(_core.isa() != "avx512vnni", reason="the AVX2 slots already ran")
def test_avx2_isa_in_subprocess():
    # AVX-512 CPUs run attention's inner loops in ops_avx512.c: this file's tests again on the AVX2 slots
    r = run_python("-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not subprocess and not numba",
                   env={"MINIGPT_ISA": "avx2"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
