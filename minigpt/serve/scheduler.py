"""Slots and the engine thread: one loop owns the model and advances every request a step at a time.

Each of the --parallel slots holds a KV cache and at most one request. A step gathers, for every busy
slot, its next piece of work (the next chunk of its prompt, or the token it sampled last) and evaluates
them all with one call, forward_batch(). A long prompt is thus read a chunk at a time between the
decode steps of the others, which keep streaming. A request goes to the free slot whose cache holds the
longest prefix of its tokens (a conversation's next turn finds its earlier turns there) and only the rest
is read.

With speculation ('ngram'), a decoding slot whose reply so far repeats earlier text sends, after its
chosen ids, a draft of the tokens likely to follow (engine/speculate.py), and takes as many of them as
the sampler agrees with, each at its own position as if generated one by one: several tokens in one
step. A row costs compute, so a draft goes only as far as its tokens are likely enough to pay for
theirs (speculate.plan: the slot's recent drafts against the measured price of a row); few do beside
several other slots' tokens, many when a lone reply copies. A step never carries more rows than
speculate.max_rows, the most the kernels sum one by one, so every row's logits are a plain step's, bit
for bit: greedy replies are the same, token for token. A step that reads a prompt chunk has no rows to
spare, and drafts then wait.

The server's side talks to the engine thread through Job: submit() queues one, Job.events() yields
what it writes (text pieces, then the end), Job.cancel() stops it from any thread. What a step writes
to all its jobs reaches their event loop in one call, after the step: one wake-up of the loop per step,
not one per job (each costs the engine thread a write to the loop's self-pipe and the loop a turn).
"""

import asyncio
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .. import constrain
from ..chat import common_prefix
from ..engine import TextStream
from ..engine.loop import choose, head_top
from ..engine.speculate import SPECULATE, drafter, max_rows, pass_seconds, plan
from ..errors import ArgumentError, MinigptError, one_line
from ..perplexity import log_softmax
from ..sampling import SamplerSettings, make_rng, screen_top

PROMPT_CHUNK = 128   # prompt tokens a slot reads per step: how long the others' next tokens may wait


def forward_batch(engine, items, tails, top=None, allowed=None):
    """items: [(cache, ids)] -> [logits [tails[k], vocab] of each one's last tails[k] ids]; each cache
    gets its ids appended. One forward pass over all the sequences (Engine.forward_batch): the weights
    are read once per step for every slot. top, allowed: what the slots' draws read of the logits, and
    their grammars' masks (Engine.forward_batch). (The tests script the sampler's choices here.)"""
    return engine.forward_batch(items, tails, top, allowed)


class Busy(Exception):
    """Every slot is busy and the wait queue is full."""


@dataclass
class Event:
    """What the engine thread tells a request: a piece of text with the tokens it completes (and their
    logprobs, when asked for), or the end: finish 'stop' / 'length' with usage, or error (a message)."""
    text: str = ""
    logprobs: list = field(default_factory=list)   # [(token, logprob, [(token, logprob)] best first)]
    finish: str | None = None
    usage: dict | None = None
    error: str | None = None


class Job:
    """One request: its prompt ids and how to sample, as the engine thread runs it.

    max_tokens None: until an end-of-generation token or a full context. stop: strings that end the
    reply (not included). logprobs: report each token's logprob and the top_n likeliest alternatives.
    constraint: a constrain.Constraint the reply follows, or a constrain.Triggered (free text until a
    marker: a tool call the model chose to begin), or None (free text); the reply ends ('stop') when it
    is complete. The engine thread alone touches the generation state, the constraint included;
    cancel() and events() are for the server's side.
    """

    def __init__(self, ids, settings, max_tokens=None, stop=(), logprobs=False, top_n=0, constraint=None):
        self.ids, self.settings, self.max_tokens, self.stop = ids, settings, max_tokens, stop
        self.logprobs, self.top_n, self.constraint = logprobs, top_n, constraint
        self.drafter = None   # speculate.NgramDrafter when the scheduler speculates
        self.cancelled = threading.Event()
        self._events, self._loop = asyncio.Queue(), None
        # engine thread's state
        self.text = None      # TextStream: the reply's text so far
        self.todo = []        # prompt ids not read yet
        self.pending = []     # the ids chosen last (a sampled token, tokens a grammar forced), to evaluate next
        self.cached = 0       # prompt ids found in the slot's cache
        self.n_out = 0
        self.rng = make_rng(settings.seed)

    def cancel(self):
        """Stop the job (from any thread): the engine thread frees its slot before its next step, and
        events() ends."""
        self.cancelled.set()
        self._emit(None)

    async def events(self):
        """The events of the job, up to its end (or its cancel)."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event
            if event.finish or event.error:
                return

    def _emit(self, event):   # from any thread: the event loop's queue takes it in the loop's own thread
        _deliver(self._loop, [(self, event)])


def _deliver(loop, pairs):
    """Put each (job, event) of pairs in its job's queue, in the thread of `loop` (theirs), in one call."""
    def put():
        for job, event in pairs:
            job._events.put_nowait(event)
    try:
        loop.call_soon_threadsafe(put)
    except RuntimeError:   # the event loop is closed: no one is listening any more
        pass


@dataclass
class Slot:
    cache: object
    job: Job | None = None
    used: int = 0    # when its last job began: the least recently used free slot is reused first


class Scheduler:
    """The engine thread over `parallel` slots of model.n_ctx positions, and a wait queue of `queue` jobs.
    speculate: 'ngram' (prompt-lookup drafts) or None."""

    def __init__(self, model, parallel=1, queue=16, speculate=None):
        if speculate is not None and speculate not in SPECULATE:
            raise ArgumentError(f"speculate must be one of {', '.join(SPECULATE)} or None, got {speculate!r}")
        self.model, self.engine, self.queue, self.speculate = model, model.engine, queue, speculate
        # what a pass of 1 .. max_rows rows costs: what a draft's rows are weighed against
        self.seconds = pass_seconds(self.engine, max_rows(self.engine.kern), parallel,
                                    top=screen_top(SamplerSettings())) if speculate else []
        self.drafted = self.accepted = 0   # draft tokens evaluated, and taken (read by /health)
        self.slots = [Slot(model.new_cache(model.n_ctx)) for _ in range(parallel)]
        self.eog_ids = model.tokenizer.eog_ids
        self._waiting = deque()
        self._outbox = []   # (job, event) the engine thread wrote since its last _flush
        self._cv = threading.Condition()
        self._stopping, self._clock = False, 0
        self._thread = threading.Thread(target=self._run, name="minigpt-engine", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        """Stop the engine thread; jobs still running or waiting end with an error."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    def submit(self, job):
        """Queue `job` (from the event loop that will read its events); raises Busy when it cannot wait."""
        job._loop = asyncio.get_running_loop()
        with self._cv:
            free = sum(s.job is None for s in self.slots)
            if self._stopping or len(self._waiting) >= free + self.queue:
                raise Busy()
            self._waiting.append(job)
            self._cv.notify()
        return job

    def load(self):
        """(busy slots, waiting jobs): a snapshot for /health."""
        with self._cv:
            return sum(s.job is not None for s in self.slots), len(self._waiting)

    # --- the engine thread

    def _run(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._waiting or any(s.job for s in self.slots))
                if self._stopping:
                    break
                self._admit()
                busy = [s for s in self.slots if s.job is not None]
            try:
                self._step(busy)
            except Exception:   # a bug must not stop the thread every request waits on
                traceback.print_exc(file=sys.stderr)
                for s in (s for s in busy if s.job is not None):
                    self._end(s, error="internal error: the engine failed on this request")
            finally:
                self._flush()
        with self._cv:
            for s in self.slots:
                if s.job is not None:
                    self._end(s, error="the server is shutting down")
            for job in self._waiting:
                self._post(job, Event(error="the server is shutting down"))
            self._waiting.clear()
            self._flush()

    def _post(self, job, event):
        """Write event to job (engine thread): it leaves with the step's others, at _flush."""
        self._outbox.append((job, event))

    def _flush(self):
        """Send what was posted since the last flush: one call per event loop (in practice, one)."""
        loops = {}
        for job, event in self._outbox:
            loops.setdefault(job._loop, []).append((job, event))
        self._outbox = []
        for loop, pairs in loops.items():
            _deliver(loop, pairs)

    def _admit(self):
        """Free the slots of cancelled jobs, then give free slots to waiting jobs, oldest first."""
        for s in self.slots:
            if s.job is not None and s.job.cancelled.is_set():
                s.job = None
        self._waiting = deque(j for j in self._waiting if not j.cancelled.is_set())
        free = [s for s in self.slots if s.job is None]
        while free and self._waiting:
            job = self._waiting.popleft()
            shared, slot = max(((common_prefix(s.cache.tokens, job.ids), s) for s in free),
                               key=lambda pair: (pair[0], -pair[1].used))
            free.remove(slot)
            # keep what the cache shares with the prompt, but read its last id again: its logits start the reply
            job.cached = slot.cache.truncate(min(shared, len(job.ids) - 1))   # less if a ring has moved on
            job.todo = job.ids[job.cached:]
            job.text = TextStream(self.model.tokenizer, job.stop)
            job.drafter = drafter(self.speculate)
            self._clock += 1
            slot.job, slot.used = job, self._clock

    def _step(self, busy):
        """One forward over every busy slot's next ids: a prompt chunk, or the ids chosen last (a sampled
        token, and the tokens a grammar forced after it: evaluated together), then its draft if any."""
        work = [(s, s.job.todo[:PROMPT_CHUNK] if s.job.todo else s.job.pending) for s in busy]
        drafts = self._drafts(work)
        jobs = [s.job for s, _ in work]
        # a slot's mask is that of the row it samples from: none before its prompt's last chunk, none for
        # a draft's rows (the step then asks for every logit: _top)
        masks = [constrain.allowed(job.constraint) if not draft and len(job.todo) <= len(ids) else None
                 for job, (_, ids), draft in zip(jobs, work, drafts)]
        logits = forward_batch(self.engine, [(s.cache, ids + d) for (s, ids), d in zip(work, drafts)],
                               [len(d) + 1 for d in drafts], _top(jobs, drafts), masks)
        for (slot, ids), draft, rows in zip(work, drafts, logits):
            job = slot.job
            if job.todo:
                job.todo = job.todo[len(ids):]
                if job.todo:   # more prompt to read: these logits are not needed
                    continue
            self._next_tokens(slot, rows, draft)

    def _drafts(self, work):
        """Each (slot, ids) of work's draft: the tokens its drafter guesses will follow ids, as many as
        are worth their rows (speculate.plan: by how often the slot's drafts were taken, against what a
        row costs); [] for a slot reading its prompt or with no guess. The step's rows stay within
        speculate.max_rows, so that the kernels sum each row as they sum it alone: the logits of a plain
        step, bit for bit. A step with a prompt chunk has none to spare."""
        drafts, ps = [[] for _ in work], [0.0] * len(work)
        rows = sum(len(ids) for _, ids in work)
        tokens = sum(len(s.job.todo) <= len(ids) for s, ids in work)   # the slots that sample this step
        if self.speculate is None or rows >= len(self.seconds):
            return drafts
        for k, (slot, ids) in enumerate(work):
            job, cache = slot.job, slot.cache
            if job.todo:
                continue
            ps[k] = job.drafter.chance(cache.pos + len(ids))
            if not plan([1], ps[k:k + 1], rows, tokens, self.seconds)[0]:
                continue   # not even its likeliest token would pay: no need to look
            # a draft's tokens need room in the cache (in one of its chunks: a sliding-window ring can
            # then still take them back), and the reply room for the token after each
            limit = min(len(self.seconds) - rows, cache.chunk - len(ids), cache.n_ctx - cache.pos - len(ids))
            if job.max_tokens is not None:
                limit = min(limit, job.max_tokens - job.n_out - 1)
            drafts[k] = job.drafter.draft(cache.tokens, ids, limit, job.constraint)
        return [d[:n] for d, n in zip(drafts, plan([len(d) for d in drafts], ps, rows, tokens, self.seconds))]

    def _next_tokens(self, slot, rows, draft):
        """Go on with the job from rows [len(draft) + 1, vocab]: the logits after its pending ids, then
        after each token of the draft (in the cache after them). Each row's token is chosen as a plain
        step would choose it; while it is the draft's, the next row is its successor's: the walk stops at
        the first token the draft did not guess (or that the grammar follows with forced ones), which
        becomes the job's pending ids, and the rest of the draft leaves the cache. Writes the tokens'
        text as one event, or ends the job."""
        job, cache = slot.job, slot.cache
        at = first = cache.pos - len(draft)   # where the token chosen from rows[0] goes
        text, logprobs, finish, error = "", [], None, None
        for i, logits in enumerate(rows):
            guess = draft[i] if i < len(draft) else None
            try:
                ids, lp = self._choose(job, cache, logits, at, guess)
            except MinigptError as e:   # the grammar cannot go on
                error = one_line(e)
                break
            if not ids:
                finish = "stop"
                break
            logprobs += lp
            for token in ids:
                job.n_out += 1
                text += job.text.push(token)
                if job.text.stopped:
                    break
            if job.text.stopped or (job.constraint is not None and job.constraint.done):
                finish = "stop"
            elif job.max_tokens is not None and job.n_out >= job.max_tokens:
                finish = "length"
            elif ids == [guess]:   # the draft's token, in the cache already: on to the next row
                at += 1
                continue
            else:                  # evaluated next step; a drafted first one is in the cache already
                taken = ids[0] == guess
                at, ids = at + taken, ids[taken:]
                if at + len(ids) > cache.n_ctx:   # no room to evaluate them
                    finish = "length"
                job.pending = ids
            break
        cache.truncate(at)
        if draft:
            job.drafter.update(at - first, len(draft))
            self.drafted, self.accepted = self.drafted + len(draft), self.accepted + at - first
        if text or logprobs:
            self._post(job, Event(text, logprobs))
        if finish or error:
            self._end(slot, finish, error)

    def _choose(self, job, cache, logits, at, guess=None):
        """(ids, logprobs) the reply goes on with at position `at` of the cache: a token chosen from
        logits [vocab] (loop.choose: masked by the constraint; the draft's guess when the sampler
        agrees), followed by the tokens the constraint forces, as many as max_tokens and the context
        leave room for (at least one); or ([], []) for end-of-generation. A forced token's logprob is 0:
        under the constraint it was certain."""
        s, c = job.settings, job.constraint
        if c is not None and c.done:
            return [], []
        token, logits = choose(logits, cache.tokens, at, s, job.rng, c, guess)
        if token in self.eog_ids:
            return [], []
        logprobs = [_logprobs(logits, token, job.top_n)] if job.logprobs else []
        if c is None:
            return [token], logprobs
        c.advance([token])
        room = cache.n_ctx - at - 1
        if job.max_tokens is not None:
            room = min(room, job.max_tokens - job.n_out - 1)
        forced = c.forced()[:max(room, 0)] if not c.done else []
        c.advance(forced)
        return [token, *forced], logprobs + ([(t, 0.0, []) for t in forced] if job.logprobs else [])

    def _end(self, slot, finish=None, error=None):
        """Finish the slot's job (finish: 'stop' or 'length') or fail it (error), and free the slot."""
        job, slot.job = slot.job, None
        if error:
            return self._post(job, Event(error=error))
        tail = job.text.flush(partial=False)   # an unfinished character is dropped, not shown as U+FFFD
        n_prompt = len(job.ids)
        self._post(job, Event(tail, finish=finish, usage={
            "prompt_tokens": n_prompt, "completion_tokens": job.n_out, "total_tokens": n_prompt + job.n_out,
            "prompt_tokens_details": {"cached_tokens": job.cached}}))


def _top(jobs, drafts):
    """The `top` of a step over jobs (Engine.prefill): the most any of their draws reads of the logits;
    None (all of them) when one reports logprobs, or drafts under a grammar (each draft row would need
    its own mask, known only as the draft is walked)."""
    tops = [None if job.logprobs or (job.constraint is not None and draft) else head_top(job.settings)
            for job, draft in zip(jobs, drafts)]
    return None if None in tops else max(tops, default=None)


def _logprobs(logits, token, top_n):
    """(token, its logprob, [(id, logprob)] of the top_n likeliest) under logits [vocab] (the repeat
    penalty applied) at temperature 1, before any top-k / top-p cut: the model's view, as `generate
    --show-probs` shows it. A log-softmax, so even a token of probability ~0 has a finite logprob.
    Under a constraint, logits are masked: tokens it forbids (-inf) are left out of the top_n."""
    z = log_softmax(logits)
    top = []
    if top_n:   # a partial sort: only the best top_n need ordering
        best = np.argpartition(-z, top_n - 1)[:top_n] if top_n < len(z) else np.arange(len(z))
        top = [(int(i), float(z[i])) for i in best[np.argsort(-z[best], kind="stable")] if z[i] > -np.inf]
    return token, float(z[token]), top
