"""The C decoder (CDecoder, csrc/decoder.c) against minigpt/model/decoder.py over the same C kernels.

On x86 (AVX2, AVX512-VNNI) the NumPy decoder and the NumPy kernels round every float as the compiled
ones do (kernels/fp32.py), so there the two give the same bits at every precision; the portable C run
(MINIGPT_ISA=scalar, in a subprocess below) is held to float32 tolerances instead.
"""

import os

import numpy as np
import pytest

import minigpt
from minigpt.convert import convert
from minigpt.engine import KVCache, PyDecoder
from minigpt.engine.engine import prepare_weights
from minigpt.kernels import fp32, numpy_ref

from subproc import run_python
from synthetic import tiny_llama

_core = pytest.importorskip("minigpt.kernels._core")
_cdecoder = pytest.importorskip("minigpt.engine._cdecoder")

IDS = [1, 40, 72, 101, 108, 108, 111, 262, 44, 3, 100, 200, 250, 45, 7, 9, 33]
TWIN = _core.isa() in ("avx2", "avx512vnni")   # the instruction sets the NumPy twins round as


def make_decoder(m, precision="exact", max_batch=64, weights=None):
    w = weights or prepare_weights(m.config, m.weights, _core, precision)
    return _cdecoder.CDecoder(m.config, {n: (x.data, x.qtype, x.bits) for n, x in w.items()}, m.engine.rope,
                              max_batch)


def reference(m, precision="exact"):
    """The NumPy decoder over the C kernels, with CDecoder's interface."""
    return PyDecoder(m.config, prepare_weights(m.config, m.weights, _core, precision), _core, m.engine.rope)


def run(dec, ids, start, cache, all_logits=False):
    """dec.forward over a KVCache, in chunks of the decoder's max_batch (as the engine does)."""
    bound, outs = cache.bound(dec), []
    step = getattr(dec, "max_batch", len(ids))
    for s in range(0, len(ids), step):
        outs.append(dec.forward(ids[s:s + step], start + s, bound, all_logits))
    return np.concatenate(outs) if all_logits else outs[-1]


def close(got, ref, rel=1e-4):
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=rel * np.abs(ref).max())


def same(got, ref, rel=1e-4):
    """The C decoder's output is the NumPy decoder's: the same bits where the twins apply, if both ran
    the same chunks (float32 matmuls sum in another order below one GEMM panel of inputs than above)."""
    if TWIN:
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, ref)
    else:
        close(got, ref, rel)


@pytest.fixture
def threads(request):
    before = _core.get_threads()
    _core.set_threads(request.param)
    yield request.param
    _core.set_threads(before)


def tiny_model(tmp_path, wtype="F32", **kw):
    src, out = tmp_path / "t.gguf", tmp_path / "t.mgpt"
    tiny_llama(src, wtype=wtype, **kw)
    convert(src, out, "f32" if wtype == "F32" else None)
    return minigpt.Model(out, backend="c", threads=1)


MODELS = {"tied": dict(), "untied-freqs": dict(tied=False, rope_freqs=True), "mha": dict(n_kv_heads=4),
          "mqa": dict(n_kv_heads=1), "q4_1": dict(wtype="Q4_1"), "q4_0": dict(wtype="Q4_0", tied=False),
          "q8_0": dict(wtype="Q8_0"), "f16": dict(wtype="F16"), "qkv-bias": dict(qkv_bias=True),
          "gemma3": dict(arch="gemma3", n_layers=7, head_dim=24, window=4, n_kv_heads=1),
          "gemma3-q8_0": dict(arch="gemma3", n_layers=3, head_dim=32, window=5, wtype="Q8_0")}


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kind", MODELS)
def test_prefill_then_decode_matches_numpy_decoder(tmp_path, kind, threads):
    m = tiny_model(tmp_path, **MODELS[kind])
    dec, ref = make_decoder(m), reference(m)
    ref_cache, cache = KVCache(m.config, 64), KVCache(m.config, 64)
    same(run(dec, IDS[:9], 0, cache, True), run(ref, IDS[:9], 0, ref_cache, True))
    for pos in range(9, len(IDS)):    # incremental decode, one token at a time
        same(run(dec, [IDS[pos]], pos, cache), run(ref, [IDS[pos]], pos, ref_cache))
    n = len(IDS)
    for a, b in ((cache.k, ref_cache.k), (cache.v, ref_cache.v)):   # the default f16 rows (all types: test_kv_cache)
        a, b = np.stack(a)[:, :, :n].astype(np.float32), np.stack(b)[:, :, :n].astype(np.float32)
        if TWIN:
            np.testing.assert_array_equal(a, b)
        # off x86 a half may round the other way (2^-11 of it), which moves the next layers' keys a little
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    # a 2-token step: the decode matmul path with more than one query
    same(run(dec, IDS[:2], n, cache, True), run(ref, IDS[:2], n, ref_cache, True))


@pytest.mark.parametrize("precision", ["balanced", "fast"])
@pytest.mark.parametrize("kind", ["q4_1", "q8_0", "gemma3-q8_0"])
def test_every_precision_matches_numpy_decoder(tmp_path, kind, precision):
    # the same activation rounding in both decoders: int8 (and int16 for balanced's w_down) blocks
    m = tiny_model(tmp_path, **MODELS[kind])
    dec, ref = make_decoder(m, precision), reference(m, precision)
    got, want = run(dec, IDS, 0, KVCache(m.config, 32), True), run(ref, IDS, 0, KVCache(m.config, 32), True)
    rel = 3e-2   # off x86, int8 rounding amplifies float32's last-bit differences (a code flips near an edge)
    same(got, want, rel=rel)
    exact = run(make_decoder(m), IDS, 0, KVCache(m.config, 32), True)
    assert not np.array_equal(got, exact)    # quantized activations really were used
    # and the oracle on its own kernels computes the same, but for the head's last bits: a float32 head
    # sums in BLAS's order, and this vocabulary (not a multiple of 8 rows) is not in the x8 layout
    py = PyDecoder(m.config, prepare_weights(m.config, m.weights, numpy_ref, precision), numpy_ref, m.engine.rope)
    close(run(py, IDS, 0, KVCache(m.config, 32), True), want, rel=1e-5 if TWIN else rel)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("max_batch", [1, 3, 5])
def test_chunked_prompt(tmp_path, max_batch, threads):
    m = tiny_model(tmp_path, wtype="Q4_1", tied=False)
    dec = make_decoder(m, max_batch=max_batch)
    ref = run(reference(m), IDS, 0, KVCache(m.config, 32), True)
    close(run(dec, IDS, 0, KVCache(m.config, 32), True), ref)
    cache = KVCache(m.config, 32)
    close(run(dec, IDS, 0, cache), ref[-1:])
    out = np.zeros((1, m.config.vocab_size), np.float32)
    assert dec.forward([5], len(IDS), cache.bound(dec), out=out) is out


def test_forward_runs_at_the_end_of_the_cache(tmp_path):
    m = tiny_model(tmp_path)
    dec = make_decoder(m, max_batch=4)
    ids = IDS[:10]
    close(run(dec, ids, 0, KVCache(m.config, 10), True), run(reference(m), ids, 0, KVCache(m.config, 10), True))


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_long_context_decode_splits_head_groups(tmp_path, threads):
    # one kv head and enough keys that decode attention is cut into parts of the head group
    m = tiny_model(tmp_path, dim=256, n_heads=4, n_kv_heads=1, ctx=512)
    dec, ref = make_decoder(m, max_batch=512), reference(m)
    ids = (IDS * 20)[:300]
    cache, ref_cache = KVCache(m.config, 512), KVCache(m.config, 512)
    same(run(dec, ids, 0, cache), run(ref, ids, 0, ref_cache))
    for pos in range(300, 304):
        same(run(dec, [pos % 200], pos, cache), run(ref, [pos % 200], pos, ref_cache))


# --- bad input: a ValueError naming the problem, never a crash

def test_bad_forward_arguments(tmp_path):
    m = tiny_model(tmp_path)
    dec = make_decoder(m, max_batch=4)
    V = m.config.vocab_size
    c = KVCache(m.config, 16, kv_type="f32")   # float32, so that a slice of it can be passed as `out`
    bound = dec.bind(c.k, c.v)
    bad = [
        (([V], 0), "out of range"), (([-1], 0), "out of range"), (([], 0), "1-D"), (([[1, 2]], 0), "1-D"),
        (([1.5], 0), "integers"), ((["a"], 0), "integers"), (([1] * 5, 0), "1..4 tokens"),
        (([1], -1), "start"), (([1], 1.0), "start"), (([1], True), "start"), (([1], "0"), "start"),
        (([1] * 3, 14), "do not fit"), (([1], 16), "do not fit"),
    ]
    for args, msg in bad:
        with pytest.raises(ValueError, match=msg):
            dec.forward(*args, bound)
    with pytest.raises(TypeError):
        dec.forward([1], 0, (c.k, c.v))   # an unbound cache
    with pytest.raises(ValueError, match="another decoder"):
        dec.forward([1], 0, make_decoder(m).bind(c.k, c.v))
    big = KVCache(m.config, 500)
    with pytest.raises(ValueError, match="rope"):
        dec.forward([1], 499, dec.bind(big.k, big.v))
    for out, msg in [(np.zeros((2, V), np.float32), "shape"), (np.zeros((1, V), np.float64), "float32"),
                     (np.zeros((1, 2 * V), np.float32)[:, ::2], "contiguous"), ([0.0] * V, "numpy array"),
                     (c.k[0].reshape(-1)[:V].reshape(1, V), "overlap")]:
        with pytest.raises(ValueError, match=msg):
            dec.forward([1], 0, bound, out=out)
    dec.forward([1, 2, 3], 0, bound)   # still usable afterwards


def test_bad_cache_is_refused_when_bound(tmp_path):
    m = tiny_model(tmp_path)
    dec = make_decoder(m, max_batch=4)
    c = KVCache(m.config, 16)
    k, v = np.stack(c.k), np.stack(c.v)   # one array [n_layers, n_kv_heads, n_ctx, head_dim] each
    ro = k.copy()
    ro.flags.writeable = False
    strided = np.zeros(k.shape[:3] + (2 * k.shape[3],), np.float32)[..., ::2]
    bad = [((k[:1], v), "list of 2 arrays"), ((k, np.ascontiguousarray(v[:, :, :8])), "16 slots, v_cache 8"),
           ((k[0], v), "list of 2 arrays"), ((list(k), list(v)[:1]), "list of 2 arrays"),
           (([k[0], k[1][..., :3]], v), "shape|contiguous|not one of head_dim"),
           ((k.astype(np.float64), v), "not one of head_dim"),   # the row types: tests/test_kv_cache.py
           ((k, v.astype(np.float16 if k.dtype != np.float16 else np.float32)), "mix row types"),
           ((np.asfortranarray(k), v), "shape|contiguous"),
           ((k, k), "overlap"), ((ro, v), "read-only"), ((k.astype(k.dtype.newbyteorder()), v), "not one of head_dim"),
           ((strided, v), "contiguous"),
           (([m.weights["layers.0.attn_norm"].data.reshape(1, 1, -1)] * 2, v), "3-D|shape|read-only|not one of")]
    for (kc, vc), msg in bad:
        with pytest.raises(ValueError, match=msg):
            dec.bind(kc, vc)


def test_bad_construction(tmp_path):
    m = tiny_model(tmp_path, wtype="Q4_1", tied=False)
    good = {n: (w.data, w.qtype, w.bits) for n, w in prepare_weights(m.config, m.weights, _core, "exact").items()}
    wq = good["layers.0.wq"][0]

    def build(weights=good, rope=m.engine.rope, max_batch=8):
        return _cdecoder.CDecoder(m.config, weights, rope, max_batch)

    build()
    cases = [
        (dict(weights={k: v for k, v in good.items() if k != "layers.1.w_up"}), "missing weight 'layers.1.w_up'"),
        (dict(weights={k: v for k, v in good.items() if k != "output"}), "missing weight 'output'"),
        (dict(weights={**good, "layers.0.wq": (wq, "q4_0", 32)}), "layers.0.wq"),
        (dict(weights={**good, "layers.0.wq": (wq[:-1], "q4_1", 32)}), "logical shape"),
        (dict(weights={**good, "layers.0.wq": (wq, "q9", 32)}), "unknown qtype"),
        (dict(weights={**good, "layers.0.wq": (wq, "q4_1", 12)}), "bits"),
        (dict(weights={**good, "layers.0.wq": (wq, "q4_1")}), "bits"),
        (dict(weights={**good, "layers.0.wk": good["layers.0.wq"]}), "layers.0.wk has logical shape"),
        (dict(weights={**good, "layers.1.attn_norm": (good["layers.1.attn_norm"][0], "f16", 32)}), "must be f32"),
        (dict(weights={**good, "output_norm": (np.zeros(m.config.dim + 1, np.float32), "f32", 32)}), "shape"),
        (dict(weights={**good, "output_norm": (np.zeros(m.config.dim, np.float64), "f32", 32)}), "float32"),
        (dict(max_batch=0), "max_batch"),
        (dict(rope=m.engine.rope[:1]), "one .* per layer"),
        (dict(rope=[(c[:, :-1], s) for c, s in m.engine.rope]), "rope cos"),
    ]
    if _core.x8_supported("q4_1"):
        packed = _core.pack_x8(wq, "q4_1")
        cases.append((dict(weights={**good, "layers.0.wq": (packed, "q4_1x8", 32)}), "quantized activations"))
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            build(**kw)
    with pytest.raises(TypeError):
        build(weights=list(good.items()))


# --- the real model

@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_smollm2_matches_numpy_decoder(smollm2_mgpt, threads):
    m = minigpt.Model(smollm2_mgpt, backend="c", threads=1, n_ctx=256)
    dec, ref = make_decoder(m, max_batch=128), reference(m)
    ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 4)
    assert 32 < len(ids) < 80
    ref_cache, cache = KVCache(m.config, 256), KVCache(m.config, 256)
    # off x86, an f16 cache (the default) may round a key the other way (2^-11 of it) in one decoder and
    # not the other: seen 4.5e-4 of the logit range, where float32 caches stay within 1e-4
    rel = 1e-4 if cache.kv_type == "f32" else 2e-3
    same(run(dec, ids, 0, cache, True), run(ref, ids, 0, ref_cache, True), rel)
    for pos, tok in enumerate([260, 1300, 42, 7], start=len(ids)):
        same(run(dec, [tok], pos, cache), run(ref, [tok], pos, ref_cache), rel)


# --- the inner steps alone: attention at odd sizes, the vectorized exp

def attention_ref(q, kc, vc, start, scale, window=0):
    """numpy_ref.attention with any scale and an optional sliding window, in float64."""
    n, H, hd = q.shape
    kv = kc.shape[0]
    T = start + n
    qg = q.astype(np.float64).reshape(n, kv, H // kv, hd).transpose(1, 2, 0, 3)
    scores = qg @ kc[:, None, :T].astype(np.float64).swapaxes(-1, -2) * scale
    pos, key = start + np.arange(n)[:, None], np.arange(T)[None, :]
    scores[..., (key > pos) | ((key <= pos - window) if window else False)] = -np.inf
    p = np.exp(scores - scores.max(-1, keepdims=True))
    out = (p / p.sum(-1, keepdims=True)) @ vc[:, None, :T].astype(np.float64)
    return out.transpose(2, 0, 1, 3).reshape(n, H * hd)


# (n, start, n_ctx, n_heads, n_kv_heads, head_dim, window): head_dim not a multiple of 8, n not a
# multiple of the query tile, groups of 1, 3, 4, a cache longer than needed, chunks after earlier tokens
ATTN_CASES = [(1, 0, 1, 1, 1, 8, 0), (5, 0, 9, 3, 1, 7, 0), (13, 4, 40, 6, 2, 20, 0), (9, 0, 9, 4, 4, 64, 0),
              (17, 70, 100, 12, 3, 64, 0), (1, 150, 200, 9, 3, 64, 0), (3, 200, 256, 8, 2, 256, 0),
              (33, 0, 40, 2, 2, 3, 0), (70, 31, 128, 4, 1, 33, 0), (1, 90, 99, 16, 1, 136, 0),
              (24, 60, 96, 6, 2, 64, 5), (1, 80, 90, 8, 2, 32, 16), (40, 0, 64, 4, 1, 24, 64)]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "n{}-s{}-c{}-h{}-kv{}-d{}-w{}".format(*c))
def test_attention_odd_sizes(case, threads):
    n, start, n_ctx, H, kv, hd, window = case
    rng = np.random.default_rng(n * 1000 + start)
    q = rng.standard_normal((n, H, hd), dtype=np.float32)
    kc = rng.standard_normal((kv, n_ctx, hd), dtype=np.float32)
    vc = rng.standard_normal((kv, n_ctx, hd), dtype=np.float32)
    kc[:, start + n:] = vc[:, start + n:] = np.nan    # slots past the queries must never be read
    scale = 1.0 / np.sqrt(hd) if window == 0 else 0.7
    ref = attention_ref(q, kc, vc, start, scale, window)
    got = _core.attention(q, kc, vc, start, scale, window)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * max(1.0, np.sqrt(hd)))
    # the NumPy backend's attention agrees: to the bit where it twins the AVX2 slots
    twin = numpy_ref.attention(q, kc, vc, start, scale, window)
    if TWIN:
        np.testing.assert_array_equal(got, twin)
    np.testing.assert_allclose(twin, ref, rtol=0, atol=2e-5)


def as_ring(cache, T, cap):
    """Positions [0, T) of a linear cache [kv, >= T, hd] written in order into a ring of cap slots."""
    ring = np.full(cache.shape[:1] + (cap,) + cache.shape[2:], np.nan, np.float32)
    for t in range(T):
        ring[:, t % cap] = cache[:, t]
    return ring


# (n, start, n_heads, n_kv_heads, head_dim, window, extra slots beyond the least ring)
RING_CASES = [(1, 40, 4, 1, 32, 8, 0), (6, 37, 6, 2, 24, 5, 0), (6, 37, 6, 2, 24, 5, 3), (70, 130, 4, 1, 33, 16, 7),
              (1, 1000, 8, 2, 64, 100, 0), (3, 2, 2, 1, 16, 4, 0)]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("case", RING_CASES, ids=lambda c: "n{}-s{}-h{}-kv{}-d{}-w{}-x{}".format(*c))
def test_attention_over_a_ring(case, threads):
    # a sliding-window layer's ring of window + n - 1 slots gives the attention of the whole cache
    n, start, H, kv, hd, window, extra = case
    rng = np.random.default_rng(n + start)
    q = rng.standard_normal((n, H, hd), dtype=np.float32)
    kc = rng.standard_normal((kv, start + n, hd), dtype=np.float32)
    vc = rng.standard_normal((kv, start + n, hd), dtype=np.float32)
    ref = attention_ref(q, kc, vc, start, 0.3, window)
    cap = window + n - 1 + extra
    kr, vr = as_ring(kc, start + n, cap), as_ring(vc, start + n, cap)
    got, twin = _core.attention(q, kr, vr, start, 0.3, window), numpy_ref.attention(q, kr, vr, start, 0.3, window)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(twin, ref, rtol=0, atol=2e-5)
    if TWIN:
        np.testing.assert_array_equal(got, twin)
    if start + n > cap - extra - 1:   # one slot short of the ring, and short of the whole: refused
        with pytest.raises(ValueError, match="bad attention shapes"):
            short = np.ascontiguousarray(kr[:, :cap - extra - 1])
            _core.attention(q, short, short.copy(), start, 0.3, window)


def test_attention_keeps_large_logits_finite():
    # logits far apart: the online softmax must rescale, never overflow or divide by zero
    q = np.full((3, 2, 16), 30.0, np.float32)
    kc = np.zeros((1, 300, 16), np.float32)
    kc[0, :, 0] = np.linspace(-10, 10, 300, dtype=np.float32)
    vc = np.random.default_rng(1).standard_normal((1, 300, 16), dtype=np.float32)
    got = _core.attention(q, kc, vc, 297, 0.25)
    np.testing.assert_allclose(got, attention_ref(q, kc, vc, 297, 0.25), rtol=0, atol=1e-5)
    if TWIN:
        np.testing.assert_array_equal(got, numpy_ref.attention(q, kc, vc, 297, 0.25))


def ulps(got, ref64):
    """distance in float32 ulps between got and the float64 reference (denormals: ulp 2^-149)."""
    ulp = np.spacing(np.maximum(np.abs(ref64.astype(np.float32)), np.float32(np.finfo(np.float32).tiny)))
    return np.abs(got.astype(np.float64) - ref64) / ulp.astype(np.float64)


def test_vectorized_exp_matches_expf():
    rng = np.random.default_rng(3)
    x = np.concatenate([np.linspace(-110, 90, 200_001, dtype=np.float32), rng.uniform(-88, 88, 100_000).astype(np.float32),
                        rng.uniform(-1, 1, 100_000).astype(np.float32), np.float32([0, -0.0, 1e-30, -1e-30])])
    got, ref = _core._exp(x), np.exp(x.astype(np.float64))
    if TWIN:   # the NumPy twin of exp8 (kernels/fp32.py)
        np.testing.assert_array_equal(got, fp32.exp(x))
    normal = (ref > np.finfo(np.float32).tiny) & (ref < np.finfo(np.float32).max)
    assert ulps(got[normal], ref[normal]).max() <= 2.0
    sub = (ref > 0) & ~normal & (ref < 1)     # results in the subnormal range: absolute error < 2 ulp there
    assert np.all(np.abs(got[sub] - ref[sub]) <= 2 * 2.0 ** -149)
    special = np.float32([-np.inf, -1e30, -200, -104, -103.98, 88.73, 89, 1e30, np.inf, np.nan])
    got = _core._exp(special)
    np.testing.assert_array_equal(got[:4], 0.0)
    assert 0 <= got[4] <= 2.0 ** -148
    np.testing.assert_array_equal(got[5:9], np.inf)
    assert np.isnan(got[9])
    for n in range(0, 20):    # every tail length, in place and out of place
        y = np.arange(n, dtype=np.float32) - 5
        np.testing.assert_allclose(_core._exp(y), np.exp(y), rtol=3e-7)


@pytest.mark.skipif(os.environ.get("MINIGPT_ISA") == "scalar", reason="already the scalar run")
def test_scalar_isa_in_subprocess():
    # the portable C path (non-AVX2 CPUs): this file's tests again on it, the real model's included
    r = run_python("-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "not subprocess",
                   env={"MINIGPT_ISA": "scalar"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif(_core.isa() != "avx512vnni", reason="the AVX2 slots already ran")
def test_avx2_attention_in_subprocess():
    # AVX-512 CPUs run attention's inner loops in ops_avx512.c: the AVX2 slots, which the NumPy twin
    # holds to the bit as well, run this file's attention tests here
    r = run_python("-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "attention and not subprocess",
                   env={"MINIGPT_ISA": "avx2"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
