"""Chat sessions: a conversation over one model's weights, with its own KV cache and sampler.

    chat = model.chat(system="You are helpful.", temperature=0.7, seed=1)
    for piece in chat.send("Hello!"):        # the reply, streamed
        print(piece, end="")
    chat.cancel()                            # from any thread: stops the reply or prefill in progress
    reply = "".join(chat.send("Weather in Oslo?", tools=[WEATHER]))   # the text; the calls: chat.tool_calls
    chat.send_tool_results([{"tool_call_id": chat.tool_calls[0]["id"], "content": '{"sky": "clear"}'}])
    chat.save("talk.mgchat"); chat = ChatSession.load("talk.mgchat", model)

Each turn renders the whole conversation with the model's chat template, then prefills only what the
cache does not hold yet. The cache's tokens are known to spell a prefix of that text (the replies as
they were sampled), so a new turn appends the tokens of the new text only, and turn 10 costs what
turn 1 costs. When the text no longer extends the cache's (after /system, or when the oldest turns
are dropped to make room), it is tokenized afresh and the cache is kept as far as the tokens match.

Sessions share the model's weights and nothing else: two sessions on two threads give the results
each would give alone (their forward passes take turns on the compiled backend).
"""

import copy
import os
import threading
import time
from dataclasses import dataclass

from . import args, constrain
from . import tools as tooling   # `tools` is send()'s argument, as in OpenAI's API
from .engine import KV_TYPES, ContextFullError, Step, TextStream, TokenLoop
from .engine.loop import head_top
from .engine.speculate import SPECULATE
from .errors import ArgumentError, MinigptError
from .sampling import SamplerSettings, make_rng
from .template import ChatTemplate

PREFILL_STEP = 128   # tokens per prefill call: how often cancel() and progress are looked at


@dataclass
class TurnStats:
    """What the last turn cost. stop: 'eos', 'length' (max_tokens), 'context' (the cache is full),
    'stop' (a stop string), 'cancelled' or None (not finished)."""
    prompt_tokens: int = 0         # tokens prefilled for the turn (those the cache did not hold)
    prefill_seconds: float = 0.0
    reply_tokens: int = 0
    decode_seconds: float = 0.0
    stop: str | None = None
    dropped_turns: int = 0         # oldest turns dropped to make room for this one
    drafted: int = 0               # speculation: draft tokens evaluated, and those of them taken
    accepted: int = 0
    kept: bool = False             # the message is in the history (False: cancelled before the reply began)

    @property
    def prefill_tps(self):
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self):
        return self.reply_tokens / self.decode_seconds if self.decode_seconds else 0.0


class ChatSession:
    """One conversation. system: the system prompt (None: the template's default, if any).
    max_tokens: reply length cap (None: until end of turn or a full context). n_ctx: this session's
    context (default and maximum: the model's). kv_type: how this session's KV cache stores keys and
    values (minigpt.engine.KV_TYPES; None: the model's kv_type). seed: None picks a random one (see
    .settings.seed). The other keywords are SamplerSettings fields (temperature, top_k, top_p, min_p,
    repeat_penalty, repeat_last_n). speculate: 'ngram' for speculative decoding by prompt lookup, or None
    (as in Model.generate: the same greedy replies, faster where they copy from the conversation).
    Tools: send(tools=...), .tool_calls, send_tool_results(); .offer holds the tools last offered.

    One turn at a time per session. cancel() may be called from any thread; n_past, last and history
    may be read from any thread at any time (during a turn they show it in progress).
    """

    def __init__(self, model, system=None, max_tokens=None, n_ctx=None, seed=None, kv_type=None, speculate=None,
                 **sampling):
        self.model = model
        self.settings = SamplerSettings().with_(seed=seed, **sampling)
        if seed is None:
            self.settings = self.settings.with_(seed=int.from_bytes(os.urandom(8), "little") >> 1)
        self.max_tokens = args.optional(args.integer, "max_tokens", max_tokens, 1)   # None: no limit
        self.speculate = args.optional(args.choice, "speculate", speculate, SPECULATE)
        n_ctx = args.optional(args.integer, "n_ctx", n_ctx, 1, model.n_ctx) or model.n_ctx
        self.cache = model.new_cache(n_ctx, kv_type=args.optional(args.choice, "kv_type", kv_type, KV_TYPES))
        self.rng = make_rng(self.settings.seed)
        system = args.optional(args.text, "system", system)
        self.messages = [{"role": "system", "content": system}] if system else []
        self.offer = tooling.offer(None)   # the tools last offered, offered again by send_tool_results
        self.last = TurnStats()
        self._text = ""          # the template text the cache's tokens spell; None: not known
        self._marks = []         # per turn: (tokens, text length) before it, or None if unknown
        self._cancel = threading.Event()
        self._busy = threading.Lock()

    # --- what the session holds

    @property
    def template(self) -> ChatTemplate:
        return self.model.template

    @property
    def history(self):
        """The conversation as the model sees it, in OpenAI's shapes, the system prompt first:
        [{'role', 'content'}]; a reply that called tools also has 'tool_calls' (its content is None when
        it is nothing else), and each call's result is a {'role': 'tool', 'tool_call_id', 'content'}."""
        return copy.deepcopy(self.messages)

    @property
    def tool_calls(self):
        """The calls the last reply made, in OpenAI's shape: [{"id", "type": "function", "function":
        {"name", "arguments": a JSON str}}]; [] when it made none (or no reply is the last message)."""
        last = self.messages[-1] if self.messages else {}
        return copy.deepcopy(last.get("tool_calls", [])) if last.get("role") == "assistant" else []

    @property
    def n_ctx(self):
        return self.cache.n_ctx

    @property
    def kv_type(self):
        return self.cache.kv_type

    @property
    def n_past(self):
        """Tokens in the context now."""
        return self.cache.pos

    @property
    def system(self):
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    def set(self, max_tokens=..., speculate=..., **changes):
        """Change sampling settings (SamplerSettings fields, seed included), max_tokens and speculate for
        later turns. A new seed restarts the random stream from it."""
        with self._guard():
            new = self.settings.with_(**changes)
            if max_tokens is not ...:
                self.max_tokens = args.optional(args.integer, "max_tokens", max_tokens, 1)
            if speculate is not ...:
                self.speculate = args.optional(args.choice, "speculate", speculate, SPECULATE)
            if "seed" in changes:
                self.rng = make_rng(new.seed)
            self.settings = new

    # --- changing the conversation

    def reset(self):
        """Forget every turn; keep the system prompt."""
        with self._guard():
            self.messages = self.messages[:1] if self.system is not None else []
            self._forget_cache()

    def set_system(self, text):
        """Replace the system prompt (empty or None: none). The next turn re-reads the conversation."""
        args.optional(args.text, "text", text)
        with self._guard():
            if self.system is not None:
                self.messages = self.messages[1:]
            if text:
                self.messages.insert(0, {"role": "system", "content": text})
            self._text, self._marks = None, []

    def undo(self):
        """Remove the last turn (the user's message and every message after it: the reply, and the tool
        calls and results of a turn that called tools); returns the user's message, or None."""
        with self._guard():
            return self._undo()

    def _undo(self):
        users = [i for i, m in enumerate(self.messages) if m["role"] == "user"]
        if not users:
            return None
        i = users[-1]
        user = self.messages[i]["content"]
        del self.messages[i:]
        mark = self._marks.pop() if self._marks else None
        if mark is None or self._text is None:   # where the turn began is not known: re-read next time
            self._text, self._marks = None, []
        elif self.cache.truncate(mark[0]) < mark[0]:   # a ring has moved on: start afresh
            self._text, self._marks = "", []
        else:
            self._text = self._text[:mark[1]]
        return user

    def regenerate(self, **kw):
        """Take back the last turn's replies and write a new one to the same message (the random stream
        goes on). kw: send()'s; tools and tool_choice default to those last offered."""
        with self._guard():
            user = self._undo()
        if user is None:
            raise MinigptError("nothing to regenerate: no turn yet")
        kw.setdefault("tools", list(self.offer.tools) or None)
        kw.setdefault("tool_choice", self.offer.tool_choice if self.offer.tools else None)
        return self.send(user, **kw)

    def _forget_cache(self):
        self.cache.truncate(0)
        self._text, self._marks = "", []

    # --- a turn

    def cancel(self):
        """Stop the send in progress (thread-safe): a prefill stops within one step, a reply before its
        next token. What was written is kept in the history."""
        self._cancel.set()

    def send(self, text, on_prefill_progress=None, *, tools=None, tool_choice=None, response_format=None, regex=None,
             grammar=None):
        """Stream the reply to `text` as text pieces (whole characters). on_prefill_progress(done, total)
        is called as the prompt's new tokens are read. See .last for what the turn cost and why it ended.

        response_format (a JSON Schema, or OpenAI's json_schema / json_object shapes), regex or grammar
        (Lark) constrain this reply, as in Model.generate; a bad one raises here, before the turn.

        tools, OpenAI's [{"type": "function", "function": {"name", "description", "parameters"}}], are
        rendered by the model's chat template; tool_choice: "auto" (the default with tools: text or a
        call, the model's choice; a call it begins with <tool_call> is constrained from there on),
        "required" (a call), {"type": "function", "function": {"name": ...}} (a call of that one) or
        "none" (the tools are not shown). A call's arguments follow its tool's "parameters" schema. With
        tools the pieces are the reply's content only: the text of a call is not shown; once the turn has
        ended its calls are in .tool_calls (and the reply in .history has them as OpenAI's tool_calls).
        Answer them with send_tool_results()."""
        turn = self._prepare([{"role": "user", "content": args.text("text", text)}], tools, tool_choice,
                             response_format, regex, grammar)
        return _content(self._start(turn, on_prefill_progress, 0), turn.offer)

    def send_tool_results(self, results, on_prefill_progress=None, *, tools=None, tool_choice="auto",
                          response_format=None, regex=None, grammar=None):
        """Answer the last reply's tool calls and stream the reply that follows, as send() does.
        results: [{"tool_call_id": a call's id, "content": a str}], one per call of .tool_calls. tools:
        those offered for the reply (None: those last offered); tool_choice: as send()'s, "auto" unless
        given. The results join the same turn: undo() removes them with it."""
        calls = self.tool_calls
        if not calls:
            raise MinigptError("no tool calls to answer: the last message is not a reply that called tools")
        new = tooling.results(results, calls)
        turn = self._prepare(new, list(self.offer.tools) if tools is None else tools, tool_choice,
                             response_format, regex, grammar)
        return _content(self._start(turn, on_prefill_progress, 0), turn.offer)

    def steps(self, text, on_prefill_progress=None, top_n=0, *, tools=None, tool_choice=None, response_format=None,
              regex=None, grammar=None):
        """Like send(), but yields engine.Step objects: token id, its text, and with top_n > 0 the model's
        probabilities for it and for its top_n likeliest alternatives (none for a token a grammar forces).
        A last Step with token None may carry text held back until the end. With tools, the steps are
        every token the reply is made of, a call's text included (send() shows the content only).

        The turn runs as the iterator is consumed (on any thread); a cancel() from the moment this is
        called counts. Stop a turn with cancel() rather than by abandoning the iterator: text held back
        at that point (part of a character, a possible stop string) is then not shown, nor kept."""
        turn = self._prepare([{"role": "user", "content": args.text("text", text)}], tools, tool_choice,
                             response_format, regex, grammar)
        return self._start(turn, on_prefill_progress, args.integer("top_n", top_n, 0))

    def _prepare(self, new, given, tool_choice, response_format, regex, grammar):
        """The _Turn that appends messages `new`: the tools it offers and the constraint of its reply,
        checked (a bad option raises here, before the turn)."""
        offer = tooling.offer(given, tool_choice)
        if offer.shown and not self.template.renders_tools:
            raise ArgumentError(f"this model's chat template ({self.template.name}) has no place for tools "
                                f"(tool_choice='none' does not show them)")
        fmt = [name for name, v in (("response_format", response_format), ("regex", regex), ("grammar", grammar))
               if v is not None]
        if fmt and offer.choice in ("required", "function"):
            raise ArgumentError(f"{fmt[0]} cannot apply to a reply that must be a tool call")
        if fmt or offer.choice == "none":
            constraint = self.model.constraint(response_format, regex, grammar)
        else:
            constraint = tooling.constraint(self.model, offer)
        return _Turn(new, offer, constraint)

    def _start(self, turn, progress, top_n):
        if not self._busy.locked():
            self._cancel.clear()
        return self._locked_turn(turn, progress, top_n)

    def _locked_turn(self, turn, progress, top_n):
        if not self._busy.acquire(blocking=False):
            raise MinigptError("this session is already answering (one send at a time per session)")
        try:
            yield from self._turn(turn, progress, top_n)
        finally:
            self._busy.release()

    def _turn(self, turn, progress, top_n):
        m, cache = self.model, self.cache
        stats = self.last = TurnStats()
        messages, prompt, ids, stats.dropped_turns = self._fit(self.messages + turn.new, turn.offer)
        extends = stats.dropped_turns == 0 and self._extends(prompt)
        opens = turn.new[0]["role"] == "user"   # a new turn (else tool results: the same turn goes on)
        mark = (cache.pos, len(self._text)) if extends else None

        # prefill what the cache does not hold (at least one token: its logits start the reply)
        keep = min(common_prefix(cache.tokens, ids), len(ids) - 1)
        appends = keep == cache.pos
        n = cache.truncate(keep)   # less when a sliding-window ring no longer holds what keep needs
        if n < keep:
            self._text, self._marks, appends, extends, mark = None, [], False, False, None
        todo = ids[n:]
        t0 = time.perf_counter()
        try:
            logits = m.engine.prefill(todo, cache=cache, chunk=PREFILL_STEP, progress=progress,
                                      cancelled=self._cancel.is_set,
                                      top=head_top(self.settings, top_n), allowed=constrain.allowed(turn.constraint))
            if logits is None:
                stats.stop = "cancelled"
                self._take_back(n, appends)
                return
        except BaseException:   # an error, or Ctrl-C in the program embedding us
            self._take_back(n, appends)
            raise
        stats.prompt_tokens, stats.prefill_seconds = len(todo), time.perf_counter() - t0

        # the turn is on: the conversation now holds the message, the cache spells `prompt`
        stats.kept = True
        self.messages, self.offer = messages, turn.offer
        if not extends:   # where the earlier turns began in this text is not known
            self._marks = [None] * (sum(x["role"] == "user" for x in messages) - opens)
        if opens:
            self._marks.append(mark)
        self._text = prompt
        reply = {"role": "assistant", "content": ""}
        self.messages.append(reply)

        out = TextStream(m.tokenizer, self.template.stop)
        loop = TokenLoop(m.engine, cache, logits, self.settings, self.rng, self.max_tokens, m.tokenizer.eog_ids,
                         self._cancel.is_set, top_n, turn.constraint, self.speculate)
        tokens, steps = [], iter(loop)
        t0 = time.perf_counter()
        try:
            for step in steps:
                tokens.append(step.token)
                step.text = out.push(step.token)
                reply["content"] += step.text
                stats.reply_tokens += 1
                yield step
                if out.stopped:
                    break
            tail = out.flush(partial=False)
            if tail:
                reply["content"] += tail
                yield Step(None, text=tail)
        finally:   # also when the caller stops iterating: the history keeps what was shown
            steps.close()   # the last token shown enters the cache now
            stats.decode_seconds = time.perf_counter() - t0
            stats.drafted, stats.accepted = loop.drafted, loop.accepted
            stats.stop = "stop" if out.stopped else loop.stop or "cancelled"
            # the cache should now end with the reply's tokens, spelling what the history says
            in_cache = cache.tokens[len(cache.tokens) - len(tokens):] == tokens if tokens else True
            spelled = in_cache and _spell(m.tokenizer, tokens) == reply["content"]
            self._text = prompt + reply["content"] if spelled else None
            # the calls, as OpenAI's tool_calls (the template writes them back its own way); a reply without
            # any stays as written, so the template writes it back as the cache spells it
            if turn.offer.shown:
                content, calls = tooling.parse(reply["content"], turn.offer.tools)
                if calls:
                    reply["content"], reply["tool_calls"] = content, calls

    def _take_back(self, n, appends):
        """Undo a prefill that did not finish: the turn never happened."""
        if self.cache.truncate(n) < n or not appends:   # the cache was cut below what it spelled
            self._text, self._marks = None, []

    def _fit(self, messages, offer):
        """Drop the oldest turns until the rendered conversation (with the tools `offer` shows) leaves
        room for a reply. Returns (messages, prompt text, token ids, turns dropped).

        The fewest turns to drop is found by bisection (a loaded chat may hold thousands of turns;
        dropping one at a time would render and tokenize it once per turn), starting from as many as
        must go anyway: every message costs at least one token."""
        n_ctx = self.cache.n_ctx
        room = min(self.max_tokens or n_ctx, n_ctx // 4)
        first = 1 if messages[0]["role"] == "system" else 0
        # where the kept messages may start: dropping k turns keeps messages[starts[k]:] (a turn is a
        # user message and the replies, tool calls and results after it; the last turn always stays)
        starts = [first] + [i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"]

        def attempt(k):
            kept = messages[:first] + messages[starts[k]:]
            prompt = self.template.render(tooling.for_template(kept), add_generation_prompt=True, tools=offer.shown)
            ids = self._tokens_for(prompt) if k == 0 else self._encode(prompt)
            return kept, prompt, ids, k

        def fits(result):
            return len(result[2]) + room <= n_ctx

        best = attempt(0)
        if not fits(best):
            lo = next(k for k, start in enumerate(starts) if first + len(messages) - start + room <= n_ctx
                      or k == len(starts) - 1)
            hi = len(starts) - 1   # the fewest messages there can be: fits, or the best there is
            best = attempt(hi)
            while lo < hi:
                mid = (lo + hi) // 2
                result = attempt(mid)
                if fits(result):
                    best, hi = result, mid
                else:
                    lo = mid + 1
        messages, prompt, ids, dropped = best
        if len(ids) >= n_ctx:
            raise ContextFullError(f"the message is too long: {len(ids)} tokens with the system prompt and template, "
                                   f"and the context holds {n_ctx}")
        return messages, prompt, ids, dropped

    def _extends(self, prompt):
        return self._text is not None and prompt.startswith(self._text) and (self.cache.pos > 0 or not self._text)

    def _tokens_for(self, prompt):
        """Ids for `prompt`: the cache's own tokens followed by the new text's, when the text extends
        what the cache spells; else the whole text tokenized afresh."""
        if self._extends(prompt) and self.cache.pos:
            rest = prompt[len(self._text):]
            return self.cache.tokens + (self.model.tokenizer.encode(rest, special=True) if rest else [])
        return self._encode(prompt)

    def _encode(self, prompt):
        return encode_prompt(self.model.tokenizer, prompt)

    def _guard(self):
        if not self._busy.acquire(blocking=False):
            raise MinigptError("this session is answering: cancel() it, or wait for the reply to end")
        return _Release(self._busy)

    # --- saving and loading: minigpt/chatfile.py

    def save(self, path):
        """Write the conversation, the KV cache and the sampler state to `path` (atomically). Raises
        MinigptError (one line) when it cannot be written, e.g. into a folder that does not exist."""
        from . import chatfile

        with self._guard():
            chatfile.save(self, path)

    @classmethod
    def load(cls, path, model, kv_type=None):
        """A session saved by save(), on the same model: it continues without re-reading anything.
        kv_type: the session's cache type (None: the model's); a cache saved in another type is converted."""
        from . import chatfile

        return chatfile.load(cls, path, model, kv_type)


@dataclass
class _Turn:
    """What a turn appends and how its reply is made, checked before it runs: new, the messages it adds
    (the user's, or tool results); offer, the tools it offers; constraint, its reply's (or None)."""
    new: list
    offer: tooling.Offer
    constraint: object


def _content(steps, offer):
    """The text pieces of a turn's steps: all of them, or with tools, the reply's content only (what
    tools.parse() leaves of it: text that may begin a call is held back until it is known not to, a
    reply that begins with "{" until its end); its calls are read when the turn ends."""
    if not offer.shown:
        yield from (step.text for step in steps if step.text)
        return
    stream = tooling.CallStream(offer.tools)
    for step in steps:
        yield from (d["content"] for d in stream.push(step.text) if "content" in d)
    yield from (d["content"] for d in stream.flush() if "content" in d)


class _Release:
    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.lock.release()


def _spell(tokenizer, ids):
    """The text of a reply's tokens as the session shows it."""
    out = TextStream(tokenizer)
    return "".join(out.push(i) for i in ids) + out.flush(partial=False)


def encode_prompt(tok, prompt):
    """Token ids of a prompt rendered by a chat template: control-token texts become those tokens, and
    BOS comes first when the tokenizer wants one and the template has not written it already."""
    bos_text = tok.token_text(tok.bos_id) if tok.bos_id is not None else None
    add_bos = tok.add_bos and not (bos_text and prompt.startswith(bos_text))
    return tok.encode(prompt, add_bos=add_bos, special=True)


def common_prefix(a, b):
    """How many leading ids a and b share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
