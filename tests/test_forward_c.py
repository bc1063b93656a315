"""The C forward pass (LlamaForward, csrc/llama.c) against llama.forward and gemma3.forward over the
same C matmul."""

import os

import numpy as np
import pytest

import minigpt
from minigpt.convert import convert
from minigpt.engine import KVCache
from minigpt.model import FORWARD, llama

from subproc import run_python
from synthetic import tiny_llama

_core = pytest.importorskip("minigpt.kernels._core")

IDS = [1, 40, 72, 101, 108, 108, 111, 262, 44, 3, 100, 200, 250, 45, 7, 9, 33]


def make_forward(m, **kw):
    cfg = m.config
    weights = {name: (w.data, w.qtype) for name, w in m.weights.items()}
    gemma = cfg.arch == "gemma3"
    arch = dict(query_scale=cfg.query_scale, windows=[cfg.sliding_window * cfg.is_local(i) for i in range(cfg.n_layers)],
                qkv_bias=cfg.qkv_bias, qk_norm=gemma, post_norms=gemma, rope_neox=gemma,
                act="gelu_tanh" if gemma else "silu", embed_scale=cfg.dim ** 0.5 if gemma else 1.0)
    return _core.LlamaForward(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                              head_dim=cfg.head_dim, hidden_dim=cfg.hidden_dim, vocab_size=cfg.vocab_size,
                              norm_eps=cfg.norm_eps, rope_dim=cfg.rope_dim, tied_embeddings=cfg.tied_embeddings,
                              weights=weights, rope=m.engine.rope, **(arch | kw))


def reference(m, ids, start, cache, all_logits):
    return FORWARD[m.config.arch](m.config, m.weights, _core, (cache.k, cache.v), ids, start, m.engine.rope,
                                  all_logits)


def close(got, ref, rel=1e-4):
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=rel * np.abs(ref).max())


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
def test_prefill_then_decode_matches_numpy_path(tmp_path, kind, threads):
    m = tiny_model(tmp_path, **MODELS[kind])
    fwd = make_forward(m)
    ref_cache, cache = KVCache(m.config, 64), KVCache(m.config, 64)
    close(fwd.forward(IDS[:9], 0, cache.k, cache.v, all_logits=True),
          reference(m, IDS[:9], 0, ref_cache, True))
    for pos in range(9, len(IDS)):    # incremental decode, one token at a time
        close(fwd.forward([IDS[pos]], pos, cache.k, cache.v), reference(m, [IDS[pos]], pos, ref_cache, False))
    n = len(IDS)
    np.testing.assert_allclose(np.stack(cache.k)[:, :, :n], np.stack(ref_cache.k)[:, :, :n], atol=1e-5)
    np.testing.assert_allclose(np.stack(cache.v)[:, :, :n], np.stack(ref_cache.v)[:, :, :n], atol=1e-5)
    # a 2-token step: the decode matmul path with more than one query
    close(fwd.forward(IDS[:2], n, cache.k, cache.v, all_logits=True),
          reference(m, IDS[:2], n, ref_cache, True))


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("max_batch", [1, 3, 5])
def test_chunked_prompt_longer_than_max_batch(tmp_path, max_batch, threads):
    m = tiny_model(tmp_path, wtype="Q4_1", tied=False)
    fwd = make_forward(m, max_batch=max_batch)
    ref = reference(m, IDS, 0, KVCache(m.config, 32), True)
    cache = KVCache(m.config, 32)
    close(fwd.forward(IDS, 0, cache.k, cache.v, all_logits=True), ref)
    cache = KVCache(m.config, 32)
    last = fwd.forward(np.array(IDS, dtype=np.int32), 0, cache.k, cache.v)
    close(last, ref[-1:])
    out = np.zeros((1, m.config.vocab_size), np.float32)
    assert fwd.forward([5], len(IDS), cache.k, cache.v, out=out) is out


def test_forward_runs_at_the_end_of_the_cache(tmp_path):
    m = tiny_model(tmp_path)
    fwd = make_forward(m, max_batch=4)
    cache, ref_cache = KVCache(m.config, 10), KVCache(m.config, 10)
    ids = IDS[:10]
    close(fwd.forward(ids, 0, cache.k, cache.v, all_logits=True), reference(m, ids, 0, ref_cache, True))


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_long_context_decode_splits_head_groups(tmp_path, threads):
    # one kv head and enough keys that decode attention is cut into parts of the head group
    m = tiny_model(tmp_path, dim=256, n_heads=4, n_kv_heads=1, ctx=512)
    fwd = make_forward(m)
    ids = (IDS * 20)[:300]
    cache, ref_cache = KVCache(m.config, 512), KVCache(m.config, 512)
    close(fwd.forward(ids, 0, cache.k, cache.v), reference(m, ids, 0, ref_cache, False))
    for pos in range(300, 304):
        close(fwd.forward([pos % 200], pos, cache.k, cache.v), reference(m, [pos % 200], pos, ref_cache, False))


def test_fast_mode_stays_close(tmp_path):
    m = tiny_model(tmp_path, wtype="Q8_0")
    fwd = make_forward(m, matmul="fast")
    assert fwd.matmul == "fast"
    ref = reference(m, IDS, 0, KVCache(m.config, 32), True)
    cache = KVCache(m.config, 32)
    fast = fwd.forward(IDS, 0, cache.k, cache.v, all_logits=True)
    close(fast, ref, rel=3e-2)
    assert not np.array_equal(fast, ref)    # int8 activations really were used
    fwd.set_matmul("exact")
    cache = KVCache(m.config, 32)
    close(fwd.forward(IDS, 0, cache.k, cache.v, all_logits=True), ref)


# --- bad input: a ValueError naming the problem, never a crash

def test_bad_forward_arguments(tmp_path):
    m = tiny_model(tmp_path)
    fwd = make_forward(m, max_batch=4)
    V = m.config.vocab_size
    c = KVCache(m.config, 16)
    k, v = np.stack(c.k), np.stack(c.v)   # one array [n_layers, n_kv_heads, n_ctx, head_dim] each
    big = KVCache(m.config, 500)
    bad = [
        (([V], 0, k, v), "out of range"), (([-1], 0, k, v), "out of range"), (([], 0, k, v), "non-empty"),
        (([[1, 2]], 0, k, v), "1-D"), (([1.5], 0, k, v), "integers"), (("ab", 0, k, v), "1-D"), ((["a"], 0, k, v), "integers"),
        (([1], -1, k, v), "start"), (([1], 1.0, k, v), "start"), (([1], True, k, v), "start"),
        (([1] * 3, 14, k, v), "do not fit"), (([1], 16, k, v), "do not fit"),
        (([1], 0, k[:1], v), "list of 2 arrays"), (([1], 0, k, np.ascontiguousarray(v[:, :, :8])), "16 slots, v_cache 8"),
        (([1], 0, k[0], v), "list of 2 arrays"), (([1], 0, list(k), list(v)[:1]), "list of 2 arrays"),
        (([1], 0, [k[0], k[1][..., :3]], v), "shape"),
        (([1], 0, k.astype(np.float64), v), "float32"), (([1], 0, k, v.astype(np.float16)), "float32"),
        (([1], 0, np.asfortranarray(k), v), "shape|contiguous"),
        (([1], 0, k, k), "overlap"),
        (([1], 499, big.k, big.v), "rope"),
    ]
    ro = k.copy()
    ro.flags.writeable = False
    bad.append((([1], 0, ro, v), "read-only"))
    swapped = k.astype(k.dtype.newbyteorder())
    bad.append((([1], 0, swapped, v), "float32"))
    strided = np.zeros(k.shape[:3] + (2 * k.shape[3],), np.float32)[..., ::2]
    bad.append((([1], 0, strided, v), "contiguous"))
    for args, msg in bad:
        with pytest.raises(ValueError, match=msg):
            fwd.forward(*args)
    for out, msg in [(np.zeros((2, V), np.float32), "shape"), (np.zeros((1, V), np.float64), "float32"),
                     (np.zeros((1, 2 * V), np.float32)[:, ::2], "contiguous"), ([0.0] * V, "numpy array")]:
        with pytest.raises(ValueError, match=msg):
            fwd.forward([1], 0, k, v, out=out)
    with pytest.raises(ValueError, match="overlap"):
        fwd.forward([1], 0, k, v, out=k.reshape(-1)[:V].reshape(1, V))
    with pytest.raises(ValueError, match="mode"):
        fwd.set_matmul("int4")
    fwd.forward([1, 2, 3], 0, k, v)   # still usable afterwards


def test_bad_construction(tmp_path):
    m = tiny_model(tmp_path, wtype="Q4_1", tied=False)
    cfg = m.config
    good = {name: (w.data, w.qtype) for name, w in m.weights.items()}

    def build(weights=good, **kw):
        args = dict(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                    head_dim=cfg.head_dim, hidden_dim=cfg.hidden_dim, vocab_size=cfg.vocab_size,
                    norm_eps=cfg.norm_eps, rope_dim=cfg.rope_dim, weights=weights, rope=m.engine.rope)
        args.update(kw)
        return _core.LlamaForward(**args)

    build()
    wq = good["layers.0.wq"][0]
    cases = [
        (dict(weights={k: v for k, v in good.items() if k != "layers.1.w_up"}), "missing weight 'layers.1.w_up'"),
        (dict(weights={k: v for k, v in good.items() if k != "output"}), "missing weight 'output'"),
        (dict(weights={**good, "layers.0.wq": (wq, "q4_0")}), "layers.0.wq"),
        (dict(weights={**good, "layers.0.wq": (wq[:-1], "q4_1")}), "logical shape"),
        (dict(weights={**good, "layers.0.wq": (wq, "q9")}), "unknown qtype"),
        (dict(weights={**good, "layers.0.wq": wq}), "pair"),
        (dict(weights={**good, "layers.0.wk": good["layers.0.wq"]}), "layers.0.wk has logical shape"),
        (dict(weights={**good, "layers.1.attn_norm": (good["layers.1.attn_norm"][0], "f16")}), "must be f32"),
        (dict(weights={**good, "output_norm": (np.zeros(cfg.dim + 1, np.float32), "f32")}), "output_norm has shape"),
        (dict(weights={**good, "output_norm": (np.zeros(cfg.dim, np.float64), "f32")}), "float32"),
        (dict(weights=list(good.items())), "dict"),
        (dict(n_layers=cfg.n_layers + 1), "missing weight 'layers.2"),
        (dict(dim=cfg.dim * 2), "shape"),
        (dict(vocab_size=cfg.vocab_size - 1), "shape"),
        (dict(n_kv_heads=3), "multiple"),
        (dict(rope_dim=cfg.head_dim + 2), "rope_dim"),
        (dict(rope_dim=3), "rope_dim"),
        (dict(max_batch=0), "max_batch"),
        (dict(max_batch=2.0), "max_batch"),
        (dict(head_dim=-4), "head_dim"),
        (dict(head_dim=2048), "head_dim 2048 is above"),
        (dict(norm_eps=float("nan")), "norm_eps"),
        (dict(rope=m.engine.rope[0][0]), "rope"),
        (dict(rope=m.engine.rope[:1]), "one per layer"),
        (dict(rope=(m.engine.rope[0][0][:, :-1], m.engine.rope[0][1])), "rope cos"),
        (dict(rope=(m.engine.rope[0][0], m.engine.rope[0][1][:5])), "rope sin"),
        (dict(matmul="int4"), "mode"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            build(**kw)


# --- the real model

@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_smollm2_matches_numpy_path(smollm2_mgpt, threads):
    m = minigpt.Model(smollm2_mgpt, backend="c", threads=1, n_ctx=256)
    fwd = make_forward(m, max_batch=32)
    ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 4)
    assert 32 < len(ids) < 80
    ref_cache, cache = KVCache(m.config, 256), KVCache(m.config, 256)
    close(fwd.forward(ids, 0, cache.k, cache.v, all_logits=True), reference(m, ids, 0, ref_cache, True))
    for pos, tok in enumerate([260, 1300, 42, 7], start=len(ids)):
        close(fwd.forward([tok], pos, cache.k, cache.v), reference(m, [tok], pos, ref_cache, False))


# --- the inner steps alone: attention at odd sizes, the vectorized exp

def attention_ref(q, kc, vc, start, scale, window=0):
    """llama.attention with any scale and an optional sliding window, in float64."""
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
    got = _core._attention(q, kc, vc, start, scale, window)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * max(1.0, np.sqrt(hd)))
    # the model's own reference agrees
    np.testing.assert_allclose(got, llama.attention(q, kc, vc, start, scale, window), rtol=0, atol=2e-5)


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
    np.testing.assert_allclose(_core._attention(q, kr, vr, start, 0.3, window), ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(llama.attention(q, kr, vr, start, 0.3, window), ref, rtol=0, atol=2e-5)
    if start + n > cap - extra - 1:   # one slot short of the ring, and short of the whole: refused
        with pytest.raises(ValueError, match="bad attention shapes"):
            short = np.ascontiguousarray(kr[:, :cap - extra - 1])
            _core._attention(q, short, short.copy(), start, 0.3, window)


def test_attention_keeps_large_logits_finite():
    # logits far apart: the online softmax must rescale, never overflow or divide by zero
    q = np.full((3, 2, 16), 30.0, np.float32)
    kc = np.zeros((1, 300, 16), np.float32)
    kc[0, :, 0] = np.linspace(-10, 10, 300, dtype=np.float32)
    vc = np.random.default_rng(1).standard_normal((1, 300, 16), dtype=np.float32)
    got = _core._attention(q, kc, vc, 297, 0.25)
    np.testing.assert_allclose(got, attention_ref(q, kc, vc, 297, 0.25), rtol=0, atol=1e-5)


def ulps(got, ref64):
    """distance in float32 ulps between got and the float64 reference (denormals: ulp 2^-149)."""
    ulp = np.spacing(np.maximum(np.abs(ref64.astype(np.float32)), np.float32(np.finfo(np.float32).tiny)))
    return np.abs(got.astype(np.float64) - ref64) / ulp.astype(np.float64)


def test_vectorized_exp_matches_expf():
    rng = np.random.default_rng(3)
    x = np.concatenate([np.linspace(-110, 90, 200_001, dtype=np.float32), rng.uniform(-88, 88, 100_000).astype(np.float32),
                        rng.uniform(-1, 1, 100_000).astype(np.float32), np.float32([0, -0.0, 1e-30, -1e-30])])
    got, ref = _core._exp(x), np.exp(x.astype(np.float64))
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
