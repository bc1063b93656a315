"""The Python API: `minigpt.load(...)` returns a Model that tokenizes, evaluates and generates."""

import os

import numpy as np

from . import hub, kernels
from .chat import ChatSession
from .engine import Engine, KVCache, Step, TextStream, TokenLoop
from .errors import MinigptError
from .format import MgptFile
from .model import ARCH_FILES, weights
from .sampling import SamplerSettings, make_rng
from .template import ChatTemplate
from .tokenizer import from_fields


def default_threads():
    """Physical cores available to this process (hyper-threads share one core's units)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    try:   # count distinct (package, core) pairs among the allowed CPUs
        cores = set()
        for cpu in os.sched_getaffinity(0):
            base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
            with open(base + "physical_package_id") as a, open(base + "core_id") as b:
                cores.add((a.read().strip(), b.read().strip()))
        return max(1, min(n, len(cores)))
    except (OSError, AttributeError):
        return max(1, n)


class Model:
    """A loaded model: weights mapped from a .mgpt file, a tokenizer, and one KV cache.

    backend: 'c' (default, compiled kernels), 'numba', or 'numpy' (the reference, minigpt/model/decoder.py
    in NumPy: slow, and what the others are checked against). n_ctx: cache length (default: the
    model's). precision: 'balanced' (default), 'exact' or 'fast': how activations are rounded before
    each matmul (minigpt.engine.PRECISIONS), the same on every backend.
    """

    def __init__(self, path, threads=None, backend=None, n_ctx=None, verify=False, precision="balanced"):
        self.path = path
        self.file = MgptFile(path)
        if verify:
            self.file.verify()
        self.config = self.file.config
        self.tokenizer = from_fields(self.file.tokenizer)
        self.chat_template = self.file.chat_template
        self._template = None
        self.kern = kernels.get_backend(backend)
        self.threads = threads or default_threads()
        if threads is not None and not 1 <= threads <= 512:
            raise MinigptError(f"bad thread count {threads}")
        self.kern.set_threads(self.threads)
        self.n_ctx = n_ctx or self.config.context_length
        if not 1 <= self.n_ctx <= self.config.context_length:
            raise MinigptError(f"n_ctx {n_ctx} out of range 1..{self.config.context_length}")
        self.weights = weights.load(self.file, self.config)
        self.engine = Engine(self.config, self.weights, self.kern, self.n_ctx, precision)

    # --- text
    def tokenize(self, text, add_bos=False, special=False):
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids):
        return self.tokenizer.decode(ids)

    # --- evaluation
    def logits(self, ids):
        """float32 [len(ids), vocab], teacher-forced from an empty cache (the model's own cache is untouched)."""
        return self.engine.prefill(ids, all_logits=True, cache=KVCache(self.config, max(1, len(ids))))

    def reset(self):
        self.engine.reset()

    def eval(self, ids):
        """Append ids to the KV cache; logits [vocab] of the last position."""
        return self.engine.prefill(ids)

    @property
    def n_past(self):
        return self.engine.cache.pos

    # --- chat
    @property
    def template(self) -> ChatTemplate:
        """The chat template: the file's own (sandboxed), else a built-in one for the architecture."""
        if self._template is None:
            tok = self.tokenizer
            t = ChatTemplate.for_model(self.chat_template, ARCH_FILES[self.config.arch].CHAT_TEMPLATE,
                                       lambda s: tok.token_id(s) is not None, *self._bos_eos())
            t.check()
            self._template = t
        return self._template

    def set_chat_template(self, source, stop=()):
        """Use `source` (Jinja2 text) instead of the file's chat template; checked now (the file's own is
        never run). stop: strings that end a reply, for templates whose turns end in plain text rather
        than a special token."""
        t = ChatTemplate(source, "custom", *self._bos_eos(), stop)
        t.check()
        self._template = t

    def _bos_eos(self):
        """The texts of the BOS and EOS tokens, as templates see them ('' when there is none)."""
        tok = self.tokenizer
        return tuple(tok.token_text(i) if i is not None else "" for i in (tok.bos_id, tok.eos_id))

    def chat(self, system=None, **kw):
        """A new ChatSession on this model (minigpt.chat.ChatSession: max_tokens, n_ctx, seed and the
        sampling settings as keywords). Sessions share the weights, nothing else."""
        return ChatSession(self, system=system, **kw)

    # --- generation
    def generate(self, prompt, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                 repeat_penalty=1.0, repeat_last_n=64, seed=None, stop=(), special=True):
        """Stream text pieces continuing `prompt` (a str, or a list of token ids), from an empty cache.

        Stops at max_tokens, an end-of-generation token, a full context, or a stop string (not included).
        With special=True, control-token texts in the prompt (e.g. <|im_start|>) become those tokens.
        """
        for step in self.steps(prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                               seed, stop, special):
            if step.text:
                yield step.text

    def steps(self, prompt, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
              repeat_penalty=1.0, repeat_last_n=64, seed=None, stop=(), special=True, top_n=0):
        """generate(), as engine.Step objects: each token with its text and, with top_n > 0, the model's
        probabilities for it and its top_n likeliest alternatives. A last Step with token None may carry
        text held back until the end."""
        settings = SamplerSettings(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                                   seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63))
        if max_tokens < 0:
            raise MinigptError(f"bad max_tokens {max_tokens}")
        ids = prompt if isinstance(prompt, list) else self.tokenize(prompt, self.tokenizer.add_bos, special)
        if not ids:
            ids = [self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id]
        self.reset()
        logits = self.engine.prefill(ids)
        out = TextStream(self.tokenizer, stop)
        for step in TokenLoop(self.engine, self.engine.cache, logits, settings, make_rng(settings.seed), max_tokens,
                              self.tokenizer.eog_ids, top_n=top_n):
            step.text = out.push(step.token)
            yield step
            if out.stopped:
                return
        tail = out.flush()
        if tail:
            yield Step(None, text=tail)


def load(model=None, threads=None, backend=None, n_ctx=None, verify=False, precision="balanced", log=None,
         progress=None):
    """Load a .mgpt file, a GGUF file or a known model name (GGUFs are converted, known models fetched,
    once, into the cache). Default: SmolLM2-135M-Instruct. log(message) and progress(n, total, stage)
    report that first-use work: n more bytes of total are done; stage is 'downloading', 'verifying' or
    'converting'."""
    return Model(hub.resolve(model, log, progress), threads=threads, backend=backend, n_ctx=n_ctx, verify=verify,
                 precision=precision)
