"""Slots and the engine thread: one loop owns the model and advances every request a step at a time.

Each of the --parallel slots holds a KV cache and at most one request. A step gathers, for every busy
slot, its next piece of work (the next chunk of its prompt, or the token it sampled last) and evaluates
them all with one call, forward_batch(). A long prompt is thus read a chunk at a time between the
decode steps of the others, which keep streaming. A request goes to the free slot whose cache holds the
longest prefix of its tokens (a conversation's next turn finds its earlier turns there) and only the rest
is read.

The server's side talks to the engine thread through Job: submit() queues one, Job.events() yields
what it writes (text pieces, then the end), Job.cancel() stops it from any thread.
"""

import asyncio
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..chat import common_prefix
from ..engine import TextStream
from ..errors import MinigptError, one_line
from ..perplexity import log_softmax
from ..sampling import apply_repeat_penalty, make_rng, sample

PROMPT_CHUNK = 128   # prompt tokens a slot reads per step: how long the others' next tokens may wait




def forward_batch(engine, items):
    """items: [(cache, ids)] -> [logits [vocab] of each one's last id]; each cache gets its ids appended.
    One forward pass over all the sequences (Engine.forward_batch): the weights are read once per step
    for every slot. (The tests script the sampler's choices here.)"""
    return engine.forward_batch(items)


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
    constraint: a constrain.Constraint the reply follows (None: free text); the reply ends ('stop') when
    it is complete. trigger: (marker bytes, Constraint): free text until the reply's bytes reach the
    marker, that constraint from there on (a tool call the model chose to begin). The engine thread alone
    touches the generation state, the constraints included; cancel() and events() are for the server's side.
    """

    def __init__(self, ids, settings, max_tokens=None, stop=(), logprobs=False, top_n=0, constraint=None,
                 trigger=None):
        self.ids, self.settings, self.max_tokens, self.stop = ids, settings, max_tokens, stop
        self.logprobs, self.top_n, self.constraint, self.trigger = logprobs, top_n, constraint, trigger
        self.tail = b""       # the reply's last bytes, while a trigger waits for its marker
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
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:   # the event loop is closed: no one is listening any more
            pass


@dataclass
class Slot:
    cache: object
    job: Job | None = None
    used: int = 0    # when its last job began: the least recently used free slot is reused first


class Scheduler:
    """The engine thread over `parallel` slots of model.n_ctx positions, and a wait queue of `queue` jobs."""

    def __init__(self, model, parallel=1, queue=16):
        self.model, self.engine, self.queue = model, model.engine, queue
        self.slots = [Slot(model.new_cache(model.n_ctx)) for _ in range(parallel)]
        self.eog_ids = model.tokenizer.eog_ids
        self._waiting = deque()
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
        with self._cv:
            for s in self.slots:
                if s.job is not None:
                    self._end(s, error="the server is shutting down")
            for job in self._waiting:
                job._emit(Event(error="the server is shutting down"))
            self._waiting.clear()

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
            self._clock += 1
            slot.job, slot.used = job, self._clock

    def _step(self, busy):
        """One forward over every busy slot's next ids: a prompt chunk, or the ids chosen last (a sampled
        token, and the tokens a grammar forced after it: evaluated together)."""
        work = [(s, s.job.todo[:PROMPT_CHUNK] if s.job.todo else s.job.pending) for s in busy]
        logits = forward_batch(self.engine, [(s.cache, ids) for s, ids in work])
        for (slot, ids), row in zip(work, logits):
            job = slot.job
            if job.todo:
                job.todo = job.todo[len(ids):]
                if job.todo:   # more prompt to read: these logits are not needed
                    continue
            self._next_token(slot, row)

    def _next_token(self, slot, logits):
        """Choose the job's next ids from logits [vocab] (a sampled token, then any the grammar forces);
        write their text, or end the job."""
        job, cache = slot.job, slot.cache
        try:
            ids, logprobs = self._choose(job, cache, logits)
        except MinigptError as e:   # the grammar cannot go on
            return self._end(slot, error=one_line(e))
        if not ids:
            return self._end(slot, "stop")
        text = ""
        for token in ids:
            job.n_out += 1
            text += job.text.push(token)
            if job.text.stopped:
                break
        if text or logprobs:
            job._emit(Event(text, logprobs))
        if job.text.stopped or (job.constraint is not None and job.constraint.done):
            self._end(slot, "stop")
        elif job.max_tokens is not None and job.n_out >= job.max_tokens:
            self._end(slot, "length")
        elif cache.pos + len(ids) > cache.n_ctx:   # no room to evaluate them
            self._end(slot, "length")
        else:
            job.pending = ids

    def _choose(self, job, cache, logits):
        """(ids, logprobs) the reply goes on with: a token sampled from logits [vocab] (masked by the
        constraint), followed by the tokens the constraint forces, as many as max_tokens and the context
        leave room for (at least one); or ([], []) for end-of-generation. A forced token's logprob is 0:
        under the constraint it was certain."""
        s, c = job.settings, job.constraint
        recent = cache.tokens[-s.repeat_last_n:] if s.repeat_last_n else ()
        logits = apply_repeat_penalty(logits, recent, s.repeat_penalty)
        if c is not None:
            if c.done:
                return [], []
            logits = c.mask(logits)
        token = sample(logits, s, job.rng)   # the penalty is applied: no `recent` here
        if token in self.eog_ids:
            return [], []
        logprobs = [_logprobs(logits, token, job.top_n)] if job.logprobs else []
        if c is not None:
            c.advance([token])
        elif (c := self._triggered(job, token)) is None:
            return [token], logprobs
        room = cache.n_ctx - cache.pos - 1
        if job.max_tokens is not None:
            room = min(room, job.max_tokens - job.n_out - 1)
        forced = c.forced()[:max(room, 0)] if not c.done else []
        c.advance(forced)
        return [token, *forced], logprobs + ([(t, 0.0, []) for t in forced] if job.logprobs else [])

    def _triggered(self, job, token):
        """The job's trigger constraint once `token` completes its marker (None before, and for good when
        the text after the marker, in the same token, does not fit the constraint: then it stays free)."""
        if job.trigger is None:
            return None
        marker, c = job.trigger
        b = self.model.tokenizer.token_bytes(token)
        job.tail = (job.tail + b)[-(len(marker) - 1 + len(b)):]
        at = job.tail.find(marker)
        if at < 0:
            return None
        job.trigger, rest = None, job.tail[at + len(marker):]
        try:
            if rest:
                c.advance(self.model.tokenizer.encode(rest.decode("utf-8", "replace")))
        except MinigptError:
            return None
        job.constraint = c
        return c

    def _end(self, slot, finish=None, error=None):
        """Finish the slot's job (finish: 'stop' or 'length') or fail it (error), and free the slot."""
        job, slot.job = slot.job, None
        if error:
            return job._emit(Event(error=error))
        tail = job.text.flush(partial=False)   # an unfinished character is dropped, not shown as U+FFFD
        n_prompt = len(job.ids)
        job._emit(Event(tail, finish=finish, usage={
            "prompt_tokens": n_prompt, "completion_tokens": job.n_out, "total_tokens": n_prompt + job.n_out,
            "prompt_tokens_details": {"cached_tokens": job.cached}}))


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
