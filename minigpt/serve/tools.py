"""Tool calls in the shape Qwen2.5's chat template (and Hermes') teaches its model: the grammar that makes
a reply a call, and the parser that turns a reply's calls into OpenAI's tool_calls, whole or streamed.

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A block whose JSON does not parse, or names a tool the request did not give, is not a call: it stays in
the reply's text. A reply that is nothing but such a JSON object, untagged, is a call too: small models
write them so (Qwen2.5-Coder-0.5B), and Llama 3.1's template asks for them ({"name", "parameters"}).
"""

import json
import re
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.S)
# how the template writes calls back into the conversation (Python's json.dumps separators): the model
# reads its own calls in the same shape as it is made to write them
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def call_grammar(tools, name=None, opened=False):
    """Lark grammar (llguidance's dialect) of a reply that is one call of one of `tools` (or of the one
    named `name`), its arguments following that tool's parameters schema; opened: of what follows the
    call's OPEN tag (the model has begun the call on its own).
    tools: [{"type": "function", "function": {"name", "parameters"?}}], as checked by protocol.py.

    Each tool's schema is a root of its own (%json), so its "$ref"s to "#/$defs/..." resolve in it; the
    call's frame around it is literal text, which the grammar forces."""
    rules, choices = [], []
    for i, f in enumerate(t["function"] for t in tools):
        if name in (None, f["name"]):
            schema = {**(f.get("parameters") or {"type": "object"}), "x-guidance": _JSON_STYLE}
            rules.append(f"args_{i}: %json {json.dumps(schema)}")
            frame = '{"name": "' + f["name"] + '", "arguments": '   # names are [a-zA-Z0-9_-] (protocol.py)
            choices.append(f'{json.dumps(frame)} args_{i} "}}"')
    head, tail = json.dumps(("" if opened else OPEN) + "\n"), json.dumps("\n" + CLOSE)
    return "\n".join([f"start: {head} call {tail}", "call: " + " | ".join(choices), *rules])


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
    except ValueError:
        return None
    if not (isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"] in names):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):   # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
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
