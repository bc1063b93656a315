"""`minigpt serve` on a tiny synthetic model: the real server in a subprocess, the real `openai` client.

Timeouts are generous and nothing is timed: a busy machine makes these slower, never wrong.
"""

import asyncio
import json
import signal
import threading
import time

import httpx
import numpy as np
import openai
import pytest

import minigpt
from minigpt.sampling import SamplerSettings
from minigpt.serve import scheduler

from serving import CHINESE, ENGLISH, KEY, TIMEOUT, Server, chat, stream_chat, tiny_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--parallel", "4", "--api-key", KEY)
    yield s
    s.stop()


# --- the API

def test_models_and_health(server):
    assert server.url.startswith("http://127.0.0.1:")   # localhost unless --host says otherwise
    assert [m.id for m in server.client().models.list()] == ["tiny"]
    assert server.client().models.retrieve("tiny").id == "tiny"
    h = server.health()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["slots"] == 4 and h["precision"] == "balanced"
    assert h["replica"].endswith(f":{server.proc.pid}")
    page = httpx.get(server.url + "/", timeout=TIMEOUT)
    assert page.headers["content-type"].startswith("text/html") and "/v1/chat/completions" in page.text


@pytest.mark.parametrize("prompt", [ENGLISH, CHINESE])
def test_streamed_reply_is_the_whole_reply(server, prompt):
    client = server.client()
    whole = chat(client, prompt, temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 24
    streamed, chunks = stream_chat(client, prompt, temperature=0, max_tokens=24,
                                   stream_options={"include_usage": True})
    assert streamed == text and "\ufffd" not in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])


def test_logprobs(server):
    r = chat(server.client(), ENGLISH, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 8 and "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        top = [x.logprob for x in t.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True) and all(lp <= 0 for lp in top)
        assert t.logprob == top[0]   # greedy: the likeliest token
        assert bytes(t.bytes).decode() == t.token


def test_a_seed_repeats_a_reply(server):
    client = server.client()
    kw = dict(temperature=0.8, top_p=1.0, max_tokens=16, seed=7, extra_body={"top_k": 0, "min_p": 0.0})
    first = chat(client, ENGLISH, **kw).choices[0].message.content
    assert chat(client, ENGLISH, **kw).choices[0].message.content == first
    assert stream_chat(client, ENGLISH, **kw)[0] == first


def test_next_turn_reuses_the_cache(server):
    client = server.client()
    turn = [{"role": "user", "content": "Hello there, how are you today?"}]
    r = client.chat.completions.create(model="tiny", messages=turn, temperature=0, max_tokens=4)
    turn += [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "And?"}]
    r = client.chat.completions.create(model="tiny", messages=turn, temperature=0, max_tokens=4)
    assert r.usage.prompt_tokens_details.cached_tokens > 10


def test_completions_and_stop_strings(server):
    client = server.client()
    r = client.completions.create(model="tiny", prompt="the", max_tokens=8, temperature=0)
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8 and text
    chunks = list(client.completions.create(model="tiny", prompt="the", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "the", "max_tokens": 8, "temperature": 0},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)   # no "model": the one served
    assert r.json()["choices"][0]["text"] == text and r.json()["model"] == "tiny"
    stop = text[1:3]   # cut after the first character; what could start the stop string is never shown
    r = client.completions.create(model="tiny", prompt="the", max_tokens=8, temperature=0, stop=[stop, "zz"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == text[:text.index(stop)]


def test_bad_requests_get_openai_errors(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client, "hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="stop string"):
        chat(client, "hi", stop=["x" * 501])
    with pytest.raises(openai.BadRequestError, match="n=2"):
        chat(client, "hi", n=2)
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        chat(server.client("wrong"), "hi")
    with pytest.raises(openai.APIStatusError) as e:
        chat(client, "hi " * 40000)   # more tokens than the context
    assert e.value.status_code == 413 and e.value.body["code"] == "context_length_exceeded"

    def post(body, headers={"Authorization": f"Bearer {KEY}"}):
        return httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers, timeout=TIMEOUT)

    for body, status in [(b'{"messages": [', 400), (b"[" * 100000, 400), (b'"hello"', 400), (b"\xff\xfe", 400),
                         (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
                         (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
                         (b" " * (2 << 20), 413)]:
        r = post(body)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}, body[:40]
    assert post(b'{"messages": []}', headers={}).status_code == 401
    assert httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT).status_code in (401, 404)
    assert server.health()["status"] == "ok"   # none of it hurt the server


def test_parallel_streams(server):
    client = server.client()
    prompts = [ENGLISH, CHINESE, "Why is the sky blue?", "Write a haiku."]
    alone = [chat(client, p, temperature=0, max_tokens=64).choices[0].message.content for p in prompts]
    together = [None] * 4

    def run(i):
        together[i] = stream_chat(client, prompts[i], temperature=0, max_tokens=64)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert together == alone   # batched, each sequence still sees its own cache only


def test_speculation_is_on_by_default_and_replies_the_same(server, model_path):
    # --speculate ngram (the default) against none: greedy replies token for token alike
    plain = Server(model_path, "--parallel", "4", "--speculate", "none")
    try:
        assert server.health()["speculate"] == "ngram" and plain.health()["speculate"] == "none"
        for prompt in (ENGLISH, CHINESE, "ab ab ab ab ab ab ab ab"):
            a, b = (chat(s.client(), prompt, temperature=0, max_tokens=60, logprobs=True) for s in (plain, server))
            assert b.choices[0].message.content == a.choices[0].message.content
            assert [t.logprob for t in b.choices[0].logprobs.content] == \
                [t.logprob for t in a.choices[0].logprobs.content]
        assert plain.health()["draft_tokens"] == 0
    finally:
        plain.stop()


# --- one slot, no queue: a full house, a dropped stream, shutting down

@pytest.fixture(scope="module")
def one_slot(model_path):
    s = Server(model_path, "--parallel", "1", "--queue", "0", "--ctx", "131072", "--precision", "fast")
    yield s
    s.stop()


def test_a_full_house_and_a_dropped_stream(one_slot):
    s, body = one_slot, {"messages": [{"role": "user", "content": ENGLISH}], "stream": True, "temperature": 0}
    with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=TIMEOUT) as r:
        data = (line for line in r.iter_lines() if line.startswith("data: "))
        next(data), next(data)   # the role, then the first token: the reply is under way
        assert s.health()["slots_busy"] == 1
        with pytest.raises(openai.APIStatusError) as e:
            chat(s.client(), "hi", max_tokens=2)
        assert e.value.status_code == 503 and e.value.body["code"] == "server_busy"
    # left alone, the reply would take minutes to fill its 131072-token context; dropped, its slot is
    # free within a step (the bound is for a machine under heavy load, not a measure)
    deadline = time.monotonic() + 30
    while s.health()["slots_busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert s.health()["slots_busy"] == 0
    assert chat(s.client(), "hi", max_tokens=2).choices[0].finish_reason == "length"


def test_precision_is_the_one_asked_for(one_slot, model_path):
    # --precision reaches the engine: the server's greedy reply is the API's at that precision
    assert one_slot.health()["precision"] == "fast"
    r = one_slot.client().completions.create(model="tiny", prompt="the", max_tokens=8, temperature=0)
    m = minigpt.load(model_path, threads=1, precision="fast")
    assert r.choices[0].text == "".join(m.generate("the", max_tokens=8, temperature=0))


def test_a_client_that_stops_waiting_frees_its_slot(one_slot):
    body = {"messages": [{"role": "user", "content": ENGLISH}], "temperature": 0}   # a whole reply, minutes long
    with pytest.raises(httpx.TimeoutException):
        httpx.post(one_slot.url + "/v1/chat/completions", json=body, timeout=2)
    deadline = time.monotonic() + 30
    while one_slot.health()["slots_busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert one_slot.health()["slots_busy"] == 0


def test_sigterm_lets_the_request_in_flight_finish(one_slot):
    stream = chat(one_slot.client(), ENGLISH, temperature=0, max_tokens=5000, stream=True,
                  stream_options={"include_usage": True})
    chunks = [next(stream), next(stream)]   # the role, then the first token: the reply is under way
    one_slot.proc.send_signal(signal.SIGTERM)
    chunks += list(stream)
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 5000
    assert one_slot.proc.wait(timeout=TIMEOUT) == 0   # one SIGTERM: a second one could land mid-exit


# --- the scheduler in this process: scripted tokens

@pytest.fixture(scope="module")
def model(model_path):
    return minigpt.load(str(model_path), n_ctx=256)


def scripted(tokens, vocab):
    """forward_batch that makes the sampler pick `tokens` in order, whatever the sequence."""
    it = iter(tokens)

    def forward(engine, items, tails, top=None, allowed=None):
        out = []
        for (cache, ids), n in zip(items, tails):
            cache.tokens.extend(ids)   # as the engine would, without computing anything
            logits = np.zeros((n, vocab), np.float32)
            for row in logits:
                row[next(it, 0)] = 30.0
            out.append(logits)
        return out
    return forward


async def run_job(sched, job):
    sched.submit(job)
    return [e async for e in job.events()]


def test_characters_split_across_tokens_come_out_whole(model, monkeypatch):
    byte = {b: 3 + b for b in range(256)}   # the tiny vocabulary: 3 control tokens, then the 256 bytes
    text = "晴天 ok"
    tokens = [byte[b] for b in text.encode()]
    monkeypatch.setattr(scheduler, "forward_batch", scripted(tokens * 2, model.config.vocab_size))
    sched = scheduler.Scheduler(model, parallel=1)
    sched.start()
    try:
        settings = SamplerSettings(temperature=0)
        events = asyncio.run(run_job(sched, scheduler.Job([5, 6], settings, max_tokens=len(tokens))))
        pieces = [e.text for e in events if e.text]
        assert "".join(pieces) == text and pieces[0] == "晴" and events[-1].finish == "length"
        # a stop string: nothing of it shows, not even the part that came before it was known to be one
        job = scheduler.Job([5, 6], settings, max_tokens=len(tokens), stop=("天 o",))
        events = asyncio.run(run_job(sched, job))
        assert "".join(e.text for e in events) == "晴" and events[-1].finish == "stop"
    finally:
        sched.stop()
    assert json.dumps(events[-1].usage)   # usage is plain JSON
