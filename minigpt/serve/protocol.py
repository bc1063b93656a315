"""The OpenAI API's requests, checked once at the door: a JSON body in, a Request out, or an ApiError
that says what is wrong, with the status and the JSON body OpenAI's clients expect."""

import json
import os
from dataclasses import dataclass, field

from .. import args, tools
from ..errors import CLIP_ARG, ArgumentError, clip, one_line
from ..sampling import SamplerSettings

MAX_BODY = 1 << 20       # bytes of a request body; a longer one is refused unread (413)
MAX_STOP = 16            # stop strings per request (OpenAI takes 4)
MAX_STOP_CHARS = 500     # per stop string: every token is checked against each one's prefixes
MAX_TOP_LOGPROBS = 20    # OpenAI's limit

# The roles a chat template knows; 'developer' is what newer OpenAI clients call the system prompt.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error as the client sees it: HTTP status and {"error": {message, type, param, code}}."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self):
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A checked /v1/chat/completions or /v1/completions request. Exactly one of messages (chat: [{role,
    content}] with text content; an assistant's may carry tool_calls, a tool's a tool_call_id) and prompt
    (a str or token ids) is set.

    response_format: a JSON Schema shape constrain.py takes (None: text). tools: [{"type": "function",
    "function": {name, description?, parameters?}}]; tool_choice: "none" (or no tools), "auto",
    "required", or "function" for the one named tool_name."""
    messages: list | None
    prompt: str | list | None
    model: str | None
    settings: SamplerSettings
    max_tokens: int | None
    stop: tuple
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    response_format: dict | None = None
    tools: list = field(default_factory=list)
    tool_choice: str = "none"
    tool_name: str | None = None


def parse_body(body: bytes):
    """The JSON object of a request body."""
    if len(body) > MAX_BODY:
        raise ApiError(413, f"the request body is over {MAX_BODY} bytes", code="request_too_large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:   # RecursionError: [[[[...]]]] nested beyond Python's stack
        raise ApiError(400, f"the request body is not valid JSON: {one_line(e, CLIP_ARG)}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def chat_request(body):
    req = _request(body, messages=_messages(body.get("messages")), prompt=None, logprobs=_logprobs(body))
    req.response_format = _response_format(body.get("response_format"))
    req.tools = _shared("tools", tools.check_tools, body.get("tools"))
    req.tool_choice, req.tool_name = _shared("tool_choice", tools.check_choice, body.get("tool_choice"), req.tools)
    if req.response_format is not None and req.tool_choice in ("required", "function"):
        raise ApiError(400, "response_format cannot apply to a reply that must be a tool call", "response_format")
    return req


def completion_request(body):
    _unsupported(body, ("tools", []), ("tool_choice", "none"))
    if body.get("response_format") not in (None, {"type": "text"}):
        raise ApiError(400, "response_format is for /v1/chat/completions", "response_format")
    if body.get("logprobs") not in (None, 0):   # the legacy API's integer: not supported
        raise ApiError(400, "logprobs is not supported on /v1/completions (/v1/chat/completions has them)",
                       "logprobs")
    _unsupported(body, ("echo", False), ("suffix", None), ("best_of", 1))
    return _request(body, messages=None, prompt=_prompt(body.get("prompt")), logprobs=(False, 0))


def _request(body, messages, prompt, logprobs):
    _unsupported(body, ("n", 1), ("frequency_penalty", 0), ("presence_penalty", 0), ("logit_bias", {}))
    stream = _check(body, "stream", args.flag) or False
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, f"stream_options must be an object, got {clip(options, CLIP_ARG)}", "stream_options")
    model = _check(body, "model", args.text)
    return Request(messages, prompt, model, _settings(body), _max_tokens(body), _stop(body.get("stop")), *logprobs,
                   stream, stream and bool(_check(options, "include_usage", args.flag)))


# --- the parts of a request

def _shared(param, check, *values):
    """check(*values), one of tools.py's checks (the chat API shares them), its ArgumentError a 400."""
    try:
        return check(*values)
    except ArgumentError as e:
        raise ApiError(400, str(e), param) from None


def _check(body, name, check, *limits):
    """body[name] checked by one of minigpt.args' checks (None when absent or null)."""
    value = body.get(name)
    try:
        return args.optional(check, name, value, *limits)
    except ArgumentError as e:
        raise ApiError(400, str(e), name) from None


def _settings(body):
    """SamplerSettings from OpenAI's fields and the extra ones llama.cpp's server takes too (top_k,
    min_p, repeat_penalty, repeat_last_n); minigpt's defaults for those not given."""
    s = SamplerSettings()
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "seed"):
        if body.get(name) is not None:
            try:
                s = s.with_(**{name: body[name]})
            except ArgumentError as e:
                raise ApiError(400, str(e), name) from None
    # no seed: a fresh one, so each request draws differently
    return s if s.seed is not None else s.with_(seed=int.from_bytes(os.urandom(8), "little") >> 1)


def _max_tokens(body):
    """max_completion_tokens (the newer name) or max_tokens; None: until the end or a full context."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _check(body, name, args.integer, 1)


def _stop(value):
    try:
        stop = args.stop_strings("stop", value)
    except ArgumentError as e:
        raise ApiError(400, str(e), "stop") from None
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"stop holds {len(stop)} strings; at most {MAX_STOP}", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"a stop string is over {MAX_STOP_CHARS} characters long", "stop")
    return tuple(s for s in stop if s)


def _logprobs(body):
    """(logprobs, top_logprobs) of a chat request."""
    on = _check(body, "logprobs", args.flag) or False
    top = _check(body, "top_logprobs", args.integer, 0, MAX_TOP_LOGPROBS) or 0
    if top and not on:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    return on, top


def _messages(value):
    """[{role, content}] with roles a template knows and text content; an assistant's tool_calls with
    their arguments as a dict (as templates read them), a tool's tool_call_id."""
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object, got {clip(m, CLIP_ARG)}", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, got {clip(role, CLIP_ARG)}",
                           "messages")
        message = {"role": ROLES[role], "content": _content(m.get("content"), where + ".content")}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _shared("messages", tools.check_calls, m["tool_calls"], where + ".tool_calls")
        if role == "tool":
            message["tool_call_id"] = _shared("messages", tools.call_id, m, where)
        out.append(message)
    return out


def _response_format(value):
    """None (text), or {"type": "json_object"} / {"type": "json_schema", "json_schema": {"schema": {...}}}
    checked for shape (the schema itself is checked when its grammar is built)."""
    if value is None or value == {"type": "text"}:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        return value
    if kind == "json_schema":
        inner = value.get("json_schema")
        if isinstance(inner, dict) and isinstance(inner.get("schema"), dict):
            return value
        raise ApiError(400, "response_format of type json_schema needs json_schema: {name, schema: {...}}",
                       "response_format")
    raise ApiError(400, f"response_format must be {{'type': 'text' | 'json_object' | 'json_schema'}}, "
                        f"got {clip(value, CLIP_ARG)}", "response_format")


def _content(value, where):
    """A message's text: a str, or a list of {"type": "text", "text": ...} parts, joined."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}: only text parts are supported, got {clip(part, CLIP_ARG)}", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where} must be a str or a list of text parts, got {clip(value, CLIP_ARG)}", "messages")


def _prompt(value):
    """A completion's prompt: a str, a list of one str, or a list of token ids (checked against the
    vocabulary later)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    raise ApiError(400, f"prompt must be a str, a list of one str or a list of token ids, got {clip(value, CLIP_ARG)}",
                   "prompt")


def _unsupported(body, *defaults):
    """Refuse the fields (name, the value that means 'off') that would change the reply in ways this
    server does not offer, rather than ignoring them silently; their 'off' values, null and empty ones
    (0, "", [], {}, false) pass."""
    for name, off in defaults:
        value = body.get(name)
        if value and value != off:
            raise ApiError(400, f"{name}={clip(value, CLIP_ARG)} is not supported by this server", name)
