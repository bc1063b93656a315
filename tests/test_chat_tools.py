"""ChatSession's tool calls: send(tools=...), send_tool_results(), and what undo, regenerate and save/load
make of them. On a tiny synthetic model with a Qwen2.5-like template (garbage text, but its calls parse
and validate), and a weather round trip on Qwen2.5-Coder-0.5B-Instruct.
"""

import json
import struct

import jsonschema
import pytest

import minigpt
from minigpt import chatfile, tools
from minigpt.chat import ChatSession
from minigpt.convert import convert
from minigpt.errors import ArgumentError, FormatError, MinigptError
from minigpt.template import LLAMA3

from synthetic import SCHEMAS, TOOLS, TOOLS_TEMPLATE, mgchat_with_header, tiny_llama

TIME_CALL = {"type": "function", "function": {"name": "get_time"}}


def tiny_with(d, template, ctx):
    """The tiny synthetic model with chat template `template`, loaded (written into folder d)."""
    tiny_llama(d / "tiny.gguf", wtype="Q8_0", ctx=ctx, chat_template=template)
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return minigpt.load(str(d / "tiny.mgpt"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_with(tmp_path_factory.mktemp("chat_tools"), TOOLS_TEMPLATE, 1024)


def check_call(call, names=tuple(SCHEMAS)):
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] in names
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def answer(chat, **kw):
    """The results of the last reply's calls, sent back: the reply that follows."""
    results = [{"tool_call_id": c["id"], "content": '{"ok": true}'} for c in chat.tool_calls]
    return "".join(chat.send_tool_results(results, **kw))


def without_ids(history):
    """history with its calls' ids (random) left out."""
    return [{**m, "tool_calls": [c["function"] for c in m["tool_calls"]]} if "tool_calls" in m else m for m in history]


def script(monkeypatch, model, text):
    """Make the model write `text` first (the tiny vocabulary: 3 control tokens, then the 256 bytes), then
    go on with its own choices, masked as the turn's constraint says."""
    it, real = iter([3 + b for b in text.encode()]), model.engine.prefill

    def prefill(*a, **kw):   # every forward goes through it (decode_step too)
        logits = real(*a, **kw)
        token = next(it, None)
        if logits is not None and token is not None:
            logits[token] = 1e4
        return logits

    monkeypatch.setattr(model.engine, "prefill", prefill)


# --- one reply

@pytest.mark.parametrize("choice", ["required", TIME_CALL])
def test_a_required_call_is_a_valid_call(model, choice):
    chat = model.chat(temperature=0, max_tokens=300)
    shown = "".join(chat.send("What time is it?", tools=TOOLS, tool_choice=choice))
    assert shown == "" and chat.last.stop == "eos"   # a call is not shown as text
    [call] = chat.tool_calls
    check_call(call, ("get_time",) if isinstance(choice, dict) else tuple(SCHEMAS))
    last = chat.history[-1]
    assert last["role"] == "assistant" and last["content"] is None and last["tool_calls"] == [call]
    for seed in range(3):   # sampled, not only greedy
        chat = model.chat(temperature=1.0, seed=seed, max_tokens=300)
        "".join(chat.send("Time?", tools=TOOLS, tool_choice=choice))
        check_call(chat.tool_calls[0])


def test_a_call_the_model_begins_is_constrained_from_its_tag_on(model, monkeypatch):
    """tool_choice "auto": free text until the model writes <tool_call> (scripted), then the call's grammar."""
    script(monkeypatch, model, "Hi <tool_call>")
    chat = model.chat(temperature=0, max_tokens=300)
    steps = list(chat.steps("Weather?", tools=TOOLS))
    raw = "".join(s.text for s in steps)
    assert raw.startswith("Hi <tool_call>\n") and raw.endswith("\n</tool_call>") and chat.last.stop == "eos"
    assert chat.history[-1]["content"] == "Hi"
    check_call(chat.tool_calls[0])


def test_send_shows_the_content_and_holds_back_the_call(model, monkeypatch):
    script(monkeypatch, model, "Let me see. <tool_call>")
    chat = model.chat(temperature=0, max_tokens=300)
    pieces = list(chat.send("Weather?", tools=TOOLS))
    assert "".join(pieces) == "Let me see." and len(chat.tool_calls) == 1


def test_none_is_text_and_the_tools_are_not_shown(model):
    chat = model.chat(temperature=0, max_tokens=20)
    reply = "".join(chat.send("Time?", tools=TOOLS, tool_choice="none"))
    assert chat.tool_calls == [] and chat.history[-1]["content"] == reply
    assert "<tools>" not in chat._text and chat.offer.choice == "none"
    chat = model.chat(temperature=0, max_tokens=1)
    "".join(chat.send("Time?", tools=TOOLS))
    assert "<tools>" in chat._text   # "auto", the default with tools: the template renders them


def test_a_call_that_does_not_parse_stays_text(model, monkeypatch):
    script(monkeypatch, model, "<tool_call>")
    chat = model.chat(temperature=0, max_tokens=16)   # cut short inside the call
    "".join(chat.send("Time?", tools=TOOLS))
    assert chat.tool_calls == [] and chat.history[-1]["content"].startswith("<tool_call>")



# --- Llama 3.1's format: a bare {"name", "parameters"} object, results as "ipython" (the built-in template)

@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return tiny_with(tmp_path_factory.mktemp("chat_tools_llama3"), LLAMA3, 2048)


def test_the_format_follows_the_template():
    assert tools.call_format(LLAMA3) is tools.FORMATS["llama3"]
    assert tools.call_format(TOOLS_TEMPLATE) is tools.FORMATS["hermes"]


@pytest.mark.parametrize("choice", ["required", TIME_CALL])
def test_llama3_calls_are_bare_objects_and_results_go_back_as_ipython(llama3, choice):
    chat = llama3.chat(temperature=0, max_tokens=300)
    steps = list(chat.steps("What time is it?", tools=TOOLS, tool_choice=choice))
    raw = "".join(s.text for s in steps)
    assert raw.startswith('{"name": "') and '"parameters": ' in raw and "<tool_call>" not in raw
    [call] = chat.tool_calls
    check_call(call, ("get_time",) if isinstance(choice, dict) else tuple(SCHEMAS))
    assert "Given the following functions" in chat._text and '"name": "get_weather"' in chat._text
    before = chat._text
    answer(chat)
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n{\"ok\": true}<|eot_id|>" in chat._text
    # the call is written back as it was made: the cache goes on from it, the result alone is read
    new = chat._text[len(before):len(chat._text) - len(chat.history[-1]["content"] or "")]
    assert chat._text.startswith(before) and chat.last.prompt_tokens == len(llama3.tokenizer.encode(new, special=True))


def test_a_llama3_call_the_model_begins_is_constrained_from_its_first_bytes(llama3, monkeypatch):
    script(monkeypatch, llama3, '{"name": "')
    chat = llama3.chat(temperature=0, max_tokens=300)
    shown = "".join(chat.send("Weather?", tools=TOOLS))
    assert shown == "" and chat.last.stop == "eos"
    check_call(chat.tool_calls[0])

BAD = [
    (dict(tools={"name": "f"}), "tools must be"),
    (dict(tools=[{"type": "function", "function": {"description": "no name"}}]), r"tools\[0\] must be"),
    (dict(tools=[{"type": "function", "function": {"name": "get weather"}}]), "a name of up to 64"),
    (dict(tools=[TOOLS[0], TOOLS[0]]), "two tools are named 'get_weather'"),
    (dict(tool_choice="required"), "tool_choice needs tools"),
    (dict(tools=TOOLS, tool_choice="always"), "tool_choice must be one of"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}}), "names 'launch'"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]), "grammar"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "must be a tool call"),
]


@pytest.mark.parametrize("kw, match", BAD)
def test_bad_tools_are_one_line_errors_before_the_turn(model, kw, match):
    chat = model.chat(max_tokens=4)
    with pytest.raises(ArgumentError, match=match) as e:
        chat.send("hi", **kw)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600
    assert chat.history == [] and chat.n_past == 0


def test_json_nested_too_deep_is_not_a_call_nor_a_crash():
    deep = "[" * 100000
    assert tools.parse('{"name": "get_time", "arguments": ' + deep, TOOLS)[1] == []
    assert tools.parse('<tool_call>{"name": "get_time", "arguments": "' + deep + '"}</tool_call>', TOOLS)[1] == []
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": deep}}
    with pytest.raises(ArgumentError, match="arguments must be a JSON object"):
        tools.check_calls([call], "tool_calls")

def test_tools_need_a_template_that_renders_them(tmp_path):
    tiny_llama(tmp_path / "plain.gguf", wtype="Q8_0", ctx=256)   # the plain ChatML template: no tools
    convert(tmp_path / "plain.gguf", tmp_path / "plain.mgpt")
    chat = minigpt.load(str(tmp_path / "plain.mgpt")).chat(max_tokens=2)
    with pytest.raises(MinigptError, match=r"chat template \(file\) has no place for tools"):
        chat.send("hi", tools=TOOLS)
    assert "".join(chat.send("hi", tools=TOOLS, tool_choice="none")) is not None


# --- a round trip

def read_only_the_new_text(chat, text, offered=TOOLS):
    """Whether the last turn prefilled only what its conversation adds to `text` (what the cache spelled)."""
    rendered = chat.model.template.render(tools.for_template(chat.history[:-1]), tools=offered)
    new = chat.model.tokenize(rendered[len(text):], special=True)
    return rendered.startswith(text) and chat.last.prompt_tokens == len(new)


def test_results_go_back_and_the_cache_is_reused(model):
    chat = model.chat(temperature=0, max_tokens=300)
    "".join(chat.send("What time is it?", tools=TOOLS, tool_choice=TIME_CALL))
    n_past, text = chat.n_past, chat._text
    chat.set(max_tokens=20)
    reply = answer(chat)
    assert [m["role"] for m in chat.history] == ["user", "assistant", "tool", "assistant"]
    assert chat.history[2] == {"role": "tool", "tool_call_id": chat.history[1]["tool_calls"][0]["id"],
                               "content": '{"ok": true}'}
    # the template writes the call back as the grammar made the model write it: only the new text is read
    assert read_only_the_new_text(chat, text)
    assert chat.n_past == n_past + chat.last.prompt_tokens + chat.last.reply_tokens
    # and the reply is the one a fresh session reading the whole conversation writes
    fresh = model.chat(temperature=0, max_tokens=20)
    fresh.messages = chat.history[:2]
    assert answer(fresh, tools=TOOLS) == reply and fresh.history == chat.history
    # the next turn, after the round trip, reads its own text only too
    text = chat._text
    "".join(chat.send("Thanks!", tools=TOOLS))
    assert read_only_the_new_text(chat, text) and len(chat._marks) == 2 and None not in chat._marks


def test_speculation_gives_the_same_calls(model):
    calls = []
    for speculate in (None, "ngram"):
        chat = model.chat(temperature=0, max_tokens=300, speculate=speculate)
        "".join(chat.send("Time?", tools=TOOLS, tool_choice="required"))
        calls.append([c["function"] for c in chat.tool_calls])
    assert calls[0] == calls[1] and len(calls[0]) == 1


def test_results_must_answer_each_call(model):
    chat = model.chat(temperature=0, max_tokens=300)
    with pytest.raises(MinigptError, match="no tool calls to answer"):
        chat.send_tool_results([])
    "".join(chat.send("Time?", tools=TOOLS, tool_choice="required"))
    call = chat.tool_calls[0]["id"]
    for bad in ([], [{"tool_call_id": "call_x", "content": "1"}], [{"tool_call_id": call, "content": {"t": 1}}],
                [{"content": "1"}], [{"tool_call_id": call, "content": "1"}] * 2, "1"):
        with pytest.raises(ArgumentError):
            chat.send_tool_results(bad)
    assert len(chat.history) == 2


def test_undo_takes_back_the_whole_turn_and_regenerate_offers_the_tools_again(model):
    chat = model.chat(temperature=0, max_tokens=300)
    chat.set(max_tokens=4)
    "".join(chat.send("hello", tools=TOOLS))   # the same tools all along: each turn extends the last
    chat.set(max_tokens=300)
    n_past, text, history = chat.n_past, chat._text, chat.history
    "".join(chat.send("What time is it?", tools=TOOLS, tool_choice="required"))
    calls = chat.tool_calls
    chat.set(max_tokens=6)
    answer(chat)
    chat.set(max_tokens=300)
    assert chat.undo() == "What time is it?"
    assert (chat.n_past, chat._text, chat.history) == (n_past, text, history)
    "".join(chat.send("What time is it?", tools=TOOLS, tool_choice="required"))
    assert [c["function"] for c in chat.tool_calls] == [c["function"] for c in calls]   # greedy: the same call
    assert "".join(chat.regenerate()) == "" and chat.offer.choice == "required"
    assert [c["function"] for c in chat.tool_calls] == [c["function"] for c in calls]
    assert len(chat.history) == 4


def test_save_and_load_keep_calls_results_and_tools(model, tmp_path):
    chat = model.chat(temperature=0.8, max_tokens=300, seed=5)
    "".join(chat.send("Time?", tools=TOOLS, tool_choice="required"))
    chat.set(max_tokens=10)
    chat.save(tmp_path / "calls.mgchat")
    loaded = ChatSession.load(tmp_path / "calls.mgchat", model)
    assert loaded.history == chat.history and loaded.offer == chat.offer and loaded.tool_calls == chat.tool_calls
    expected = answer(chat)
    assert answer(loaded) == expected and loaded.last.prompt_tokens == chat.last.prompt_tokens
    chat.save(tmp_path / "results.mgchat")
    again = ChatSession.load(tmp_path / "results.mgchat", model)
    assert again.history == chat.history and again.undo() == "Time?" and again.history == []



def test_a_version_2_file_loads_and_bad_tool_fields_are_refused(model, tmp_path):
    chat = model.chat(temperature=0, max_tokens=4)
    "".join(chat.send("hello"))
    chat.save(tmp_path / "v3.mgchat")
    h, offset = chatfile.read_header(tmp_path / "v3.mgchat")
    del h["tools"], h["tool_choice"]   # what version 2 wrote
    raw = json.dumps(h).encode()
    head = struct.pack("<8sII", chatfile.MAGIC, 2, len(raw)) + raw
    v2 = tmp_path / "v2.mgchat"
    v2.write_bytes(head + bytes(-len(head) % 64) + (tmp_path / "v3.mgchat").read_bytes()[offset:])
    loaded = ChatSession.load(v2, model)
    assert loaded.history == chat.history and loaded.offer == tools.offer(None)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "[1]"}}
    for change in [lambda h: h["messages"].append({"role": "assistant", "content": None, "tool_calls": [call]}),
                   lambda h: h["messages"].append({"role": "tool", "content": "1"}),
                   lambda h: h["messages"].append({"role": "user", "content": "1", "tools": TOOLS}),
                   lambda h: h.update(tools=[{"type": "function"}]),
                   lambda h: h.update(tools=TOOLS, tool_choice="always")]:
        mgchat_with_header(tmp_path / "v3.mgchat", tmp_path / "bad.mgchat", change)
        with pytest.raises(FormatError, match="corrupt header"):
            ChatSession.load(tmp_path / "bad.mgchat", model)

# --- the real model

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}]
SUNNY = '{"temperature_c": 21, "sky": "sunny"}'


@pytest.fixture(scope="module")
def qwen(qwen2_mgpt):
    return minigpt.load(str(qwen2_mgpt), n_ctx=2048, threads=2)


def test_real_qwen2_calls_the_weather_tool_and_answers(qwen):
    """tool_choice "auto": the model chooses to call (untagged, at 0.5B: parsed, not constrained), with valid
    arguments; given the result it answers in text. The template writes the call back tagged, so the
    next turn re-reads the conversation from where the two differ, and answers as a fresh session does."""
    chat = qwen.chat(temperature=0, max_tokens=60)
    shown = "".join(chat.send("What is the weather like in Paris today?", tools=WEATHER))
    [call] = chat.tool_calls
    arguments = json.loads(call["function"]["arguments"])
    assert shown == "" and call["function"]["name"] == "get_weather" and "paris" in arguments["city"].lower()
    jsonschema.validate(arguments, WEATHER[0]["function"]["parameters"])
    n_past = chat.n_past
    reply = "".join(chat.send_tool_results([{"tool_call_id": call["id"], "content": SUNNY}]))
    assert "21" in reply and chat.tool_calls == [] and chat.history[-1]["content"] == reply
    assert chat.last.prompt_tokens < n_past   # the system block with the tools, and the question, stayed
    fresh = qwen.chat(temperature=0, max_tokens=60)
    fresh.messages = chat.history[:2]
    assert "".join(fresh.send_tool_results([{"tool_call_id": call["id"], "content": SUNNY}], tools=WEATHER)) == reply


def test_real_qwen2_required_call_round_trip_reads_only_the_new_tokens(qwen, tmp_path):
    chat = qwen.chat(temperature=0, max_tokens=60)
    assert "".join(chat.send("Hi! Who are you?", tools=WEATHER, tool_choice="none")) and chat.tool_calls == []
    chat.reset()
    "".join(chat.send("Is it raining in Oslo?", tools=WEATHER, tool_choice="required"))
    [call] = chat.tool_calls
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER[0]["function"]["parameters"])
    text, n_past = chat._text, chat.n_past
    chat.save(tmp_path / "oslo.mgchat")
    results = [{"tool_call_id": call["id"], "content": SUNNY}]
    reply = "".join(chat.send_tool_results(results))
    # the call as the grammar made the model write it is the call as the template writes it back
    assert read_only_the_new_text(chat, text, WEATHER)
    loaded = ChatSession.load(tmp_path / "oslo.mgchat", qwen)
    assert loaded.n_past == n_past and loaded.tool_calls == [call]
    assert "".join(loaded.send_tool_results(results)) == reply   # at 0.5B, often the same call again
    assert without_ids(loaded.history) == without_ids(chat.history)
    assert chat.undo() == "Is it raining in Oslo?" and chat.history == [] and chat.n_past < n_past
