"""Chat templates: the model's own Jinja2 template turns a conversation into the prompt text.

A template in a model file is untrusted input. It runs in Jinja2's immutable sandbox: it may loop,
branch and format, but not reach Python internals (`''.__class__...`), mutate the messages, or call
anything but the few helpers HF templates expect (raise_exception, strftime_now). A template that
tries is refused with a TemplateError naming what it tried.

The sandbox bounds what a template may touch, not how long it runs or how much it builds: two nested
loops over range(100000), or a string doubled sixty times, are legal Jinja2. So templates render in a
child process (template_worker.py) with a memory limit, and one that takes longer than TIME_LIMIT
seconds is stopped. A render costs a round trip of well under a millisecond.

    t = ChatTemplate.for_model(source, default, has_token, bos_token="<s>", eos_token="</s>")
    text = t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""

import atexit
import json
import os
import subprocess
import sys
import threading

import jinja2
import markupsafe

from .errors import MinigptError

TIME_LIMIT = 2.0             # seconds a render may take; real templates take a millisecond
START_LIMIT = 60.0           # seconds the renderer may take to start (a busy machine)
MEMORY_LIMIT = 128 << 20     # bytes a render may use; real templates need a few MB
MAX_SOURCE_CHARS = 1 << 20   # real templates are a few thousand characters; some tool-use ones 20,000


class TemplateError(MinigptError):
    """A chat template that cannot be used: bad syntax, refused by the sandbox, or failing to render."""


# --- built-in templates, for files that carry none (keyed by what the vocabulary or architecture shows)

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

GEMMA = ("{{ bos_token }}{% if messages and messages[0].role == 'system' %}"
         "{% set sys, turns = messages[0].content + '\n\n', messages[1:] %}{% else %}"
         "{% set sys, turns = '', messages %}{% endif %}"
         "{% for m in turns %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
         "{{ (sys if loop.first else '') + m.content | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# Llama 3.1's way with tools: they are listed at the top of the first user message, a call is a bare
# {"name", "parameters"} object (tools.py), its result comes back as the "ipython" role
LLAMA3 = ("{{ bos_token }}{% set ns = namespace(listed=not tools) %}{% for m in messages %}"
          "{% if m.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
          "{% elif m.tool_calls %}<|start_header_id|>assistant<|end_header_id|>\n\n{% for c in m.tool_calls %}"
          "{\"name\": \"{{ c.function.name }}\", \"parameters\": {{ c.function.arguments | tojson }}}"
          "{% endfor %}<|eot_id|>"
          "{% else %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
          "{% if m.role == 'user' and not ns.listed %}{% set ns.listed = true %}"
          "Given the following functions, please respond with a JSON for a function call with its proper "
          "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, "
          "\"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n"
          "{% for t in tools %}{{ t | tojson(indent=4) }}\n\n{% endfor %}{% endif %}"
          "{{ m.content | trim }}<|eot_id|>{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

PLAIN = ("{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n\n{% endfor %}"
         "{% if add_generation_prompt %}Assistant:{% endif %}")

# (marker token, name, template, extra stop strings)
_BUILTINS = [
    ("<start_of_turn>", "gemma", GEMMA, ()),
    ("<|im_start|>", "chatml", CHATML, ()),
    ("<|start_header_id|>", "llama3", LLAMA3, ()),
]


class _Renderer:
    """The child process that renders templates (template_worker.py), shared by every ChatTemplate of
    this process. Started at the first render, and again after a render had to be stopped; requests take
    turns (renders take milliseconds)."""

    def __init__(self):
        self._proc, self._pid, self._lock = None, None, threading.Lock()
        atexit.register(self.stop)

    def render(self, source, name, variables):
        request = (json.dumps({"source": source, "name": name, "vars": variables}) + "\n").encode()
        with self._lock:
            proc = self._running() or self._start()
            try:
                line, late = self._ask(proc, request, TIME_LIMIT)
            except BaseException:   # Ctrl-C while waiting: its answer would be taken for the next one's
                self.stop()
                raise
            if not line:
                self.stop()
                if late:
                    raise TemplateError(f"chat template ({name}) took longer than {TIME_LIMIT:g} s to render: "
                                        f"refused as runaway")
                raise TemplateError(f"chat template ({name}) stopped the renderer (exit code {proc.returncode})")
        reply = json.loads(line)
        if "error" in reply:
            raise TemplateError(reply["error"])
        return reply["text"]

    def _running(self):
        ok = self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None
        return self._proc if ok else None   # a forked copy of this process starts its own

    def _start(self):
        folders = {os.path.dirname(os.path.dirname(m.__file__)) for m in (jinja2, markupsafe)}
        proc = subprocess.Popen(
            [sys.executable, "-I", _WORKER, str(MEMORY_LIMIT), *folders], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        line, _ = self._ask(proc, b"", START_LIMIT)
        if line.strip() != b'{"ready": true}':
            proc.kill()
            proc.wait()
            raise TemplateError(f"cannot start the chat template renderer ({sys.executable} {_WORKER})")
        self._proc, self._pid = proc, os.getpid()
        return proc

    @staticmethod
    def _ask(proc, request, seconds):
        """Send request, read one line; kill the child if it takes longer than seconds. -> (line, late)"""
        late = []
        timer = threading.Timer(seconds, lambda: (late.append(True), proc.kill()))
        timer.start()
        try:
            if request:
                proc.stdin.write(request)
                proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError:   # the child is gone
            line = b""
        finally:
            timer.cancel()
        return line, bool(late)

    def stop(self):
        proc, self._proc = self._proc, None
        if proc is not None and self._pid == os.getpid():
            proc.kill()
            proc.wait()


_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template_worker.py")
_renderer = _Renderer()


class ChatTemplate:
    """A chat template, rendered in the sandbox of the renderer process. name: 'file' for the model's own,
    'custom' for one the user gave, else the built-in's name.

    stop: extra stop strings a plain-text template needs (the model's end-of-turn tokens cover the rest).
    """

    def __init__(self, source, name="file", bos_token="", eos_token="", stop=()):
        if len(source) > MAX_SOURCE_CHARS:
            raise TemplateError(f"chat template ({name}) is {len(source)} characters long: refused (the limit is "
                                f"{MAX_SOURCE_CHARS}; real templates have a few thousand)")
        self.source, self.name, self.stop = source, name, tuple(stop)
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def for_model(cls, source, default, has_token, bos_token="", eos_token=""):
        """The file's template if it has one, else the built-in named `default` (the architecture's
        CHAT_TEMPLATE, or None), else one picked by the special tokens the vocabulary has
        (has_token: text -> bool)."""
        if source:
            return cls(source, "file", bos_token, eos_token)
        for marker, name, text, stop in _BUILTINS:
            if name == default or has_token(marker):
                return cls(text, name, bos_token, eos_token, stop)
        return cls(PLAIN, "plain", bos_token, eos_token, stop=("\nUser:",))

    def render(self, messages, add_generation_prompt=True, tools=None):
        """messages: [{"role": ..., "content": ...}] -> the prompt text (special tokens as text).
        As Hugging Face's apply_chat_template: tools, [{"type": "function", "function": {name, description,
        parameters}}], go to the template as `tools`; an assistant message may carry tool_calls
        [{"id", "type", "function": {"name", "arguments": a dict}}] and a "tool" message a tool_call_id."""
        keys = ("role", "content", "tool_calls", "tool_call_id", "name")
        msgs = [{k: m[k] for k in keys if k in m} for m in messages]
        variables = {"messages": msgs, "add_generation_prompt": add_generation_prompt,
                     "bos_token": self.bos_token, "eos_token": self.eos_token}
        if tools:
            variables["tools"] = tools
        return _renderer.render(self.source, self.name, variables)

    @property
    def renders_tools(self):
        """Whether the template has a place for tools (a template that never reads them would drop them)."""
        return "tools" in self.source

    def check(self):
        """Render a small conversation once, so a broken or hostile template fails before any chat."""
        self.render([{"role": "user", "content": "Hello"}])
