"""`minigpt serve`'s constrained output and tool calls: on a tiny synthetic model (garbage text, but
constrained garbage: it parses and validates) and one round trip on Qwen2.5-Coder-0.5B-Instruct.

Timeouts are generous and nothing is timed: a busy machine makes these slower, never wrong.
"""

import asyncio
import json
import random
import re
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

import minigpt
from minigpt import tools
from minigpt.chat import encode_prompt
from minigpt.sampling import SamplerSettings
from minigpt.template import LLAMA3
from minigpt.serve import protocol, scheduler

import schemas
from serving import KEY, TIMEOUT, Server, chat, stream_chat, tiny_model
from synthetic import SCHEMAS, TOOLS, TOOLS_TEMPLATE

FIX = Path(__file__).parent / "fixtures"

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve_tools"), chat_template=TOOLS_TEMPLATE)


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--parallel", "2", "--api-key", KEY)
    yield s
    s.stop()


# --- response_format

def test_json_schema_replies_validate_and_stream_alike(server):
    client = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = chat(client, "Who?", temperature=0, max_tokens=60, response_format=fmt)
    assert whole.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole.choices[0].message.content), PERSON)
    streamed, chunks = stream_chat(client, "Who?", temperature=0, max_tokens=60, response_format=fmt)
    assert streamed == whole.choices[0].message.content and chunks[-1].choices[0].finish_reason == "stop"
    for seed in range(3):   # sampled, not only greedy
        r = chat(client, "Who?", temperature=1.0, seed=seed, max_tokens=60, response_format=fmt)
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


@pytest.mark.parametrize("name", sorted(schemas.SCHEMAS))
def test_every_schema_through_the_openai_client(server, name):
    # the schemas test_constrain.py runs through the API and the CLI, sampled wide open
    schema = schemas.SCHEMAS[name]
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    r = chat(server.client(), "As JSON:", temperature=1.5, top_p=1.0, seed=3, max_tokens=300, response_format=fmt,
             extra_body={"top_k": 0, "min_p": 0.0})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_object_is_an_object(server):
    r = chat(server.client(), "Anything", temperature=0.7, seed=1, max_tokens=200,
             response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":   # a random model may write one long string and be cut short
        assert isinstance(json.loads(text), dict)


def test_bad_formats_and_tools_are_400s_of_one_line(server):
    client = server.client()
    bad = [dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
           dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
           dict(response_format={"type": "xml"}),
           dict(tool_choice="required"),
           dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}}),
           dict(tools=TOOLS, tool_choice="always"),
           dict(tools=[{"type": "function", "function": {"description": "no name"}}]),
           dict(tools=[TOOLS[0], TOOLS[0]]),
           dict(tools=[{"type": "function", "function": {"name": "get weather"}}]),
           dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
                tool_choice="required"),
           dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]),
           dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})]
    for kw in bad:
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, "hi", max_tokens=4, **kw)
        message = e.value.body["message"]
        assert "\n" not in message and "Traceback" not in message and len(message) < 600, (kw, message)
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT,
                   json={"prompt": "hi", "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert server.health()["status"] == "ok"


# --- tool calls

def _check_call(call, names=tuple(SCHEMAS)):
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_a_required_call_is_a_valid_call_whole_and_streamed(server, choice):
    client = server.client()
    names = ("get_time",) if isinstance(choice, dict) else tuple(SCHEMAS)
    whole = chat(client, "What time is it?", temperature=0, max_tokens=300, tools=TOOLS, tool_choice=choice)
    c = whole.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None and len(c.message.tool_calls) == 1
    _check_call(c.message.tool_calls[0], names)
    _, chunks = stream_chat(client, "What time is it?", temperature=0, max_tokens=300, tools=TOOLS, tool_choice=choice)
    deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or ()]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == c.message.tool_calls[0].function.name
    assert "".join(d.function.arguments or "" for d in deltas) == c.message.tool_calls[0].function.arguments
    assert {d.index for d in deltas} == {0} and chunks[-1].choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(model="tiny", messages=[{"role": "user", "content": "Time?"}],
                                        temperature=0, max_tokens=300, tools=TOOLS, tool_choice=choice) as s:
        final = s.get_final_completion()   # the openai client's own assembly of the deltas
    assert final.choices[0].message.tool_calls[0].function.arguments == c.message.tool_calls[0].function.arguments


def test_a_schema_with_defs_as_pydantic_writes_them(server):
    """Each tool's schema is its own root: its "$ref"s to "#/$defs/..." resolve."""
    booking = {"type": "object", "$defs": {"Day": {"enum": ["mon", "tue"]}},
               "properties": {"day": {"$ref": "#/$defs/Day"}, "seats": {"type": "integer", "minimum": 1, "maximum": 9}},
               "required": ["day", "seats"], "additionalProperties": False}
    tools_ = TOOLS + [{"type": "function", "function": {"name": "book", "parameters": booking}}]
    r = chat(server.client(), "Book", temperature=0, max_tokens=300, tools=tools_,
             tool_choice={"type": "function", "function": {"name": "book"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "book"
    jsonschema.validate(json.loads(call.function.arguments), booking)


def test_logprobs_of_a_constrained_reply(server):
    """One entry per token, forced ones included (logprob 0: under the grammar they were certain)."""
    client = server.client()
    kw = dict(temperature=0, max_tokens=300, tools=TOOLS, tool_choice="required", logprobs=True, top_logprobs=2)
    whole = chat(client, "Time?", **kw)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens and any(t.logprob == 0.0 for t in content)
    _, chunks = stream_chat(client, "Time?", **kw)
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_tool_results_go_back_and_none_means_text(server):
    client = server.client()
    first = chat(client, "Weather in Oslo?", temperature=0, max_tokens=300, tools=TOOLS, tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}]
    for choice in ("none", "auto"):
        r = chat(client, messages, temperature=0, max_tokens=8, tools=TOOLS, tool_choice=choice)
        assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls
        alone = chat(client, messages[:1], max_tokens=1, tools=TOOLS, tool_choice=choice)
        assert r.usage.prompt_tokens > alone.usage.prompt_tokens + 30   # the call and its result are in the prompt
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        chat(client, messages[:2] + [{"role": "tool", "content": "x"}], max_tokens=4)


def test_arguments_nested_too_deep_are_a_400_not_a_500():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "[" * 100000}}
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}]}
    with pytest.raises(protocol.ApiError, match="arguments must be a JSON object") as e:
        protocol.chat_request(body)
    assert (e.value.status, e.value.param) == (400, "messages")


def test_tools_need_a_template_that_renders_them(tmp_path):
    s = Server(tiny_model(tmp_path), "--api-key", KEY)   # the plain ChatML template of test_serve.py
    try:
        with pytest.raises(openai.BadRequestError, match="no place for tools"):
            chat(s.client(), "hi", max_tokens=4, tools=TOOLS)
        assert chat(s.client(), "hi", max_tokens=4, tools=TOOLS, tool_choice="none").choices[0].message.content
    finally:
        s.stop()



def test_llama3_calls_are_bare_objects_whole_and_streamed(tmp_path):
    """With the built-in Llama 3 template (Llama 3.1's format), a call is {"name", "parameters"} without tags."""
    s = Server(tiny_model(tmp_path, chat_template=LLAMA3), "--api-key", KEY)
    try:
        client = s.client()
        whole = chat(client, "What time is it?", temperature=0, max_tokens=300, tools=TOOLS, tool_choice="required")
        c = whole.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        _check_call(c.message.tool_calls[0], tuple(SCHEMAS))
        _, chunks = stream_chat(client, "What time is it?", temperature=0, max_tokens=300, tools=TOOLS,
                                tool_choice="required")
        deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or ()]
        assert "".join(d.function.arguments or "" for d in deltas) == c.message.tool_calls[0].function.arguments
        messages = [{"role": "user", "content": "What time is it?"}, c.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": c.message.tool_calls[0].id, "content": "12:00"}]
        r = chat(client, messages, temperature=0, max_tokens=4, tools=TOOLS)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    finally:
        s.stop()

# --- parsing calls, whole and streamed

REPLY = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n'
         '</tool_call>\n<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\", \\"hours\\": 3}"}\n</tool_call>  ')


def test_parse_finds_the_calls_and_keeps_the_rest():
    content, calls = tools.parse(REPLY, TOOLS)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"zone": "UTC", "hours": 3}
    assert content.startswith("Let me look.\n") and '"nope"' in content   # not a tool: stays text
    assert tools.parse("  just text <tool", TOOLS) == ("just text <tool", [])
    content, calls = tools.parse(BARE, TOOLS)   # untagged, as Llama 3.1 writes calls
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"zone": "CET", "hours": 1}
    assert tools.parse(BARE + " {}", TOOLS) == (BARE.strip() + " {}", [])
    assert tools.parse('{"name": ["get_time"]}', TOOLS) == ('{"name": ["get_time"]}', [])


BARE = ' {"name": "get_time", "parameters": {"zone": "CET", "hours": 1}}'


@pytest.mark.parametrize("reply", [REPLY, BARE, BARE + " {}", "{} <tool_call>", "  ", "plain <tool_call"])
def test_a_streamed_reply_gives_what_parse_gives(reply):
    content, calls = tools.parse(reply, TOOLS)
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(reply)), min(12, len(reply) - 1)))
        s = tools.CallStream(TOOLS)
        deltas = [d for a, b in zip([0] + cuts, cuts + [len(reply)]) for d in s.push(reply[a:b])] + s.flush()
        assert "".join(d.get("content", "") for d in deltas) == (content or "")
        got = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        assert [g["function"]["name"] for g in got[::2]] == [c["function"]["name"] for c in calls]
        assert [g["function"]["arguments"] for g in got[1::2]] == [c["function"]["arguments"] for c in calls]


# --- the scheduler in this process: forced tokens are evaluated together

def run_job(model, job):
    """The events of one job through a scheduler of one slot (the engine thread, no HTTP)."""
    sched = scheduler.Scheduler(model, parallel=1)
    sched.start()
    try:
        async def run():
            sched.submit(job)
            return [e async for e in job.events()]
        return asyncio.run(run())
    finally:
        sched.stop()


def test_forced_tokens_are_evaluated_in_one_step(model_path, monkeypatch):
    model = minigpt.load(str(model_path), n_ctx=256)
    seen, real = [], scheduler.forward_batch

    def forward(engine, items, tails, top=None, allowed=None):
        seen.append([len(ids) for _, ids in items])
        return real(engine, items, tails, top, allowed)

    monkeypatch.setattr(scheduler, "forward_batch", forward)
    c = model.constraint(regex=r"(yes|no): the answer is (final|open)")
    events = run_job(model, scheduler.Job(model.tokenizer.encode("Q?"), SamplerSettings(temperature=0), max_tokens=50,
                                          constraint=c))
    assert re.fullmatch(r"(yes|no): the answer is (final|open)", "".join(e.text for e in events))
    assert events[-1].finish == "stop"
    assert max(n for step in seen[1:] for n in step) > 1   # after the prompt: a sampled token and the forced rest


def test_a_call_the_model_begins_on_its_own_is_constrained_from_its_tag_on(model_path, monkeypatch):
    """tool_choice "auto": free text until the model writes <tool_call> (scripted here), then the call's grammar."""
    model = minigpt.load(str(model_path), n_ctx=512)
    script = [3 + b for b in b"Hi <tool_call>"]   # the tiny vocabulary: 3 control tokens, then the 256 bytes
    it, real = iter(script), scheduler.forward_batch

    def forward(engine, items, tails, top=None, allowed=None):   # the script's tokens first, then the model's own (masked) choices
        logits = real(engine, items, tails, top, allowed)
        for row in (row for rows in logits for row in rows):
            token = next(it, None)
            if token is not None:
                row[token] = 1e4
        return logits

    monkeypatch.setattr(scheduler, "forward_batch", forward)
    auto = tools.constraint(model, tools.offer(TOOLS))   # free text until <tool_call>, the call's grammar after
    events = run_job(model, scheduler.Job(model.tokenizer.encode("Q?"), SamplerSettings(temperature=0), max_tokens=300,
                                          constraint=auto))
    text = "".join(e.text for e in events)
    content, calls = tools.parse(text, TOOLS)
    assert events[-1].finish == "stop" and content == "Hi" and len(calls) == 1, text
    f = calls[0]["function"]
    jsonschema.validate(json.loads(f["arguments"]), SCHEMAS[f["name"]])


# --- the real model: a round trip with the openai client

def test_real_qwen2_calls_a_tool_and_answers(qwen2_mgpt):
    """The model chooses to call (tool_choice "auto"; it writes the call untagged), with valid arguments;
    given the result, it replies in text that uses it. The reply is llama.cpp's, token for token, on the
    same prompt (tests/fixtures/qwen2_tool_round_trip.json, tools/make_tool_reference.py): at 0.5B the
    model restates its call and the result rather than writing a sentence, in either runtime."""
    ref = json.loads((FIX / "qwen2_tool_round_trip.json").read_text(encoding="utf-8"))
    m = minigpt.load(qwen2_mgpt)
    assert m.template.render(ref["messages"], tools=ref["tools"]) == ref["prompt"]
    assert encode_prompt(m.tokenizer, ref["prompt"]) == ref["prompt_ids"]
    s = Server(qwen2_mgpt, "--threads", "2", "--api-key", KEY)
    try:
        client = s.client()
        name = client.models.list().data[0].id
        messages = ref["messages"][:1]
        first = client.chat.completions.create(model=name, messages=messages, tools=ref["tools"],
                                               tool_choice="auto", temperature=0, max_tokens=40)
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {**ref["messages"][2], "tool_call_id": call.id}]
        second = client.chat.completions.create(model=name, messages=messages, tools=ref["tools"],
                                                tool_choice="auto", temperature=0, max_tokens=60)
        answer = second.choices[0].message
        assert not answer.tool_calls and "21" in answer.content, answer
        assert answer.content == ref["reply"].strip() and second.usage.completion_tokens == len(ref["reply_ids"])
    finally:
        s.stop()
