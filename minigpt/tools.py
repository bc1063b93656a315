"""Tool calls in the shapes chat templates teach their models: the tools a request offers, checked; the
grammar that makes a reply a call; and the parser that turns a reply's calls into OpenAI's tool_calls,
whole or streamed. Shared by the chat API (chat.py) and the server (serve/). Two shapes (FORMATS),
told apart by the template (call_format()): Qwen2.5's (and Hermes'), the default,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and Llama 3.1's, a bare object: {"name": "get_weather", "parameters": {"city": "Paris"}}.

A block whose JSON does not parse, or names a tool the request did not give, is not a call: it stays in
the reply's text. A reply that is nothing but such a JSON object, untagged, is a call too: small models
write them so (Qwen2.5-Coder-0.5B), and Llama 3.1's template asks for them ({"name", "parameters"}).

Messages hold calls as OpenAI does, arguments as a JSON str; templates read them as a dict
(for_template()).
"""

import json
import re
import uuid
from typing import NamedTuple

from .constrain import Triggered
from .errors import CLIP_ARG, ArgumentError, clip

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.S)
# how the template writes calls back into the conversation (Python's json.dumps separators): the model
# reads its own calls in the same shape as it is made to write them
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}



class Format(NamedTuple):
    """How a template has its model write a call: `open`, then {"name": ..., <key>: the arguments},
    then `close`. marker: what a call begins with, which ends the free text of a reply under
    tool_choice "auto" (the grammar takes over after it)."""
    open: str
    key: str
    close: str
    marker: str


FORMATS = {
    "hermes": Format(OPEN + "\n", "arguments", "\n" + CLOSE, OPEN),   # Qwen2.5, Hermes 2 Pro
    "llama3": Format("", "parameters", "", '{"name": "'),            # Llama 3.1 and later
}


def call_format(template_source):
    """The Format a chat template teaches: Llama 3's where it renders calls with "parameters" and no
    <tool_call> tags, else Qwen2.5's."""
    llama3 = OPEN not in template_source and '"parameters"' in template_source
    return FORMATS["llama3" if llama3 else "hermes"]


CHOICES = ("none", "auto", "required")   # or {"type": "function", "function": {"name": ...}}
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")   # OpenAI's rule for function names


# --- what a request offers, checked

class Offer(NamedTuple):
    """The tools a reply may call, checked. choice: "none" (or no tools: the model is not told of them),
    "auto" (text or a call, the model's choice), "required" (a call) or "function" (a call of the one
    named `name`)."""
    tools: list
    choice: str
    name: str | None

    @property
    def shown(self):
        """The tools the chat template renders (None: none)."""
        return self.tools if self.choice != "none" else None

    @property
    def tool_choice(self):
        """choice as OpenAI's tool_choice spells it."""
        if self.choice == "function":
            return {"type": "function", "function": {"name": self.name}}
        return self.choice


def offer(tools, tool_choice=None):
    """The Offer of OpenAI's tools and tool_choice (None: "auto" with tools, "none" without, as OpenAI's
    default). Raises ArgumentError (one line) naming what is wrong."""
    tools = check_tools(tools)
    choice, name = check_choice(tool_choice, tools)
    return Offer(tools, choice, name)


def check_tools(value):
    """[{"type": "function", "function": {name, description?, parameters?}}] with distinct names (None: [])."""
    if value is None:
        return []
    shape = "[{type: 'function', function: {name, description, parameters}}]"
    if not isinstance(value, list):
        raise ArgumentError(f"tools must be {shape}, got {clip(value, CLIP_ARG)}")
    names = set()
    for i, tool in enumerate(value):
        f = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        ok = (isinstance(f, dict) and isinstance(f.get("name"), str) and NAME.fullmatch(f["name"])
              and isinstance(f.get("parameters", {}), dict) and isinstance(f.get("description", ""), str))
        if not ok:
            raise ArgumentError(f"tools[{i}] must be {{type: 'function', function: {{name, description, parameters}}}} "
                                f"with a name of up to 64 of a-z, A-Z, 0-9, _ and -, got {clip(tool, CLIP_ARG)}")
        if f["name"] in names:
            raise ArgumentError(f"tools: two tools are named {f['name']!r}")
        names.add(f["name"])
    return value


def check_choice(value, tools):
    """(choice, name) of OpenAI's tool_choice, for `tools` as check_tools() passed them."""
    if value is None:
        return ("auto" if tools else "none"), None
    if isinstance(value, str) and value in CHOICES:
        name = None
    else:
        f = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str):
            raise ArgumentError(f"tool_choice must be one of {', '.join(CHOICES)} or {{type: 'function', "
                                f"function: {{name}}}}, got {clip(value, CLIP_ARG)}")
        value = "function"
    if value != "none" and not tools:
        raise ArgumentError("tool_choice needs tools")
    if name is not None and name not in {t["function"]["name"] for t in tools}:
        raise ArgumentError(f"tool_choice names {name!r}, which is not one of the tools")
    return value, name


# --- calls and results in a conversation

def check_calls(value, where):
    """An assistant message's tool_calls in OpenAI's shape -> the same with each call's arguments parsed
    from their JSON str (a dict), as templates read them."""
    shape = "[{id, type: 'function', function: {name, arguments: a JSON object as a str}}]"
    if not isinstance(value, list):
        raise ArgumentError(f"{where} must be {shape}, got {clip(value, CLIP_ARG)}")
    out = []
    for call in value:
        f = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("arguments"), str)):
            raise ArgumentError(f"{where} must be {shape}, got {clip(call, CLIP_ARG)}")
        try:
            arguments = json.loads(f["arguments"])
        except (ValueError, RecursionError):   # RecursionError: [[[[...]]]] nested beyond Python's stack
            arguments = None
        if not isinstance(arguments, dict):
            raise ArgumentError(f"{where}: arguments must be a JSON object, got {clip(f['arguments'], CLIP_ARG)}")
        out.append({"id": call.get("id"), "type": "function", "function": {"name": f["name"], "arguments": arguments}})
    return out


def call_id(message, where):
    """The tool_call_id a tool's message answers."""
    if not isinstance(message.get("tool_call_id"), str):
        raise ArgumentError(f"{where} (a tool's result) needs the tool_call_id it answers")
    return message["tool_call_id"]


def for_template(messages):
    """messages (OpenAI's shape) as a chat template reads them: calls' arguments as a dict."""
    return [{**m, "tool_calls": check_calls(m["tool_calls"], "tool_calls")} if m.get("tool_calls") else m
            for m in messages]


def results(value, calls):
    """The "tool" messages of `value`, [{"tool_call_id", "content": str}], which must answer each of
    `calls` (a reply's tool_calls) once."""
    shape = "[{tool_call_id, content: a str}], one per call"
    if not isinstance(value, list):
        raise ArgumentError(f"tool results must be {shape}, got {clip(value, CLIP_ARG)}")
    out = []
    for i, r in enumerate(value):
        if not isinstance(r, dict) or not isinstance(r.get("content"), str):
            raise ArgumentError(f"tool results[{i}] must be {{tool_call_id, content: a str}}, got {clip(r, CLIP_ARG)}")
        out.append({"role": "tool", "tool_call_id": call_id(r, f"tool results[{i}]"), "content": r["content"]})
    asked, given = sorted(c["id"] for c in calls), sorted(m["tool_call_id"] for m in out)
    if asked != given:
        raise ArgumentError(f"tool results must answer each call of the last reply once: its calls are "
                            f"{clip(asked, CLIP_ARG)}, the results answer {clip(given, CLIP_ARG)}")
    return out


# --- the reply: constrained to a call, and parsed

def call_grammar(tools, name=None, opened=False, fmt=FORMATS["hermes"]):
    """Lark grammar (llguidance's dialect) of a reply that is one call of one of `tools` (or of the one
    named `name`) in Format `fmt`, its arguments following that tool's parameters schema; opened: of
    what follows the format's marker (the model has begun the call on its own).
    tools: [{"type": "function", "function": {"name", "parameters"?}}], as check_tools() passes them.

    Each tool's schema is a root of its own (%json), so its "$ref"s to "#/$defs/..." resolve in it; the
    call's frame around it is literal text, which the grammar forces."""
    rules, choices = [], []
    for i, f in enumerate(t["function"] for t in tools):
        if name in (None, f["name"]):
            schema = {**(f.get("parameters") or {"type": "object"}), "x-guidance": _JSON_STYLE}
            rules.append(f"args_{i}: %json {json.dumps(schema)}")
            # names are [a-zA-Z0-9_-] (NAME): nothing to escape
            head = fmt.open + '{"name": "' + f["name"] + '", "' + fmt.key + '": '
            choices.append(f'{json.dumps(head[len(fmt.marker) if opened else 0:])} args_{i} {json.dumps("}" + fmt.close)}')
    return "\n".join(["start: " + " | ".join(choices), *rules])


def constraint(model, offer):
    """The constraint of a reply that may call `offer`'s tools (None: free text): one call of them (of
    the one named) when a call is required; under "auto", free text until the model writes its call
    format's marker, the call's grammar from there on (constrain.Triggered). Raises ArgumentError (one
    line) for a schema llguidance cannot compile."""
    fmt = call_format(model.template.source)
    if offer.choice in ("required", "function"):
        return model.constraint(grammar=call_grammar(offer.tools, offer.name, fmt=fmt))
    if offer.choice == "auto":
        call = model.constraint(grammar=call_grammar(offer.tools, opened=True, fmt=fmt))
        return Triggered(model.tokenizer, fmt.marker, call)
    return None


def parse(text, tools):
    """(content, calls) of a whole reply: calls, OpenAI's tool_calls, from its call blocks; content: the
    rest of the text, stripped, None when nothing is left."""
    names = {t["function"]["name"] for t in tools}
    bare = _call(text, names) if text.strip().startswith("{") else None
    if bare is not None:
        return None, [bare]
    calls, rest, pos = [], [], 0
    for m in _BLOCK.finditer(text):
        call = _call(m.group(1), names)
        if call is not None:
            rest.append(text[pos:m.start()])
            pos = m.end()
            calls.append(call)
    rest.append(text[pos:])
    return "".join(rest).strip() or None, calls


def _call(body, names):
    """{"id", "type": "function", "function": {"name", "arguments": a JSON str}} of a block's JSON, or None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):   # RecursionError: [[[[...]]]] nested beyond Python's stack
        return None
    if not (isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"] in names):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):   # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}}


class CallStream:
    """A streamed reply's text pieces in, OpenAI's deltas out (what parse() gives, in pieces): content as
    it comes, except text that may begin a call (held back until it is known) and whitespace that may end
    the content (held back until more text follows); each call, once complete, as two tool_calls deltas:
    its index, id, type and name, then its arguments. A reply that begins with "{" is held back whole:
    it may be an untagged call."""

    def __init__(self, tools):
        self.names = {t["function"]["name"] for t in tools}
        self.buf, self.space, self.started, self.n_calls = "", "", False, 0

    def push(self, text):
        """-> [delta]: {"content": str} or {"tool_calls": [...]}"""
        self.buf += text
        if not self.started and not self.n_calls and self.buf.lstrip()[:1] in ("", "{"):
            return []   # nothing yet, or maybe an untagged call: known at the end
        return self._drain()

    def flush(self):
        """The deltas of what is held back, at the end of the reply (an unfinished call is text)."""
        out = []
        call = _call(self.buf, self.names) if not self.started and self.buf.lstrip()[:1] == "{" else None
        if call is not None:
            self.buf = ""
            self._call(call, out)
        out += self._drain()
        self._content(self.buf, out)
        self.buf = ""
        return out

    def _drain(self):
        out = []
        while True:
            i = self.buf.find(OPEN)
            if i < 0:   # keep what may be the start of OPEN
                keep = next((k for k in range(min(len(OPEN) - 1, len(self.buf)), 0, -1)
                             if OPEN.startswith(self.buf[-k:])), 0)
                self._content(self.buf[:len(self.buf) - keep], out)
                self.buf = self.buf[len(self.buf) - keep:]
                return out
            self._content(self.buf[:i], out)
            self.buf = self.buf[i:]
            j = self.buf.find(CLOSE)
            if j < 0:   # a call still being written
                return out
            block, self.buf = self.buf[:j + len(CLOSE)], self.buf[j + len(CLOSE):]
            call = _call(block[len(OPEN):-len(CLOSE)], self.names)
            if call is None:
                self._content(block, out)
                continue
            self._call(call, out)

    def _call(self, call, out):
        head = {"index": self.n_calls, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        out += [{"tool_calls": [head]},
                {"tool_calls": [{"index": self.n_calls, "function": {"arguments": call["function"]["arguments"]}}]}]
        self.n_calls += 1

    def _content(self, text, out):
        if not self.started:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            out.append({"content": self.space + body})
            self.started, self.space = True, text[len(body):]
        else:
            self.space += text if self.started else ""
