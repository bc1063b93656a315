"""Speculative decoding by prompt lookup (minigpt/engine/speculate.py, TokenLoop(speculate='ngram')).

Greedy output must be the plain loop's token for token, and the cache must end holding what the plain
loop's holds. On the compiled backend that is bit for bit: its kernels sum a row alone and the same row
among a few (under 8 with portable C or NEON, under 16 with AVX2) in the same order, at every precision
(tests/test_batch.py), so the logits of a verified block (speculate.max_rows: 15 rows at most with AVX2, 7 in
portable C) are those of one decode step after another; test_portable_c_is_the_plain_loop_too checks
MINIGPT_ISA=scalar. Elsewhere only at 'fast' over int8 weights
on NumPy (float32 rows are summed by BLAS in another order for several rows; numba's tiles likewise):
there a near tie may go the other way, and identity is not asserted.

Tiny random models make poor copyists but loop on their own output, so drafts from the reply so far
are taken, and (with a repeat penalty, or the Qwen2-shaped model) refused part way too.
"""

import json
import re

import jsonschema
import numpy as np
import pytest

import minigpt
from minigpt import kernels
from minigpt.engine import TokenLoop
from minigpt.engine.speculate import K_MAX, NgramDrafter, lookup, max_rows
from minigpt.errors import ArgumentError
from minigpt.sampling import SamplerSettings, candidates, make_rng, sample_draft

from subproc import run_minigpt, run_python
from synthetic import tiny_models

C = "c" in kernels.available_backends()
# name -> (tiny_llama arguments, KV cache slack: a small one makes a sliding-window layer a ring)
MODELS = {
    "llama-q8_0": (dict(wtype="Q8_0"), None),
    "qwen2-bias-q4_1": (dict(arch="qwen2", wtype="Q4_1", tied=False, qkv_bias=True), None),
    "gemma3-ring": (dict(arch="gemma3", n_layers=3, head_dim=32, window=5, wtype="Q8_0", seed=3), 8),
}
# (repeat_penalty, repeat_last_n): none; strong over a few tokens (the output wanders, drafts fail part way)
PENALTIES = [(1.0, 64), (3.0, 6), (1.3, 32)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp, MODELS)


_models = {}


def load(files, name, backend="c", precision="balanced", threads=1):
    key = (name, backend, precision, threads)
    if key not in _models:
        _models[key] = minigpt.Model(files[name], backend=backend, precision=precision, threads=threads, n_ctx=1024)
    return _models[key]


def prompts(m, seed=0):
    """Prompts that repeat themselves (a pattern three times), and that do not, of several lengths."""
    rng = np.random.default_rng(seed)
    V = m.config.vocab_size
    out = []
    for n in (4, 11, 30):
        pattern = [int(t) for t in rng.integers(3, V, n)]
        out += [pattern * 3, [int(t) for t in rng.integers(3, V, 3 * n)]]
    return out


def run(m, ids, speculate, n_ctx=400, slack=None, max_tokens=60, settings=None, stop_ids=None, constraint=None,
        cancelled=None, top_n=0):
    """(steps, loop, cache) of one TokenLoop after prefilling ids into a fresh cache."""
    cache = m.new_cache(n_ctx, slack=slack)
    logits = m.engine.prefill(ids, cache=cache)
    s = settings or SamplerSettings(temperature=0)
    loop = TokenLoop(m.engine, cache, logits, s, make_rng(s.seed), max_tokens,
                     m.tokenizer.eog_ids if stop_ids is None else stop_ids, cancelled, top_n, constraint, speculate)
    return list(loop), loop, cache


def assert_same(m, a, b):
    """Two runs (plain, speculative) gave the same tokens, stop reason and cache, K/V included."""
    (sa, la, ca), (sb, lb, cb) = a, b
    assert [s.token for s in sb] == [s.token for s in sa]
    assert lb.stop == la.stop and cb.tokens == ca.tokens
    if ca.pos < ca.n_ctx:   # the next position's logits read every kept key and value
        nxt = m.engine.decode_step(3, ca), m.engine.decode_step(3, cb)
        assert np.array_equal(*nxt)


# --- greedy: the plain loop's output

needs_c = pytest.mark.skipif(not C, reason="the compiled kernels are not built")


@needs_c
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_greedy_is_the_plain_loop(files, name, penalty):
    m, slack = load(files, name), MODELS[name][1]
    s = SamplerSettings(temperature=0, repeat_penalty=penalty[0], repeat_last_n=penalty[1])
    drafted = accepted = 0
    for ids in prompts(m):
        plain = run(m, ids, None, slack=slack, settings=s)
        spec = run(m, ids, "ngram", slack=slack, settings=s)
        assert_same(m, plain, spec)
        assert plain[1].drafted == 0 and spec[1].accepted <= spec[1].drafted
        drafted, accepted = drafted + spec[1].drafted, accepted + spec[1].accepted
    assert accepted > 0   # drafts were taken


@needs_c
def test_drafts_are_taken_and_refused_part_way(files):
    m = load(files, "qwen2-bias-q4_1")
    loops = [run(m, ids, "ngram", max_tokens=100)[1] for ids in prompts(m)]
    assert sum(x.accepted for x in loops) > 20
    assert sum(x.drafted - x.accepted for x in loops) > 20


@needs_c
@pytest.mark.parametrize("precision", ["exact", "balanced", "fast"])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_precision_and_thread_count(files, precision, threads):
    m = load(files, "qwen2-bias-q4_1", precision=precision, threads=threads)
    s = SamplerSettings(temperature=0, repeat_penalty=1.3, repeat_last_n=32)
    for ids in prompts(m, seed=1)[:4]:
        assert_same(m, run(m, ids, None, settings=s), run(m, ids, "ngram", settings=s))


SCALAR_CHECK = """
import sys, numpy as np, minigpt
from minigpt.engine import TokenLoop
from minigpt.sampling import SamplerSettings, make_rng
from minigpt.kernels import get_backend
assert get_backend("c").isa() == "scalar"
drafted = 0
for path, slack in zip(sys.argv[1::2], sys.argv[2::2]):
    for precision in ("exact", "balanced"):
        m = minigpt.Model(path, backend="c", precision=precision, threads=1, n_ctx=512)
        rng = np.random.default_rng(0)
        for n in (4, 11):
            ids = [int(t) for t in rng.integers(3, m.config.vocab_size, n)] * 3
            runs = []
            for spec in (None, "ngram"):
                cache = m.new_cache(300, slack=int(slack) or None)
                s = SamplerSettings(temperature=0, repeat_penalty=3.0, repeat_last_n=6)
                loop = TokenLoop(m.engine, cache, m.engine.prefill(ids, cache=cache), s, make_rng(0), 60,
                                 speculate=spec)
                runs.append(([x.token for x in loop], cache.tokens, m.engine.decode_step(3, cache).tobytes()))
                drafted += loop.drafted
            assert runs[0] == runs[1], (path, precision, n)
print("same", drafted)
"""


@needs_c
def test_portable_c_is_the_plain_loop_too(files):
    """Portable C's GEMM panel is 8 rows, not AVX2's 16: a pass of 7 rows still sums each row alone."""
    argv = [str(x) for name in ("qwen2-bias-q4_1", "gemma3-ring") for x in (files[name], MODELS[name][1] or 0)]
    r = run_python("-c", SCALAR_CHECK, *argv, env={"MINIGPT_ISA": "scalar"}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("same") and int(r.stdout.split()[1]) > 0


def test_numpy_at_fast_is_the_plain_loop(files):
    """NumPy's int8 activations sum a row alike whatever the row count (float32 ones are BLAS's)."""
    m = load(files, "llama-q8_0", backend="numpy", precision="fast")
    s = SamplerSettings(temperature=0, repeat_penalty=3.0, repeat_last_n=6)
    for ids in prompts(m)[:2]:
        assert_same(m, run(m, ids, None, settings=s, max_tokens=25), run(m, ids, "ngram", settings=s, max_tokens=25))


@needs_c
@pytest.mark.parametrize("name", MODELS)
def test_max_tokens_cuts_a_draft(files, name):
    m, slack = load(files, name), MODELS[name][1]
    ids = prompts(m)[2]
    for n in [0, 1, 2, 3, 5, 8, 9, 10, 17, 33]:
        plain, spec = run(m, ids, None, slack=slack, max_tokens=n), run(m, ids, "ngram", slack=slack, max_tokens=n)
        assert_same(m, plain, spec)
        assert len(spec[0]) == n and spec[1].stop == "length"


@needs_c
@pytest.mark.parametrize("name", MODELS)
def test_a_stop_id_inside_a_draft_ends_the_loop(files, name):
    m, slack = load(files, name), MODELS[name][1]
    s = SamplerSettings(temperature=0, repeat_penalty=3.0, repeat_last_n=6)
    for ids in prompts(m)[:3]:
        tokens = [x.token for x in run(m, ids, None, slack=slack, settings=s)[0]]
        for k in (1, 6, 20):   # a token the reply writes: the loop ends before it, unyielded, not in the cache
            stop = {tokens[k]}
            plain = run(m, ids, None, slack=slack, settings=s, stop_ids=stop)
            spec = run(m, ids, "ngram", slack=slack, settings=s, stop_ids=stop)
            assert_same(m, plain, spec)
            assert spec[1].stop == "eos" and tokens[k] not in [x.token for x in spec[0]]


@needs_c
@pytest.mark.parametrize("name", MODELS)
def test_a_full_context_ends_the_loop(files, name):
    m, slack = load(files, name), MODELS[name][1]
    ids = prompts(m)[2]
    for n_ctx in (len(ids) + 1, len(ids) + 4, len(ids) + 13):
        plain = run(m, ids, None, n_ctx=n_ctx, slack=slack)
        spec = run(m, ids, "ngram", n_ctx=n_ctx, slack=slack)
        assert_same(m, plain, spec)
        assert spec[1].stop == "context" and spec[2].pos == n_ctx


@needs_c
def test_cancel_and_close_keep_what_was_yielded(files):
    m = load(files, "llama-q8_0")
    ids = prompts(m)[0]

    def after(k):   # cancelled() is asked once per token
        calls = iter(range(1000))
        return lambda: next(calls) >= k

    for k in (1, 4, 7, 12):
        stops = [run(m, ids, spec, cancelled=after(k)) for spec in (None, "ngram")]
        assert_same(m, *stops)
        assert len(stops[1][0]) == k and stops[1][1].stop == "cancelled"
    for k in (1, 3, 9, 10, 11):   # closed mid-draft: only the yielded tokens stay in the cache
        cache = m.new_cache(400)
        loop = iter(TokenLoop(m.engine, cache, m.engine.prefill(ids, cache=cache), SamplerSettings(temperature=0),
                              make_rng(0), 60, speculate="ngram"))
        got = [next(loop).token for _ in range(k)]
        loop.close()
        assert cache.tokens == ids + got


@needs_c
def test_ring_never_drafts_more_than_it_can_take_back(files):
    """A sliding-window ring (window 5) of slack 2 holds 7 keys: a pass of 3 rows may be taken back
    to its first (the cache's chunk), so a draft is 2 tokens at most."""
    m = load(files, "gemma3-ring")
    cache = m.new_cache(400, slack=2)
    rows = []
    prefill = m.engine.prefill

    def counting(ids, *a, **kw):
        rows.append(len(ids))
        return prefill(ids, *a, **kw)

    ids = prompts(m)[0]
    logits = prefill(ids, cache=cache)
    m.engine.prefill = counting
    try:
        loop = TokenLoop(m.engine, cache, logits, SamplerSettings(temperature=0), make_rng(0), 40, speculate="ngram")
        spec = [x.token for x in loop]
    finally:
        del m.engine.prefill
    assert max(rows) == cache.chunk == 3 and loop.accepted > 0
    plain = run(m, ids, None, slack=2, max_tokens=40)
    assert spec == [x.token for x in plain[0]] and cache.tokens == plain[2].tokens


@needs_c
def test_top_n_of_drafted_tokens(files):
    m = load(files, "llama-q8_0")
    ids = prompts(m)[0]
    plain, spec = run(m, ids, None, top_n=3), run(m, ids, "ngram", top_n=3)
    assert spec[1].accepted > 0
    assert [(x.token, x.p, x.top) for x in spec[0]] == [(x.token, x.p, x.top) for x in plain[0]]


# --- constrained output: drafts are checked against the grammar

SCHEMAS = [
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["alpha", "beta", "gamma"]},
                                               "minItems": 6, "maxItems": 12}}, "required": ["tags"]},
    {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                        "maximum": 99}, "maxItems": 20},
                                      "name": {"type": "string", "maxLength": 12}}, "required": ["xs", "name"]},
]


@needs_c
@pytest.mark.parametrize("schema", SCHEMAS)
def test_constrained_greedy_is_the_plain_loop(files, schema):
    m = load(files, "llama-q8_0")
    for penalty in PENALTIES:
        s = SamplerSettings(temperature=0, repeat_penalty=penalty[0], repeat_last_n=penalty[1])
        ids = m.tokenize('{"tags":["alpha","beta","alpha","beta"],"xs":[1,2,1,2],"name":"abab"} ')
        runs = [run(m, ids, spec, max_tokens=200, settings=s, constraint=m.constraint(schema))
                for spec in (None, "ngram")]
        assert_same(m, *runs)
        text = m.detokenize([x.token for x in runs[1][0]])
        jsonschema.validate(json.loads(text), schema)


@needs_c
def test_constrained_api_and_valid_prefix(files):
    m = load(files, "llama-q8_0")
    schema = SCHEMAS[0]
    a = "".join(m.generate("JSON:", max_tokens=200, temperature=0, response_format=schema))
    b = "".join(m.generate("JSON:", max_tokens=200, temperature=0, response_format=schema, speculate="ngram"))
    assert a == b
    jsonschema.validate(json.loads(b), schema)
    c = m.constraint(schema)
    good = m.tokenize('{"tags":["alpha"')
    assert c.valid_prefix(good + m.tokenize("}}")) == len(good) and c.valid_prefix(good) == len(good)
    assert c.valid_prefix(m.tokenize("[")) == 0


# --- sampled: the same distribution

def test_sample_draft_exact_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    s = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    ids, p = candidates(logits, s)
    want = np.zeros(4)
    want[ids] = p
    rng = np.random.default_rng(0)
    N = 40000
    for draft in (0, 1, 3, None):
        counts = np.bincount([sample_draft(logits, s, rng, draft) for _ in range(N)], minlength=4)
        assert np.abs(counts / N - want).max() < 0.01, (draft, counts / N)
    # a draft the filters drop (top_k 2) is never taken; the rest keep their filtered probabilities
    s2 = s.with_(top_k=2)
    counts = np.bincount([sample_draft(logits, s2, rng, 3) for _ in range(N)], minlength=4)
    assert counts[2] == counts[3] == 0 and abs(counts[0] / N - 0.625) < 0.01
    # certain: taken without a second draw; greedy: the argmax
    sure = np.array([0.0, 50.0, 0.0, 0.0], dtype=np.float32)
    assert sample_draft(sure, s.with_(top_k=1), rng, 1) == 1
    assert sample_draft(logits, s.with_(temperature=0), rng, 2) == 0


def exact_joint(m, cache, logits, settings, depth):
    """{(t1, .., t_depth): probability} of the plain loop's first tokens, by walking the candidate tree."""
    out, pos = {}, cache.pos
    ids, p = candidates(logits, settings)
    for t, q in zip(ids.tolist(), p):
        if depth == 1:
            out[(t,)] = q
            continue
        cache.truncate(pos)
        for rest, r in exact_joint(m, cache, m.engine.decode_step(t, cache), settings, depth - 1).items():
            out[(t,) + rest] = q * r
    cache.truncate(pos)
    return out


@needs_c
def test_sampled_output_follows_the_same_distribution(files):
    """The first three tokens of many seeds, with and without speculation: each one's frequencies are
    the exact probabilities (the candidate tree walked) within sampling noise (total variation), where
    always taking the draft would be far off. The prompt ends in a loop the model would go on with."""
    m = load(files, "llama-q8_0")
    settings = SamplerSettings(temperature=5.0, top_k=3, top_p=1.0, min_p=0.0)
    ids = prompts(m)[0]
    ids = ids + [x.token for x in run(m, ids, None, max_tokens=8)[0]]
    cache = m.new_cache(200)
    logits = m.engine.prefill(ids, cache=cache)
    pos, N = cache.pos, 2000
    exact = exact_joint(m, cache, logits, settings, 3)
    assert abs(sum(exact.values()) - 1) < 1e-9 and len(exact) == 27
    for spec in (None, "ngram"):
        counts, drafted, accepted = {}, 0, 0
        for seed in range(N):
            cache.truncate(pos)
            loop = TokenLoop(m.engine, cache, logits, settings, make_rng(seed), 3, speculate=spec)
            key = tuple(x.token for x in loop)
            counts[key] = counts.get(key, 0) + 1
            drafted, accepted = drafted + loop.drafted, accepted + loop.accepted
        tv = sum(abs(counts.get(k, 0) / N - q) for k, q in exact.items()) / 2
        assert tv < 0.05, (spec, tv)
        if spec:
            assert accepted > N / 4 and drafted - accepted > N / 20   # drafts taken and refused, often
    # always taking the draft (the loop's token again) would write the loop thrice whenever the first
    # token is the loop's: the bound above would see that
    loop3 = max(exact, key=exact.get)
    assert sum(q for k, q in exact.items() if k[0] == loop3[0]) - exact[loop3] > 0.1


# --- drafting

def test_lookup_finds_the_latest_longest_match():
    assert lookup([1, 2, 3, 9, 5, 1, 2, 3, 7, 8, 1, 2, 3], k=4) == [7, 8, 1, 2]   # the latest of two
    assert lookup([5, 1, 2, 3, 4, 0, 2, 3, 6, 1, 2, 3], k=2) == [4, 0]   # the 3-gram wins over the later 2-gram
    assert lookup([4, 5, 6, 7, 4], k=8) == []      # one token matches too often: not looked up
    assert lookup([1, 2, 1, 2], k=5) == [1, 2, 1, 2, 1]   # a loop goes round
    assert lookup([7, 7, 7], k=3) == [7, 7, 7]
    assert lookup([1, 2, 3], k=8) == [] and lookup([], k=8) == [] and lookup([1], k=8) == []
    r = [int(t) for t in np.random.default_rng(0).integers(0, 50000, 20000)]
    assert lookup(r + r[5000:5003], k=8) == r[5003:5011]


def test_drafter_backs_off_and_recovers():
    d = NgramDrafter()
    h, p = list(range(1, 20)) + [1], [2]
    assert K_MAX == 14 and d.k == 14
    assert d.draft(h, p, 6) == [3, 4, 5, 6, 7, 8] and d.draft(h, p, 3) == [3, 4, 5] and d.draft(h, p, 0) == []
    assert d.draft(h, p, 100) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    d.k = 6
    d.update(0, 6)                       # failed: shorter, and a pause of one draft
    assert d.k == 3 and d.draft(h, p, 100) == [] and d.draft(h, p, 100) == [3, 4, 5]
    d.update(0, 3)                       # failed again: a longer pause
    assert d.k == 1 and [d.draft(h, p, 100) for _ in range(4)] == [[], [], [], [3]]
    d.update(1, 1)                       # all taken: longer again, no pause
    assert d.k == 2 and d.failures == 0 and d.draft(h, p, 100) == [3, 4]
    d.update(2, 2)
    d.update(2, 4)                       # some taken: one more than that next
    assert d.k == 3


def test_a_pass_has_no_more_rows_than_the_kernels_sum_alone():
    from minigpt.kernels import get_backend
    c = get_backend("c")
    assert max_rows(c) == min(K_MAX + 1, c.exact_rows()) and c.exact_rows() in (7, 15)
    assert max_rows(get_backend("numpy")) == 7


def test_drafter_history_follows_the_cache():
    """The drafter copies only new tokens: appends, and draft tokens taken back then replaced."""
    rng = np.random.default_rng(0)
    d, tokens = NgramDrafter(), [int(t) for t in rng.integers(0, 20, 50)]
    for _ in range(300):
        pending = [int(t) for t in rng.integers(0, 20, rng.integers(1, 4))]
        assert d.draft(tokens, pending, 8) == lookup(tokens + pending, k=8)
        tokens = tokens + pending + [int(t) for t in rng.integers(0, 20, rng.integers(0, 9))]   # a draft evaluated
        tokens = tokens[:len(tokens) - int(rng.integers(0, 9))]   # and partly taken back (even further)
        d.k = K_MAX


# --- the API, chat sessions and the CLI

@needs_c
def test_api_chat_and_cli(files, tmp_path):
    m = load(files, "llama-q8_0")
    prompt = "one two three one two three one two"
    kw = dict(max_tokens=40, temperature=0, repeat_penalty=3.0, repeat_last_n=6)
    text = "".join(m.generate(prompt, **kw))
    assert "".join(m.generate(prompt, speculate="ngram", **kw)) == text
    for cut in (1, len(text) // 2, len(text) - 2):   # stop strings: the text ends before them, alike
        stop = [text[cut:cut + 2]]
        texts = ["".join(m.generate(prompt, stop=stop, speculate=spec, **kw)) for spec in (None, "ngram")]
        assert texts[0] == texts[1] and len(texts[0]) <= cut
    with pytest.raises(ArgumentError, match="speculate"):
        m.generate(prompt, speculate="medusa")
    replies = []
    for spec in (None, "ngram"):
        chat = m.chat(temperature=0, max_tokens=30, seed=1, speculate=spec)
        replies.append(["".join(chat.send(t)) for t in ("hello hello hello", "again again")])
        assert chat.n_past == len(chat.cache.tokens) and chat.speculate == spec
        assert (chat.last.accepted > 0) == (spec is not None)
    assert replies[0] == replies[1]
    chat.save(tmp_path / "c.mgchat")   # a saved chat keeps its setting
    assert minigpt.ChatSession.load(tmp_path / "c.mgchat", m).speculate == "ngram"
    chat.set(speculate=None)
    assert chat.speculate is None
    with pytest.raises(ArgumentError, match="speculate"):
        m.chat(speculate="yes")
    out = [run_minigpt("generate", "-m", files["llama-q8_0"], "-p", prompt, "-n", 30, "--temperature", 0, *extra)
           for extra in ((), ("--speculate", "ngram"))]
    assert out[0].returncode == out[1].returncode == 0, out[1].stderr
    assert out[0].stdout == out[1].stdout
    bad = run_minigpt("generate", "-m", files["llama-q8_0"], "-p", "x", "--speculate", "lookahead")
    assert bad.returncode != 0 and "speculate" in bad.stderr
    r = run_minigpt("chat", "-m", files["llama-q8_0"], "--speculate", "ngram", "--temperature", 0, "--stats",
                    "--max-tokens", 30, input="hi there\n/set\n/set speculate off\n/set\n/set speculate yes\n/quit\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert re.search(r"drafts \d+/\d+ taken", out)
    assert re.search(r"speculate\s+ngram", out) and re.search(r"speculate\s+off", out)
    assert "speculate = off" in out and "speculate must be one of ngram" in out
