"""Speculation in the server's scheduler (Scheduler(speculate='ngram')): drafts checked beside the other
slots' tokens in one forward_batch pass, each row walked as a plain step would choose its token.

Greedy replies must be the plain scheduler's token for token, whatever the drafts and however the slots'
steps interleave: on the compiled backend at 'balanced' over x8-packed weights a step's rows stay within
speculate.max_rows, where the float32 head sums each row as it sums one, and the layers' int kernels
do not depend on the row count (tests/test_batch.py), so every logit is the plain step's, bit for bit.

The scheduler's cost model (speculate.pass_seconds) is set flat here: every draft token looks worth its
row, so drafts are taken whatever the machine's timing (the tiny random models loop on their own output).
"""

import asyncio
import json

import jsonschema
import numpy as np
import pytest

import minigpt
from minigpt import kernels, tools
from minigpt.engine.speculate import NgramDrafter, max_rows, pass_seconds, plan
from minigpt.sampling import SamplerSettings
from minigpt.serve import scheduler

from synthetic import tiny_models

pytestmark = pytest.mark.skipif("c" not in kernels.available_backends(), reason="the compiled kernels are not built")

MODELS = {   # x8-packed weight types: the layers' matmuls on int kernels at 'balanced'
    "llama-q8_0": (dict(wtype="Q8_0"), None),
    "qwen2-bias-q4_1": (dict(arch="qwen2", wtype="Q4_1", tied=False, qkv_bias=True), None),
}
PENALTIES = [(1.0, 64), (3.0, 6)]   # none; strong over a few tokens (drafts fail part way)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from minigpt.kernels import _core
    for kw, _ in MODELS.values():
        if not _core.x8_supported(kw["wtype"].lower()):
            pytest.skip(f"no x8 kernels for {kw['wtype']} on {_core.isa()}")
    return tiny_models(tmp_path_factory.mktemp, MODELS)


_models = {}


def load(files, name):
    if name not in _models:
        _models[name] = minigpt.Model(files[name], backend="c", threads=1, n_ctx=512)
    return _models[name]


def prompts(m, seed=0):
    """Prompts that repeat a pattern (drafts found at once) and that do not."""
    rng = np.random.default_rng(seed)
    V = m.config.vocab_size
    out = []
    for n in (5, 17):
        pattern = [int(t) for t in rng.integers(3, V, n)]
        out += [pattern * 3, [int(t) for t in rng.integers(3, V, 2 * n)]]
    return out


def new_scheduler(m, speculate, parallel=3):
    sched = scheduler.Scheduler(m, parallel=parallel, speculate=speculate)
    if speculate:
        sched.seconds = [1.0] * max_rows(m.engine.kern)   # flat: every draft token is worth its row
    sched.start()
    return sched


def replies(sched, jobs):
    """Every job's events, the jobs submitted together (their steps share passes)."""
    async def run():
        for job in jobs:
            sched.submit(job)
        return [[e async for e in job.events()] for job in jobs]
    return asyncio.run(run())


def both(m, make_jobs, parallel=3):
    """(plain replies, speculative replies, the speculative scheduler) of the jobs make_jobs() makes."""
    out = []
    for speculate in (None, "ngram"):
        sched = new_scheduler(m, speculate, parallel)
        try:
            out.append(replies(sched, make_jobs()))
        finally:
            sched.stop()
    return out[0], out[1], sched


def tokens(events):
    return [t for e in events for t, _, _ in e.logprobs]


def summary(events):
    """What a client sees of a reply: its text, its finish and usage, each token with its logprob."""
    return ("".join(e.text for e in events), events[-1].finish, events[-1].usage,
            [(t, lp) for e in events for t, lp, _ in e.logprobs])


# --- greedy: the plain scheduler's replies

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_greedy_replies_are_the_plain_schedulers(files, name, penalty):
    m = load(files, name)
    s = SamplerSettings(temperature=0, repeat_penalty=penalty[0], repeat_last_n=penalty[1])
    make = lambda: [scheduler.Job(ids, s, max_tokens=80, logprobs=True, top_n=2) for ids in prompts(m)]
    plain, spec, sched = both(m, make)
    for a, b in zip(plain, spec):
        assert summary(b) == summary(a)
        assert [top for e in b for _, _, top in e.logprobs] == [top for e in a for _, _, top in e.logprobs]
        assert len(tokens(b)) == b[-1].usage["completion_tokens"]   # a logprob for every token
    assert sched.accepted > 0   # drafts taken
    if penalty[0] > 1:          # and refused part way: the penalty turns the loops
        assert sched.drafted > sched.accepted


def test_a_constrained_reply_still_validates(files):
    m = load(files, "llama-q8_0")
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["alpha", "beta"]},
                                                        "minItems": 6, "maxItems": 12}}, "required": ["tags"]}
    ids = m.tokenize('{"tags":["alpha","beta","alpha","beta"]} ')
    make = lambda: [scheduler.Job(ids, SamplerSettings(temperature=0), max_tokens=200, logprobs=True,
                                  constraint=m.constraint(schema))]
    plain, spec, sched = both(m, make, parallel=1)
    assert summary(spec[0]) == summary(plain[0]) and spec[0][-1].finish == "stop"
    jsonschema.validate(json.loads(summary(spec[0])[0]), schema)
    assert sched.accepted > 0


def test_max_tokens_and_stop_strings_inside_a_draft(files):
    m = load(files, "llama-q8_0")
    ids = prompts(m)[0]
    s = SamplerSettings(temperature=0)
    full = summary(both(m, lambda: [scheduler.Job(ids, s, max_tokens=60)], parallel=1)[0][0])[0]
    for n in (1, 2, 7, 13, 31):   # cut wherever a draft happens to run
        plain, spec, _ = both(m, lambda: [scheduler.Job(ids, s, max_tokens=n, logprobs=True)], parallel=1)
        assert summary(spec[0]) == summary(plain[0]) and spec[0][-1].usage["completion_tokens"] == n
    for at in (5, 20, 41):
        stop = (full[at:at + 3],)
        plain, spec, _ = both(m, lambda: [scheduler.Job(ids, s, max_tokens=60, stop=stop)], parallel=1)
        assert summary(spec[0]) == summary(plain[0]) and spec[0][-1].finish == "stop"
        assert stop[0] not in summary(spec[0])[0]


def test_the_slot_is_reusable_after_drafts(files):
    # the refused drafts leave the cache: a next turn that starts with the first turn's prompt and reply
    # reuses the slot's cache and replies as a fresh plain server does
    m = load(files, "llama-q8_0")
    ids = prompts(m)[0]
    s = SamplerSettings(temperature=0)
    sched = new_scheduler(m, "ngram", parallel=1)
    try:
        first = replies(sched, [scheduler.Job(ids, s, max_tokens=40, logprobs=True)])[0]
        turn2 = ids + tokens(first) + ids[:7]
        cache = sched.slots[0].cache
        assert cache.tokens == ids + tokens(first)[:-1]   # every reply token but the last, evaluated
        second = replies(sched, [scheduler.Job(turn2, s, max_tokens=40, logprobs=True)])[0]
        assert second[-1].usage["prompt_tokens_details"]["cached_tokens"] == len(ids) + len(tokens(first)) - 1
        assert sched.accepted > 0
    finally:
        sched.stop()
    plain = new_scheduler(m, None, parallel=1)
    try:
        fresh = replies(plain, [scheduler.Job(turn2, s, max_tokens=40, logprobs=True)])[0]
    finally:
        plain.stop()
    assert summary(second)[:2] == summary(fresh)[:2] and tokens(second) == tokens(fresh)


def test_forced_tokens_after_drafts(files):
    # a grammar that forces runs of tokens: a draft's walk stops where it forces, the run is evaluated next
    m = load(files, "llama-q8_0")
    pattern = r"(yes|no): the answer is (final|open); (yes|no): the answer is (final|open)"
    ids = m.tokenize("no: the answer is open; no: the answer is ")
    make = lambda: [scheduler.Job(ids, SamplerSettings(temperature=0), max_tokens=80, logprobs=True,
                                  constraint=m.constraint(regex=pattern))]
    plain, spec, _ = both(m, make, parallel=1)
    assert summary(spec[0]) == summary(plain[0]) and spec[0][-1].finish == "stop"
    assert len(tokens(spec[0])) == spec[0][-1].usage["completion_tokens"]


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


def test_a_tool_call_begun_inside_a_draft(files, monkeypatch):
    """The reply is scripted up to the call's tag, whose end comes in a draft ("_call>" was written before):
    the trigger's grammar takes over inside the walk, and the rows after it are masked by it."""
    m = load(files, "llama-q8_0")
    ids = m.tokenize("Q?")
    script = [3 + b for b in b"my_call> my_call> <tool_call>"]   # the tiny vocabulary: 3 control tokens, then bytes
    real = scheduler.forward_batch

    def forward(engine, items, tails, top=None, allowed=None):   # each row's reply position gets its script token, drafted or not
        out = real(engine, items, tails, top, allowed)
        for (cache, _), rows in zip(items, out):
            for j, row in enumerate(rows):
                k = cache.pos - len(rows) + j + 1 - len(ids)
                if 0 <= k < len(script):
                    row[script[k]] = 1e4
        return out

    monkeypatch.setattr(scheduler, "forward_batch", forward)
    make = lambda: [scheduler.Job(ids, SamplerSettings(temperature=0), max_tokens=300, logprobs=True,
                                  constraint=tools.constraint(m, tools.offer(TOOLS)))]   # "auto": free until <tool_call>
    plain, spec, sched = both(m, make, parallel=1)
    assert summary(spec[0]) == summary(plain[0]) and spec[0][-1].finish == "stop"
    content, calls = tools.parse(summary(spec[0])[0], TOOLS)
    assert content == "my_call> my_call>" and len(calls) == 1
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), WEATHER)
    assert sched.accepted >= 3   # "ll>" at least, from the draft


# --- the cost model

def test_plan_takes_the_draft_tokens_worth_their_rows():
    flat = [1.0] * 15
    assert plan([3, 2], [0.9, 0.5], rows=2, tokens=2, seconds=flat) == [3, 2]   # rows free: all of them
    assert plan([9, 9], [0.9, 0.9], rows=2, tokens=2, seconds=flat[:6]) == [2, 2]   # at most 6 rows, likeliest first
    linear = [1.0 + r for r in range(15)]   # a row costs as much as the pass's own
    assert plan([5], [0.99], rows=1, tokens=1, seconds=linear) == [0]
    cheap = [1.0 + 0.1 * r for r in range(15)]
    assert plan([5, 5], [0.95, 0.2], rows=2, tokens=2, seconds=cheap) == [5, 0]
    assert plan([], [], rows=1, tokens=1, seconds=cheap) == []


def test_the_acceptance_estimate_fades_back_to_hope():
    d = NgramDrafter()
    p0 = d.chance(10)
    d.update(0, 4)
    d.update(0, 2)
    low = d.chance(10)
    assert low < p0 and d.chance(11) > low and abs(d.chance(500) - p0) < 1e-3
    d.update(8, 8)
    assert d.chance(500) > p0


def test_pass_seconds_rises_with_rows(files):
    m = load(files, "llama-q8_0")
    t = pass_seconds(m.engine, max_rows(m.engine.kern), seqs=3)
    assert len(t) == max_rows(m.engine.kern) and all(x > 0 for x in t) and t[-1] > t[0]
    short = minigpt.Model(files["llama-q8_0"], backend="c", threads=1, n_ctx=9)   # RoPE tables of 9 positions
    assert len(pass_seconds(short.engine, max_rows(m.engine.kern))) == 9
