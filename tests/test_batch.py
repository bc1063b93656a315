"""Engine.forward_batch: several sequences, each with its own KV cache, in shared forward passes.

A batch must give each sequence what Engine.prefill gives it alone: the same logits for its last token
and the same cache contents. How close "the same" is depends on the matmul kernels, which all compute
out[i, :] from x[i, :] alone, but not always in an order independent of how many rows x has:

- int8 activations (matmul_q8, and matmul_q16 over x8-packed weights: csrc/packed_x86.h, quants_avx2.c)
  round every row the same way whatever the row count: per row, block after block, the same floats
  (the 4-input kernels are the 1-input steps side by side). So at precision 'fast' over int8-capable
  weights (q8_0, q4_0, q4_1) the C batch is bit for bit the sequences alone; so is the NumPy twin.
- float32 activations (matmul: every matrix at 'exact', the output head at 'balanced', and any
  matrix whose weights have no int kernels, f32 / f16) take csrc/matmul.c's dot products per row
  below one panel of the GEMM (mi rows: 16 with AVX2, 8 in portable C) and the packed GEMM from
  there, which sums in another order (column chunk after chunk). A row alone and the same row among
  fewer than mi rows are summed alike.

So in C: at 'balanced' over x8-packed weights (every layer's matmul on int kernels, the head on one
row per sequence) a step of fewer than mi sequences is bit for bit the sequences alone, prompts
included; so is a step of decodes of a few sequences at every precision. A float32 matmul that sees
mi rows or more batched but fewer alone (at 'exact', decodes beside a prompt chunk) sums their rows
in the GEMM's order where alone they were dot products: a few float32 ulps apart, and the f16 cache a
half's ulp where a value sits near a rounding edge. NumPy's BLAS and numba's tiles differ by row
count the same way. There the batch is held to float32 tolerances.

Attention, RoPE and the K/V writes are each sequence's own, at its own positions (one attention call
deals out the items of all sequences, and an item's floats do not depend on its neighbours): they
run exactly as in the sequence's solo prefill when the batch cuts a prompt into the chunks prefill cuts (a prompt
longer than a pass is cut elsewhere: held to tolerances).
"""

import numpy as np
import pytest

import minigpt
from minigpt import kernels
from minigpt.engine import PREFILL_CHUNK, ContextFullError
from minigpt.errors import ArgumentError, ArgumentTypeError

from synthetic import tiny_models

BACKENDS = kernels.available_backends()
# name -> (tiny_llama arguments, KV cache slack: a small one makes a sliding-window layer a ring)
MODELS = {
    "llama-q8_0": (dict(wtype="Q8_0"), None),
    "qwen2-bias-q4_1": (dict(arch="qwen2", wtype="Q4_1", tied=False, qkv_bias=True), None),
    "gemma3-ring": (dict(arch="gemma3", n_layers=3, head_dim=32, window=5, wtype="Q8_0"), 8),
}
# (tokens already in the cache, tokens of this step): decodes, a 2-token step, a prompt from scratch
SEQS = [(7, 1), (12, 1), (3, 2), (0, 20)]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp, MODELS)


def load(model_files, name, backend, precision="balanced", kv_type="f16", threads=1):
    return minigpt.Model(model_files[name], backend=backend, threads=threads, precision=precision, kv_type=kv_type,
                         n_ctx=1024)


def new_cache(m, name, n_ctx=64):
    return m.new_cache(n_ctx, slack=MODELS[name][1])


def histories(m, seed=0):
    rng = np.random.default_rng(seed)
    V = m.config.vocab_size
    return [([int(t) for t in rng.integers(0, V, k)], [int(t) for t in rng.integers(0, V, s)]) for k, s in SEQS]


def solo_and_batch(m, name, steps, prompt=True):
    """Each sequence's caches filled alike, then every step run per sequence with prefill (solo) and
    for all at once with forward_batch: the first step SEQS's tokens (with prompt; else one token
    each, as the steps after it). -> (solo logits, batch logits, solo caches, batch caches)."""
    seqs = histories(m)
    solo, batch = [new_cache(m, name) for _ in seqs], [new_cache(m, name) for _ in seqs]
    for (past, _), a, b in zip(seqs, solo, batch):
        if past:
            m.engine.prefill(past, cache=a)
            m.engine.prefill(past, cache=b)
    want, got = [], []
    for step in range(steps):
        ids = [new if step == 0 and prompt else [(7 * step + k) % m.config.vocab_size]
               for k, (_, new) in enumerate(seqs)]
        want += [m.engine.prefill(x, cache=c) for x, c in zip(ids, solo)]
        got += m.engine.forward_batch(list(zip(batch, ids)))
    return want, got, solo, batch


def assert_caches(solo, batch, exact):
    for a, b in zip(solo, batch):
        assert a.tokens == b.tokens
        for x, y in zip(a.k + a.v, b.k + b.v):
            if exact:
                np.testing.assert_array_equal(x, y)
            else:   # a value near a half's rounding edge may round the other way: 2^-11 of it
                np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_is_each_sequence_alone(model_files, backend, name, kv_type):
    m = load(model_files, name, backend, kv_type=kv_type)
    want, got, solo, batch = solo_and_batch(m, name, steps=3)
    for w, g in zip(want, got):
        assert g.shape == (m.config.vocab_size,) and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * np.abs(w).max())
    assert_caches(solo, batch, exact=False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("c", "numpy")])
def test_int8_activations_make_the_batch_bit_exact(model_files, backend, name, kv_type, threads):
    # every matmul at 'fast' goes through int8 kernels, whose rows do not depend on the row count (nor
    # on how the threads split the weight rows)
    m = load(model_files, name, backend, precision="fast", kv_type=kv_type, threads=threads)
    want, got, solo, batch = solo_and_batch(m, name, steps=2)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert_caches(solo, batch, exact=True)


@pytest.mark.parametrize("precision", ["exact", "balanced"])
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("name", MODELS)
def test_decode_steps_of_a_few_sequences_are_bit_exact(model_files, name, kv_type, precision):
    # 4 rows in every matmul: float32 ones sum them as dot products, as they sum one row alone
    pytest.importorskip("minigpt.engine._cdecoder")
    m = load(model_files, name, "c", precision=precision, kv_type=kv_type)
    want, got, solo, batch = solo_and_batch(m, name, steps=3, prompt=False)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert_caches(solo, batch, exact=True)


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("name", MODELS)
def test_balanced_steps_with_a_prompt_are_bit_exact(model_files, name, kv_type):
    # a prompt beside decodes: the layers' matmuls on x8 int kernels, the float32 head on one row per sequence
    _core = pytest.importorskip("minigpt.kernels._core")
    qtype = MODELS[name][0]["wtype"].lower()
    if not _core.x8_supported(qtype):
        pytest.skip(f"no x8 kernels for {qtype} on {_core.isa()}: its int16 matmuls run on float32 activations")
    m = load(model_files, name, "c", kv_type=kv_type)
    want, got, solo, batch = solo_and_batch(m, name, steps=2)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert_caches(solo, batch, exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_tokens_than_a_pass_are_split(model_files, backend):
    # a long prompt beside three decodes: two passes, the decodes in the first
    m = load(model_files, "llama-q8_0", backend)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(0, m.config.vocab_size, PREFILL_CHUNK + 100)]
    caches = [new_cache(m, "llama-q8_0", 1024) for _ in range(4)]
    solo = [new_cache(m, "llama-q8_0", 1024) for _ in range(4)]
    for c, s, k in zip(caches[1:], solo[1:], (3, 9, 1)):
        m.engine.prefill(prompt[:k], cache=c)
        m.engine.prefill(prompt[:k], cache=s)
    items = [(caches[0], prompt)] + [(c, [5]) for c in caches[1:]]
    got = m.engine.forward_batch(items)
    want = [m.engine.prefill(ids, cache=s) for s, (_, ids) in zip(solo, items)]
    for w, g in zip(want, got):   # the prompt's chunks are cut elsewhere than prefill cuts them
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * np.abs(w).max())
    assert_caches(solo, caches, exact=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tails_give_each_items_last_rows(model_files, backend):
    # a draft being checked (4 rows wanted) beside a decode and a 2-token step that wants only its
    # last: each item's rows are prefill(all_logits)'s last ones; in C at 'balanced' with fewer rows
    # than kernels.exact_rows, bit for bit (the head sums them as it sums one)
    name = "llama-q8_0"
    m = load(model_files, name, backend)
    ids = [[3, 4, 5, 6], [7], [8, 9]]
    solo, batch = [new_cache(m, name) for _ in ids], [new_cache(m, name) for _ in ids]
    for k, (a, b) in enumerate(zip(solo, batch)):
        m.engine.prefill([1 + k, 2], cache=a)
        m.engine.prefill([1 + k, 2], cache=b)
    tails = [4, 1, 1]
    got = m.engine.forward_batch(list(zip(batch, ids)), tails=tails)
    want = [m.engine.prefill(x, cache=c, all_logits=True)[-t:] for x, c, t in zip(ids, solo, tails)]
    for w, g in zip(want, got):
        assert g.shape == w.shape
        if backend == "c":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * np.abs(w).max())
    assert_caches(solo, batch, exact=backend == "c")


def test_tails_across_passes(model_files):
    # a long prompt's last 3 rows: two passes, its wanted rows in the second
    m = load(model_files, "llama-q8_0", "numpy")
    prompt = [int(t) for t in np.random.default_rng(2).integers(0, m.config.vocab_size, PREFILL_CHUNK + 20)]
    a, b, other = (new_cache(m, "llama-q8_0", 1024) for _ in range(3))
    got = m.engine.forward_batch([(a, prompt), (other, [5])], tails=[3, 1])
    want = m.engine.prefill(prompt, cache=b, all_logits=True)[-3:]
    assert got[0].shape == (3, m.config.vocab_size) and got[1].shape == (1, m.config.vocab_size)
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4 * np.abs(want).max())


# --- bad input: one clear minigpt error, nothing appended to any cache

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_batches_are_refused_whole(model_files, backend):
    m = load(model_files, "llama-q8_0", backend)
    V = m.config.vocab_size
    a, b, full = new_cache(m, "llama-q8_0"), new_cache(m, "llama-q8_0"), new_cache(m, "llama-q8_0", 8)
    m.engine.prefill([1] * 7, cache=full)
    bad = [
        ([(a, [1]), (a, [2])], ArgumentError, "items\\[0\\] and items\\[1\\] have the same cache"),
        ([(a, [1]), (b, [])], ArgumentError, "nothing to evaluate: items\\[1\\] has no ids"),
        ([(a, [1]), (full, [1, 2])], ContextFullError, "context full: items\\[1\\]: 7 \\+ 2 tokens > n_ctx 8"),
        ([(a, [1]), (b, [V])], ArgumentError, "items\\[1\\] ids\\[0\\]"),
        ([(a, [1]), (b, "hi")], ArgumentTypeError, "items\\[1\\] ids"),
        ([(a, [1.0])], ArgumentTypeError, "items\\[0\\] ids\\[0\\]"),
        ((a, [1]), ArgumentTypeError, "items\\[0\\] must be a tuple"),
        (None, ArgumentTypeError, "items must be a list of \\(KVCache, ids\\), got NoneType"),
        ([(a, [1]), "a"], ArgumentTypeError, "items\\[1\\] must be a tuple"),
        ([([1], a)], ArgumentTypeError, "items\\[0\\] must be a tuple \\(KVCache, ids\\)"),
    ]
    for items, error, msg in bad:
        with pytest.raises(error, match=msg) as e:
            m.engine.forward_batch(items)
        assert "\n" not in str(e.value)
        assert (a.pos, b.pos, full.pos) == (0, 0, 7)
    for tails in ([1], [1, 2], [1, 0]):   # a count per item, from 1 to its ids
        with pytest.raises(ArgumentError, match="tails must give each item a count"):
            m.engine.forward_batch([(a, [1]), (b, [2])], tails=tails)
        assert (a.pos, b.pos) == (0, 0)
    assert len(m.engine.forward_batch([(a, [1, 2]), (b, [3]), (full, [4])])) == 3
    assert m.engine.forward_batch([]) == []   # a server's step whose requests all went away


def test_c_decoder_checks_a_batch(model_files):
    pytest.importorskip("minigpt.engine._cdecoder")
    m = load(model_files, "llama-q8_0", "c", kv_type="f32")
    dec = m.engine.decoder
    a, b = new_cache(m, "llama-q8_0", 1024), new_cache(m, "llama-q8_0", 1024)
    ba, bb = a.bound(dec), b.bound(dec)
    V = m.config.vocab_size
    bad = [
        ([], ValueError, "non-empty list"),
        ([([1], 0)], ValueError, "tuple \\(ids, start, bound cache\\)"),
        ([([1], 0, ba), ([2], 0, (b.k, b.v))], TypeError, "seqs\\[1\\]: the cache must be bound"),
        ([([1], 0, ba), ([2], 5, ba)], ValueError, "seqs\\[0\\] and seqs\\[1\\] share a cache"),
        ([([1], 0, ba), ([2], 5, dec.bind(a.k, a.v))], ValueError, "share a cache"),   # another binding of a
        ([([1], 0, ba), ([V], 0, bb)], ValueError, "out of range"),
        ([([1], 0, ba), ([2], 1024, bb)], ValueError, "outside the rope tables"),
        ([([1] * 300, 0, ba), ([2] * 300, 0, bb)], ValueError, "600 tokens in all, more than max_batch 512"),
    ]
    for seqs, error, msg in bad:
        with pytest.raises(error, match=msg):
            dec.forward_batch(seqs)
    with pytest.raises(ValueError, match="shape"):
        dec.forward_batch([([1], 0, ba), ([2], 0, bb)], out=np.zeros((1, V), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        dec.forward_batch([([1], 0, ba), ([2], 0, bb)], out=b.k[0].reshape(-1)[:2 * V].reshape(2, V))
    with pytest.raises(ValueError, match="tails\\[1\\] must be an integer in 1..1, got 2"):
        dec.forward_batch([([1], 0, ba), ([2], 0, bb)], tails=[1, 2])
    out = np.zeros((2, V), np.float32)
    assert dec.forward_batch([([1], 0, ba), ([2, 3], 0, bb)], out=out) is out
    assert dec.forward_batch([([4], 1, ba), ([5, 6], 2, bb)], tails=[1, 2]).shape == (3, V)
