"""Chat templates: the model's own Jinja2 template turns a conversation into the prompt text.

A template in a model file is untrusted input, so it runs in Jinja2's immutable sandbox: it may loop,
branch and format, but not reach Python internals (`''.__class__...`), mutate the messages, or call
anything but the few helpers HF templates expect (raise_exception, strftime_now). A template that
tries is refused with a TemplateError naming what it tried.

    t = ChatTemplate.for_model(source, default, has_token, bos_token="<s>", eos_token="</s>")
    text = t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""

import datetime
import json

import jinja2
import jinja2.sandbox

from .errors import MinigptError

MAX_OUTPUT_CHARS = 4 << 20   # a template that writes more than this is runaway, not a prompt


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

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
          "{{ m.content | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

PLAIN = ("{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n\n{% endfor %}"
         "{% if add_generation_prompt %}Assistant:{% endif %}")

# (marker token, name, template, extra stop strings)
_BUILTINS = [
    ("<start_of_turn>", "gemma", GEMMA, ()),
    ("<|im_start|>", "chatml", CHATML, ()),
    ("<|start_header_id|>", "llama3", LLAMA3, ()),
]


def _raise_exception(message):
    raise TemplateError(f"the chat template says: {message}")


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, where touching an unsafe attribute is an error at once (the stock
    one returns an undefined value that only fails when used, so a probe could go unnoticed)."""

    def unsafe_undefined(self, obj, attribute):
        raise jinja2.sandbox.SecurityError(f"access to attribute {attribute!r} of a "
                                           f"{type(obj).__name__!r} object is unsafe")


class ChatTemplate:
    """A compiled, sandboxed chat template. name: 'file' for the model's own, else the built-in's name.

    stop: extra stop strings a plain-text template needs (the model's end-of-turn tokens cover the rest).
    """

    def __init__(self, source, name="file", bos_token="", eos_token="", stop=()):
        self.source, self.name, self.stop = source, name, tuple(stop)
        self.bos_token, self.eos_token = bos_token, eos_token
        env = _Sandbox(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
            undefined=jinja2.Undefined, autoescape=False)
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template ({name}): syntax error on line {e.lineno}: {e.message}") from None
        except Exception as e:   # any other failure to compile is the template's, not ours
            raise TemplateError(f"chat template ({name}) cannot be compiled: {e}") from None

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

    def render(self, messages, add_generation_prompt=True):
        """messages: [{"role": ..., "content": ...}] -> the prompt text (special tokens as text)."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            parts, n = [], 0
            for piece in self._template.generate(messages=msgs, add_generation_prompt=add_generation_prompt,
                                                 bos_token=self.bos_token, eos_token=self.eos_token):
                n += len(piece)
                if n > MAX_OUTPUT_CHARS:
                    raise TemplateError(f"chat template ({self.name}) wrote more than {MAX_OUTPUT_CHARS} "
                                        f"characters: refused as runaway")
                parts.append(piece)
            return "".join(parts)
        except TemplateError:
            raise
        except jinja2.sandbox.SecurityError as e:
            raise TemplateError(f"chat template ({self.name}) refused: it tries to reach something the sandbox "
                                f"forbids ({e}); templates in model files are untrusted") from None
        except Exception as e:   # TypeError, UndefinedError, RecursionError...: the template is broken
            raise TemplateError(f"chat template ({self.name}) failed: {e.__class__.__name__}: {e}") from None

    def check(self):
        """Render a small conversation once, so a broken or hostile template fails before any chat."""
        self.render([{"role": "user", "content": "Hello"}])
