"""The screened head (csrc/screen.c): a float32 head's logits wherever a draw can look, int8 estimates
below them elsewhere. Checked against the float32 head itself (the same numbers, bit for bit, where it
counts), against its NumPy twin (numpy_ref.matmul_screened), and through the engine and the token
loop: greedy and seeded sampling give the tokens the unscreened head gives."""

import numpy as np
import pytest

import minigpt
import minigpt.api
from minigpt import kernels, quant
from minigpt.engine import loop
from minigpt.engine.speculate import max_rows
from minigpt.kernels import numpy_ref
from minigpt.sampling import SamplerSettings, screen_top

from synthetic import random_blocks, tiny_llama, tiny_vocab

pytestmark = pytest.mark.skipif("c" not in kernels.available_backends(), reason="the compiled kernels are not built")
core = kernels.get_backend("c") if "c" in kernels.available_backends() else None
# a model's head is screened where the CPU has x8 kernels (the kernel itself is tested on any)
screens = pytest.mark.skipif(core is None or not core.x8_supported("q8_0"),
                             reason="no x8 kernels on this CPU: heads are not screened")

QTYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q4_k", "q6_k"]


def weight(rng, qtype, rows, cols):
    if qtype.upper() in ("Q5_0", "Q4_K", "Q6_K"):   # minigpt reads these, but does not write them
        block = 256 if qtype.endswith("_k") else 32
        return random_blocks(rng, qtype.upper(), rows * cols // block, scale=0.5 / np.sqrt(cols)).reshape(rows, -1)
    return quant.quantize((rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32), qtype)


def inputs(rng, n, cols):
    """Hidden states with a few huge channels, as real ones have (the worst case for int8 rounding)."""
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, [3, cols // 2]] *= 30
    return x


def check_screened(out, exact, top):
    """Each row of out: exact's values at its best `top` (and wherever else it says so); below them elsewhere."""
    for got, want in zip(out, exact):
        best = np.argsort(-want, kind="stable")[:top]
        assert np.array_equal(got[best], want[best])
        guessed = got != want
        assert (got[guessed] < want[best[-1]]).all()


def each_alone(x, w, qtype):
    """The float32 head of each input alone: the sums the screen's rows get (a batch of inputs past a GEMM
    panel, 8 rows in portable C, sums in another order)."""
    return np.concatenate([core.matmul(x[i:i + 1], w, qtype) for i in range(len(x))])


def screen_of(w, qtype):
    if core.x8_supported(qtype) and w.shape[0] % 8 == 0:
        return core.pack_x8(w, qtype), qtype + "x8"
    return w, qtype


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 15])
def test_screened_head_is_the_float32_head_where_a_draw_looks(qtype, n):
    rng = np.random.default_rng(n)
    rows, cols = 512, 256
    w, x = weight(rng, qtype, rows, cols), inputs(rng, n, cols)
    exact, norms = each_alone(x, w, qtype), core.row_norms(w, qtype)
    for top in (1, 5, 40):
        out = core.matmul_screened(x, *screen_of(w, qtype), w, qtype, norms, top)
        check_screened(out, exact, top)
        if top == 1:
            assert (out != exact).sum() > n * rows // 2   # most rows are left at their estimate
        twin = numpy_ref.matmul_screened(x, w, qtype, w, qtype, numpy_ref.row_norms(w, qtype), top)
        check_screened(twin, numpy_ref.matmul(x, w, qtype), top)
        np.testing.assert_allclose(out, twin, rtol=1e-4, atol=1e-4 * np.abs(exact).max())


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
def test_rows_too_close_to_tell_apart_are_all_computed_again(qtype):
    """Rows nearly alike, logits closer together than int8 rounding can tell: a thousand rows per input
    are computed again (csrc/screen.c gathers them in batches of 256), each as the float32 head does."""
    rng = np.random.default_rng(7)
    rows, cols = 2048, 256
    alike = rng.standard_normal(cols) + 1e-3 * rng.standard_normal((rows, cols))
    w = quant.quantize((alike / np.sqrt(cols)).astype(np.float32), qtype)
    x = inputs(rng, 3, cols)
    exact, norms = each_alone(x, w, qtype), core.row_norms(w, qtype)
    out = core.matmul_screened(x, *screen_of(w, qtype), w, qtype, norms, 1)
    check_screened(out, exact, 1)
    assert ((out == exact).sum(axis=1) > 1000).all()


def bitmask(ok):
    """bool [rows] -> a grammar's bitmask: int32 words, bit r % 32 of word r / 32 (llguidance's)"""
    return np.packbits(np.pad(ok, (0, -len(ok) % 32)), bitorder="little").view(np.int32)


def check_masked(out, exact, top, ok):
    """check_screened among the rows a mask allows (all of them exact when it allows top or fewer)"""
    for got, want, keep in zip(out, exact, ok):
        ids = np.nonzero(keep)[0]
        check_screened(got[ids][None], want[ids][None], min(top, len(ids)))


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k"])
def test_under_a_mask_the_top_are_the_best_it_allows(qtype):
    rng = np.random.default_rng(3)
    rows, cols = 512, 256
    w, x = weight(rng, qtype, rows, cols), inputs(rng, 4, cols)
    exact, norms = each_alone(x, w, qtype), core.row_norms(w, qtype)
    ok = rng.random((4, rows)) < 0.3
    ok[1] = False                                   # a grammar that allows 3 rows: each is computed again
    ok[1, [7, 100, 300]] = True                     # (under a top of 3 or more)
    ok[2] = exact[2] < np.sort(exact[2])[-50]       # one that forbids the 50 best the model wants
    masks = [bitmask(ok[0]), bitmask(ok[1]), bitmask(ok[2]), None]
    ok[3] = True
    for top in (1, 5, 40):
        out = core.matmul_screened(x, *screen_of(w, qtype), w, qtype, norms, top, allowed=masks)
        check_masked(out, exact, top, ok)
        if top >= 3:
            assert np.array_equal(out[1, [7, 100, 300]], exact[1, [7, 100, 300]])
        twin = numpy_ref.matmul_screened(x, w, qtype, w, qtype, numpy_ref.row_norms(w, qtype), top, allowed=masks)
        check_masked(twin, numpy_ref.matmul(x, w, qtype), top, ok)
    for bad in ([masks[0]], [masks[0][:-1]] * 4, [masks[0].astype(np.int64)] * 4, "all"):
        with pytest.raises(ValueError, match="allowed"):
            core.matmul_screened(x, *screen_of(w, qtype), w, qtype, norms, 1, allowed=bad)


def test_row_norms_are_rounded_up_and_match_the_twin():
    rng = np.random.default_rng(1)
    for qtype in QTYPES:
        w = weight(rng, qtype, 64, 512)
        want = np.linalg.norm(quant.dequantize(w, qtype, 512).astype(np.float64), axis=1)
        got, twin = core.row_norms(w, qtype), numpy_ref.row_norms(w, qtype)
        assert (got >= want).all() and (twin >= want).all()
        assert (np.abs(got.view(np.int32) - twin.view(np.int32)) <= 1).all()


def test_screen_steps_aside_where_it_cannot_help_and_checks_its_arguments():
    rng = np.random.default_rng(2)
    w, x = weight(rng, "q8_0", 64, 128), inputs(rng, 2, 128)
    norms, (screen, sq) = core.row_norms(w, "q8_0"), screen_of(w, "q8_0")
    exact = core.matmul(x, w, "q8_0")
    for top in (64, 100, core.SCREEN_MAX_TOP + 1, 2**70):   # every row, or more than a screen keeps: the whole head
        assert np.array_equal(core.matmul_screened(x, screen, sq, w, "q8_0", norms, top), exact)
    for bad in (0, -1, True, 2.0, None):
        with pytest.raises(ValueError, match="top"):
            core.matmul_screened(x, screen, sq, w, "q8_0", norms, bad)
    with pytest.raises(ValueError, match="norms"):
        core.matmul_screened(x, screen, sq, w, "q8_0", norms[:-1], 1)
    with pytest.raises(ValueError, match="screen"):
        core.matmul_screened(x, screen_of(w[:-8], "q8_0")[0], sq, w, "q8_0", norms, 1)


def test_screen_top_counts_what_a_draw_can_reach():
    assert screen_top(SamplerSettings(temperature=0)) == 1
    assert screen_top(SamplerSettings()) == 40
    assert screen_top(SamplerSettings(top_k=10, repeat_penalty=1.1, repeat_last_n=32)) == 42
    assert screen_top(SamplerSettings(temperature=0, repeat_penalty=1.3)) == 65
    assert screen_top(SamplerSettings(top_k=0)) is None                 # a draw over the whole vocabulary
    assert screen_top(SamplerSettings(top_k=0, temperature=0)) == 1
    assert screen_top(SamplerSettings(repeat_penalty=0.9)) is None     # raises logits: any can climb


# --- through the engine ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny models whose vocabulary (272) fills the x8 layout's groups of 8 rows: their head is screened."""
    tokens, types, merges = tiny_vocab()
    extra = 8 - len(tokens) % 8
    fields = {"model": "gpt2", "pre": "smollm", "tokens": tokens + [f"<x{i}>" for i in range(extra)],
              "token_type": types + [3] * extra, "merges": merges, "bos_token_id": 1, "eos_token_id": 2,
              "add_bos_token": False}
    from minigpt.convert import convert
    out = {}
    models = {"tied-q8_0": dict(wtype="Q8_0"),   # its table's scale makes it repeat one token: greedy-like
              "q8_0": dict(wtype="Q8_0", tied=False), "q4_k": dict(wtype="Q4_K", tied=False, dim=256, hidden=256)}
    for name, kw in models.items():
        d = tmp_path_factory.mktemp(name)
        tiny_llama(d / "t.gguf", tokenizer=fields, ctx=512, **kw)
        convert(d / "t.gguf", d / "t.mgpt")
        out[name] = d / "t.mgpt"
    return out


@pytest.fixture(params=["tied-q8_0", "q8_0", "q4_k"])
def model(request, files):
    if not core.x8_supported(request.param.rpartition("-")[2]):
        pytest.skip(f"no {request.param} x8 kernels on this CPU: its head is not screened")
    return minigpt.Model(files[request.param], backend="c", threads=2, n_ctx=512)


def unscreened(monkeypatch):
    """Token loops from here on ask for every logit: the float32 head, unscreened."""
    for where in (loop, minigpt.api):
        monkeypatch.setattr(where, "head_top", lambda *a, **k: None)


def last_rows(model, ids, n, top=None):
    """logits of the last n ids after the others: fewer rows than the float32 GEMM takes (max_rows), so
    the head sums each row as a decode step does, as the rows the screen computes again are summed"""
    cache = model.new_cache(64)
    model.engine.prefill(ids[:-n], cache=cache)
    return model.engine.prefill(ids[-n:], all_logits=True, cache=cache, top=top)


@screens
def test_engine_logits_are_screened_only_when_asked(model):
    assert "output_screen" in model.engine.weights
    ids = [int(t) for t in np.random.default_rng(0).integers(3, 272, 40)]
    n = max_rows(model.engine.kern)
    exact = last_rows(model, ids, n)
    for top in (1, 7, 104):
        check_screened(last_rows(model, ids, n, top), exact, top)
    a, b = model.new_cache(64), model.new_cache(64)
    model.engine.prefill(ids[:10], cache=a)
    got = model.engine.forward_batch([(a, ids[10:14]), (b, ids[:3])], tails=[4, 1], top=3)
    model.engine.prefill(ids[:10], cache=(a := model.new_cache(64)))
    want = model.engine.forward_batch([(a, ids[10:14]), (model.new_cache(64), ids[:3])], tails=[4, 1])
    for g, w in zip(got, want):
        check_screened(g, w, 3)
    # unasked, every logit is the float32 head's, whichever way the pass goes
    alone = last_rows(model, ids, 1)
    cache = model.new_cache(64)
    model.engine.prefill(ids[:-1], cache=cache)
    assert np.array_equal(model.engine.forward_batch([(cache, ids[-1:])])[0], alone[0])
    assert np.array_equal(model.engine.decode_step(ids[-1], cache=model.new_cache(64)),
                          model.engine.forward_batch([(model.new_cache(64), ids[-1:])])[0])


@screens
@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.9, seed=5),
                                dict(temperature=0.7, top_k=5, repeat_penalty=1.3, seed=1),
                                dict(temperature=0, speculate="ngram")])
def test_generation_is_the_unscreened_heads(model, kw, monkeypatch):
    prompt = "the cat sat on the mat. the cat sat on the"
    screened = list(model.generate(prompt, max_tokens=60, **kw))
    unscreened(monkeypatch)
    assert list(model.generate(prompt, max_tokens=60, **kw)) == screened


@screens
@pytest.mark.parametrize("kw", [dict(regex=r"(the|a) (cat|dog|mat)( (sat|ran) on the (mat|rug))+\\."),
                                dict(response_format={"type": "json_object"}),
                                dict(regex=r"[a-z ]{10,40}", speculate="ngram")])
def test_constrained_generation_is_the_unscreened_heads(model, kw, monkeypatch):
    for sampling in (dict(temperature=0), dict(temperature=0.8, seed=2)):
        screened = list(model.generate("the cat", max_tokens=40, **sampling, **kw))
        with monkeypatch.context() as m:
            for where in (loop, minigpt.api):
                m.setattr(where, "head_top", lambda *a, **k: None)
            assert list(model.generate("the cat", max_tokens=40, **sampling, **kw)) == screened


@screens
def test_a_chat_turn_is_the_unscreened_heads(model, monkeypatch):
    def reply():
        chat = model.chat(temperature=0.8, seed=11, max_tokens=40)
        return "".join(chat.send("hello there"))
    screened = reply()
    unscreened(monkeypatch)
    assert reply() == screened


@screens
def test_server_steps_are_the_unscreened_heads(model, monkeypatch):
    """Several requests in one scheduler's steps, sampled, greedy, with a repeat penalty, constrained, with
    logprobs: the same replies as when every step asks for every logit. (No drafts: a sampled reply with
    drafts follows the same distribution, not the same random stream, and drafts depend on timing.)"""
    import asyncio

    from minigpt.serve import scheduler

    def replies():
        sched = scheduler.Scheduler(model, parallel=3)
        sched.start()
        jobs = [scheduler.Job([5, 6, 7, 5, 6, 7, 5, 6], SamplerSettings(temperature=0.9, seed=4), max_tokens=30),
                scheduler.Job([9, 9, 10], SamplerSettings(temperature=0, repeat_penalty=1.2), max_tokens=30),
                scheduler.Job([11, 12], SamplerSettings(temperature=0.7, top_k=8, seed=1), max_tokens=30,
                              constraint=model.constraint(regex=r"[a-z]{3,20}")),
                scheduler.Job([13], SamplerSettings(temperature=1.0, seed=2), max_tokens=20, logprobs=True, top_n=3)]

        async def run():
            for job in jobs:
                sched.submit(job)
            out = []
            for job in jobs:
                events = [e async for e in job.events()]
                out.append(("".join(e.text for e in events), [lp for e in events for lp in e.logprobs]))
            return out
        try:
            return asyncio.run(run())
        finally:
            sched.stop()

    screened = replies()
    monkeypatch.setattr(scheduler, "head_top", lambda *a, **k: None)
    assert replies() == screened


def test_no_screen_for_exact_precision_or_python_backends(files):
    assert "output_screen" not in minigpt.Model(files["q4_k"], backend="c", precision="exact").engine.weights
    m = minigpt.Model(files["q4_k"], backend="numpy")
    assert "output_screen" not in m.engine.weights
    ids = [5, 9, 200, 31]
    assert np.array_equal(m.engine.prefill(ids, cache=m.new_cache(8), top=1), m.engine.prefill(ids, cache=m.new_cache(8)))
    c = minigpt.Model(files["q4_k"], backend="c")   # a top beyond what a screen keeps: the whole head
    assert np.array_equal(c.engine.prefill(ids, cache=c.new_cache(8), top=2**70), c.engine.prefill(ids, cache=c.new_cache(8)))


# --- real models -----------------------------------------------------------------------------------

@screens
@pytest.mark.parametrize("name", ["smollm2_mgpt", "qwen2_mgpt"])
def test_real_model_greedy_and_top_k_logits_are_the_float32_heads(name, request, monkeypatch):
    m = minigpt.load(str(request.getfixturevalue(name)), threads=2, n_ctx=512)
    assert "output_screen" in m.engine.weights
    ids = m.tokenize("def add(a, b):\n    return a + b\n\n# 中文注释: 两个数相加\nprint(add(2, 3))\n")
    n = max_rows(m.engine.kern)
    exact = last_rows(m, ids, n)
    for top in (1, 40, 104):
        check_screened(last_rows(m, ids, n, top), exact, top)
    screened = list(m.generate("Write a haiku about the sea.", max_tokens=48, temperature=0))
    unscreened(monkeypatch)
    assert list(m.generate("Write a haiku about the sea.", max_tokens=48, temperature=0)) == screened


@screens
def test_the_heads_file_pages_go_back_every_so_many_screened_passes(files, monkeypatch):
    from minigpt.engine import engine as engine_module
    m = minigpt.Model(files["tied-q8_0"], backend="c", n_ctx=512)
    calls = []
    monkeypatch.setattr(m.engine, "_give_back", lambda: calls.append(1))
    cache = m.new_cache(512)
    for i in range(engine_module.GIVE_BACK_EVERY):
        m.engine.decode_step(5 + i, cache)   # every logit: the head is not screened, its pages are not read
    assert calls == []
    for i in range(2 * engine_module.GIVE_BACK_EVERY + 1):
        m.engine.decode_step(5 + i, cache, top=1)
    assert len(calls) == 2


@screens
def test_pack_x8_fills_the_array_it_is_given():
    rng = np.random.default_rng(4)
    w = weight(rng, "q4_0", 64, 128)
    want = core.pack_x8(w, "q4_0")
    out = np.zeros_like(want)
    assert core.pack_x8(w, "q4_0", out=out) is out and np.array_equal(out, want)
    part = np.zeros_like(want)
    core.pack_x8(w[16:32], "q4_0", out=part[2:4])   # rows 16..31 are groups 2 and 3
    assert np.array_equal(part[2:4], want[2:4])
    for bad in (np.zeros((want.shape[0] - 1, want.shape[1]), np.uint8), want.astype(np.int8), want[:, ::2]):
        with pytest.raises(ValueError):
            core.pack_x8(w, "q4_0", out=bad)
