"""`minigpt chat`: the terminal REPL. A ChatSession answers; this file reads lines, prints replies as
they stream, and runs the slash commands. Nothing a user types ends in a traceback."""

import os
import signal
import sys

from .chat import ChatSession
from .engine import ContextFullError
from .errors import MinigptError

HELP = """\
Type a message and press Enter. A line starting with \"\"\" begins a multi-line message; end it with \"\"\".
Ctrl-C stops a reply (what was written stays); Ctrl-C or Ctrl-D at an empty prompt quits.

  /help                 this text
  /exit                 quit (also /quit, /bye)
  /reset                forget the conversation (the system prompt stays)
  /system [TEXT]        show or replace the system prompt
  /set [NAME VALUE]     show or change a setting: temperature, top_k, top_p, min_p, repeat_penalty,
                        repeat_last_n, seed, max_tokens (0 = no limit), stats (on/off), probs (on/off/N),
                        speculate (ngram/off)
  /show                 settings, model and chat template
  /regen                write the last reply again
  /undo                 take back the last message and its reply
  /stats                speed of the last turn and context use
  /save FILE            save the conversation with its context and sampler state
  /load FILE            continue a saved conversation (also: minigpt chat --resume FILE)
  /probs on|off [N]     show the N likeliest next tokens under each token the model writes"""

SAMPLING = {"temperature": float, "top_k": int, "top_p": float, "min_p": float, "repeat_penalty": float,
            "repeat_last_n": int, "seed": int}
PROBS_N = 5


class Repl:
    """The read-eval-print loop over one ChatSession. stats: print speed and context use after each
    reply; probs: show that many candidate tokens under each generated token (0: off); constrain: the
    keywords (response_format, regex or grammar) that constrain every reply (ChatSession.steps)."""

    def __init__(self, model, chat, stats=False, probs=0, out=sys.stdout, constrain=None):
        self.model, self.chat, self.stats, self.probs, self.out = model, chat, stats, probs, out
        self.constrain = constrain or {}
        self.dim = out.isatty() and not os.environ.get("NO_COLOR")
        self._readline = _setup_readline() if sys.stdin.isatty() else None
        self._progress_shown = False

    # --- output

    def say(self, text="", end="\n"):
        self.out.write(text + end)
        self.out.flush()

    def note(self, text):
        """A line about the chat rather than in it (dimmed on a terminal)."""
        self.say(f"\x1b[2m[{text}]\x1b[0m" if self.dim else f"[{text}]")

    # --- the loop

    def run(self, banner=True):
        if banner:
            self._banner()
        while True:
            try:
                text = self._read()
            except EOFError:
                self.say()
                break
            except KeyboardInterrupt:
                self.say()
                if self._readline and self._readline.get_line_buffer().strip():
                    continue   # Ctrl-C on a half-typed line drops the line
                break
            if text is None or not text.strip():
                continue
            try:
                if text.startswith("/"):
                    if self._command(text.strip()) == "exit":
                        break
                else:
                    self._answer(lambda top_n: self.chat.steps(text, self._progress, top_n, **self.constrain))
            except ContextFullError as e:
                self.say(f"error: {e} (start minigpt chat with a larger --ctx)")
            except MinigptError as e:
                self.say(f"error: {e}")
            except Exception as e:   # a bug: one line, and the chat goes on
                if os.environ.get("MINIGPT_DEBUG"):
                    raise
                self.say(f"internal error: {e.__class__.__name__}: {e} (MINIGPT_DEBUG=1 shows a traceback)")
        if self._readline:
            _save_history(self._readline)

    def _read(self):
        """One message: a line, or a \"\"\" block of lines."""
        line = input(">>> ")
        if not line.lstrip().startswith('"""'):
            return line
        first = line.lstrip()[3:]
        if first.rstrip().endswith('"""'):
            return first.rstrip()[:-3]
        lines = [first] if first else []
        while True:
            line = input("... ")
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines)
            lines.append(line)

    def _banner(self):
        m, c = self.model, self.chat
        isa = getattr(m.kern, "isa", lambda: None)()
        self.say(f"minigpt chat · {m.name} · context {c.n_ctx} · "
                 f"{m.kern.name}{f' ({isa})' if isa else ''}, {m.threads} thread{'s' * (m.threads > 1)}")
        self.note('/help lists commands · """ starts a multi-line message · Ctrl-C stops a reply · Ctrl-D quits')

    # --- a turn

    def _answer(self, make_steps):
        """Stream a reply; Ctrl-C cancels it (the session stops before its next token)."""
        chat = self.chat
        previous = signal.signal(signal.SIGINT, lambda *_: chat.cancel())
        n_probs, reply = self.probs, []
        try:
            for step in make_steps(n_probs):
                if not reply:
                    self._clear_progress()
                    self._dropped_note()
                reply.append(step.text)
                if not n_probs:
                    self.say(step.text, end="")
                elif step.token is not None:
                    self.say(probs_line(self.model.tokenizer, step))
        finally:
            signal.signal(signal.SIGINT, previous)
            self._clear_progress()
        if not reply:
            self._dropped_note()
        self.say("".join(reply) if n_probs else "")
        s = chat.last
        if s.stop == "cancelled":
            self.note("stopped")
        elif s.stop == "length":
            self.note(f"cut at {chat.max_tokens} tokens (/set max_tokens N for longer replies)")
        elif s.stop == "context":
            self.note("the context is full: the next message drops the oldest turns")
        if self.stats:
            self.note(self._stats_line())

    def _dropped_note(self):
        n = self.chat.last.dropped_turns
        if n:
            self.note(f"the context is full: dropped the {n} oldest turn{'s' * (n > 1)} to make room")

    def _progress(self, done, total):
        if total >= 256 and self.out.isatty():
            self.out.write(f"\r\x1b[2m[reading the message: {done}/{total} tokens]\x1b[0m")
            self.out.flush()
            self._progress_shown = True

    def _clear_progress(self):
        if self._progress_shown:
            self.out.write("\r\x1b[K")
            self._progress_shown = False

    def _stats_line(self):
        s, c = self.chat.last, self.chat
        return (f"prompt {s.prompt_tokens} tokens, {s.prefill_tps:.0f} tok/s · reply {s.reply_tokens} tokens, "
                f"{s.decode_tps:.1f} tok/s" + (f", drafts {s.accepted}/{s.drafted} taken" if s.drafted else "") +
                f" · context {c.n_past}/{c.n_ctx} ({100 * c.n_past / c.n_ctx:.0f}%)")

    # --- slash commands

    def _command(self, line):
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        c = self.chat
        if name in ("exit", "quit", "bye"):
            return "exit"
        if name == "help":
            self.say(HELP)
        elif name == "reset":
            c.reset()
            self.note("conversation cleared" + (" (the system prompt stays)" if c.system else ""))
        elif name == "system":
            if arg:
                c.set_system(arg)
                self.note("system prompt set")
            else:
                self.say(c.system or "(no system prompt: the chat template's default applies)")
        elif name == "set":
            self._set(arg)
        elif name == "show":
            self._show()
        elif name == "regen":
            user = c.undo()
            if user is None:
                self.say("error: nothing to regenerate yet")
            else:
                self._answer(lambda top_n: c.steps(user, self._progress, top_n, **self.constrain))
        elif name == "undo":
            user = c.undo()
            self.note("nothing to undo" if user is None else f"took back: {_short(user)}")
        elif name == "stats":
            self.say(self._stats_line())
        elif name == "save":
            if not arg:
                raise MinigptError("/save needs a file name")
            c.save(os.path.expanduser(arg))
            self.note(f"saved {c.n_past} tokens of context and {len(c.history)} messages to {arg}")
        elif name == "load":
            if not arg:
                raise MinigptError("/load needs a file name")
            self.chat = ChatSession.load(os.path.expanduser(arg), self.model)
            self.replay()
        elif name == "probs":
            self._set("probs " + (arg or "on"))
        else:
            self.say(f"error: unknown command /{name} (/help lists them)")

    def _set(self, arg):
        c = self.chat
        if not arg:
            for k in SAMPLING:
                self.say(f"  {k:<15} {getattr(c.settings, k)}")
            self.say(f"  {'max_tokens':<15} {c.max_tokens or 'no limit'}")
            self.say(f"  {'speculate':<15} {c.speculate or 'off'}")
            self.say(f"  {'stats':<15} {'on' if self.stats else 'off'}")
            self.say(f"  {'probs':<15} {self.probs or 'off'}")
            return
        name, _, value = arg.partition(" ")
        value = value.strip()
        if not value:
            raise MinigptError(f"/set {name} needs a value")
        if name == "stats":
            self.stats = _on_off(value)
        elif name == "probs":
            self.probs = PROBS_N if value == "on" else 0 if value == "off" else _number(int, name, value)
            if not 0 <= self.probs <= 50:
                self.probs = 0
                raise MinigptError("probs takes on, off or a count from 1 to 50")
        elif name == "max_tokens":
            n = _number(int, name, value) if value not in ("none", "off") else 0
            c.set(max_tokens=n or None)
        elif name == "speculate":
            c.set(speculate=None if value == "off" else value)
        elif name in SAMPLING:
            c.set(**{name: _number(SAMPLING[name], name, value)})
        else:
            raise MinigptError(f"unknown setting {name!r} (/set lists them)")
        self.note(f"{name} = {value}")

    def _show(self):
        m, c = self.model, self.chat
        cfg = m.config
        self.say(f"model      {m.name} ({m.path})")
        self.say(f"arch       {cfg.arch}: {cfg.n_layers} layers, dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads}, "
                 f"vocab {cfg.vocab_size}, trained context {cfg.context_length}")
        self.say(f"engine     {m.kern.name} backend, {m.engine.precision} precision, {c.kv_type} KV cache, {m.threads} threads")
        self.say(f"context    {c.n_past}/{c.n_ctx} tokens, {len(c.history)} messages")
        self.say("settings   " + ", ".join(f"{k} {getattr(c.settings, k)}" for k in SAMPLING) +
                 f", max_tokens {c.max_tokens or 'no limit'}")
        self.say(f"system     {c.system or '(none)'}")
        self.say(f"template   ({m.template.name})")
        for line in m.template.source.splitlines():
            self.say("  " + line)

    def replay(self):
        """Print the conversation (after a load), then how much context it holds."""
        for msg in self.chat.history:
            if msg["role"] == "user":
                self.say(f">>> {msg['content']}")
            elif msg["role"] == "assistant":
                if msg["content"]:   # None: a reply that only called tools (ChatSession.send(tools=...))
                    self.say(msg["content"])
                for call in msg.get("tool_calls", ()):
                    self.note(f"tool call: {call['function']['name']} {_short(call['function']['arguments'])}")
            else:
                self.note(f"{msg['role']}: {_short(msg['content'])}")
        self.note(f"resumed: {self.chat.n_past} tokens of context, nothing re-read")


def probs_line(tokenizer, step):
    """One generated token as a line: how it reads, its probability, and the likeliest alternatives
    (a token a grammar forces has none: it was not sampled)."""
    if step.p is None:
        return f"  {token_label(tokenizer, step.token):<16} forced by the grammar"
    alts = "  ".join(f"{token_label(tokenizer, i)} {p:.1%}" for i, p in step.top if i != step.token)
    return f"  {token_label(tokenizer, step.token):<16} {step.p:6.1%}   | {alts}"


def token_label(tokenizer, token):
    """How a token reads: its text quoted, the raw bytes of a partial character in hex, or its name."""
    b = tokenizer.token_bytes(token)
    if not b:
        return tokenizer.token_text(token)
    try:
        return repr(b.decode("utf-8"))
    except UnicodeDecodeError:
        return "<" + b.hex(" ") + ">"


def _on_off(value):
    if value not in ("on", "off"):
        raise MinigptError(f"expected on or off, got {value!r}")
    return value == "on"


def _number(kind, name, value):
    try:
        return kind(value)
    except ValueError:
        raise MinigptError(f"{name} takes {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def _short(text, n=60):
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


# --- line editing and history (GNU readline where Python has it)

def _history_path():
    from .hub import cache_dir

    return cache_dir() / "chat_history"


def _setup_readline():
    try:
        import readline
    except ImportError:   # e.g. Windows: plain input() still works
        return None
    try:
        readline.read_history_file(_history_path())
    except (OSError, ValueError):
        pass
    readline.set_history_length(1000)
    return readline


def _save_history(readline):
    try:
        _history_path().parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(_history_path())
    except OSError:
        pass
