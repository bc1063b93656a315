"""The Python API: `minigpt.load(...)` returns a Model that tokenizes, evaluates and generates."""

import os

import numpy as np

from . import args, constrain, hub, kernels, naming
from .chat import ChatSession
from .engine import DEFAULT_KV_TYPE, KV_TYPES, PRECISIONS, Engine, KVCache, Step, TextStream, TokenLoop
from .engine.cache import kv_row
from .engine.loop import head_top
from .engine.speculate import SPECULATE
from .errors import ArgumentError
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


# The default context is the model's, up to this: a file may claim millions of positions, and the RoPE
# tables (and, as it fills, the cache) grow with the context asked for, not the one claimed.
DEFAULT_N_CTX = 32768


def context_length(config, n_ctx=None):
    """The context a Model of `config` gets when asked for n_ctx (None: the default)."""
    return args.optional(args.integer, "n_ctx", n_ctx, 1, config.context_length) \
        or min(config.context_length, DEFAULT_N_CTX)


class Model:
    """A loaded model: weights mapped from a .mgpt file, a tokenizer, and one KV cache.

    backend: 'c' (default, compiled kernels), 'numba', or 'numpy' (the reference, minigpt/model/decoder.py
    in NumPy: slow, and what the others are checked against). n_ctx: cache length (default: the
    model's context, at most DEFAULT_N_CTX; more on request, up to the model's). precision: 'balanced'
    (default), 'exact' or 'fast': how activations are rounded before each matmul
    (minigpt.engine.PRECISIONS), the same on every backend. kv_type: how the KV cache stores keys and
    values, 'f16' (default), 'f32' or 'q8_0' (minigpt.engine.KV_TYPES).
    """

    def __init__(self, path, threads=None, backend=None, n_ctx=None, verify=False, precision="balanced",
                 kv_type=DEFAULT_KV_TYPE):
        threads, backend, verify, precision, kv_type = _options(threads, backend, verify, precision, kv_type)
        self.kern = kernels.get_backend(backend)
        self.path = args.path("path", path)
        self.file = MgptFile(path)
        if verify:
            self.file.verify()
        self.config = self.file.config
        self.name = hub.display_name(self.path, self.config.name)   # what people read: "Qwen2.5 Coder 0.5B Instruct"
        self.tokenizer = from_fields(self.file.tokenizer, self.config.vocab_size)
        self.chat_template = self.file.chat_template
        self._template = None
        self.threads = threads or min(default_threads(), kernels.MAX_THREADS)
        try:
            self.kern.set_threads(self.threads)
        except ValueError as e:   # a backend with a lower limit (numba: $NUMBA_NUM_THREADS)
            raise ArgumentError(str(e)) from None
        self.n_ctx = context_length(self.config, n_ctx)
        self.weights = weights.load(self.file, self.config)
        _check_kv_type(self.config, kv_type)
        # packing reads each matrix once, and its pages would stay resident beside the packed copy: they go
        # as it is packed (the load's peak: the copies and one original), then the rest no one reads
        self.engine = Engine(self.config, self.weights, self.kern, self.n_ctx, precision, kv_type, self.file.release)
        self.file.release(weights.unused(self.weights, self.engine.weights))
        self.kv_type = kv_type

    # --- text
    def tokenize(self, text, add_bos=False, special=False):
        return self.tokenizer.encode(args.text("text", text), add_bos=add_bos, special=special)

    def detokenize(self, ids):
        return self.tokenizer.decode(args.token_ids("ids", ids, self.tokenizer.n_vocab))

    # --- evaluation
    def logits(self, ids):
        """float32 [len(ids), vocab], teacher-forced from an empty cache (the model's own cache is untouched)."""
        ids = args.token_ids("ids", ids, self.config.vocab_size)
        if len(ids) > self.n_ctx:   # the RoPE tables end there
            raise ArgumentError(f"ids holds {len(ids)} tokens, more than the context's {self.n_ctx} (n_ctx)")
        return self.engine.prefill(ids, all_logits=True, cache=self.new_cache(max(1, len(ids))))

    def new_cache(self, n_ctx, slack=None, kv_type=None):
        """An empty KV cache for n_ctx positions, of kv_type (None: the model's); ChatSession keeps its own."""
        return KVCache(self.config, n_ctx, slack, _check_kv_type(self.config, kv_type or self.kv_type))

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
    def is_base(self):
        """A base model continues text rather than answering: its file has no chat template, and no
        word of its name says it was tuned to chat (Instruct, Chat, IT, ...)."""
        return self.chat_template is None and not naming.says_instruct(self.config.name, self.name,
                                                                         os.path.basename(self.path))

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
        t = ChatTemplate(args.text("source", source), "custom", *self._bos_eos(), args.stop_strings("stop", stop))
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
                 repeat_penalty=1.0, repeat_last_n=64, seed=None, stop=(), special=True, *, response_format=None,
                 regex=None, grammar=None, speculate=None):
        """Stream text pieces continuing `prompt` (a str, or a list of token ids), from an empty cache.

        Stops at max_tokens, an end-of-generation token, a full context, or a stop string (not included).
        With special=True, control-token texts in the prompt (e.g. <|im_start|>) become those tokens.

        Constrained output (at most one of the three; minigpt/constrain.py): response_format, a JSON
        Schema dict, or OpenAI's {"type": "json_schema", "json_schema": {"schema": {...}}} or
        {"type": "json_object"}: the text is compact JSON that validates; regex: the text matches it whole;
        grammar: a Lark grammar (llguidance's dialect) the text follows. The text ends when the grammar
        is complete; give max_tokens room for it (at max_tokens it is cut short).

        speculate="ngram": speculative decoding by prompt lookup (minigpt/engine/speculate.py): the tokens
        that followed the last few tokens' latest earlier occurrence in the prompt and text so far are
        checked several in one forward pass. Faster where the text copies from the prompt (editing code,
        quoting). Greedy text is the same as without it (bit for bit on the 'c' backend; on numpy and numba
        several rows are summed in another order than one, and a near tie may go the other way); sampled
        text follows the same distribution (not the same random stream).

        Bad arguments (a bad schema, regex or grammar too) raise here, before the first piece is asked for.
        """
        steps = self.steps(prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                           stop, special, response_format=response_format, regex=regex, grammar=grammar,
                           speculate=speculate)
        return (step.text for step in steps if step.text)

    def steps(self, prompt, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
              repeat_penalty=1.0, repeat_last_n=64, seed=None, stop=(), special=True, top_n=0, *,
              response_format=None, regex=None, grammar=None, speculate=None):
        """generate(), as engine.Step objects: each token with its text and, with top_n > 0, the model's
        probabilities for it and its top_n likeliest alternatives (none for a token the grammar forces).
        A last Step with token None may carry text held back until the end."""
        settings = SamplerSettings(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        if seed is None:
            settings = settings.with_(seed=int(np.random.SeedSequence().entropy % 2**63))
        max_tokens, top_n = args.integer("max_tokens", max_tokens, 0), args.integer("top_n", top_n, 0)
        stop = args.stop_strings("stop", stop)
        speculate = args.optional(args.choice, "speculate", speculate, SPECULATE)
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, self.tokenizer.add_bos, special)
        else:
            ids = args.token_ids("prompt", prompt, self.config.vocab_size, "a str or a list of token ids")
        if not ids:
            ids = [self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id]
        return self._steps(ids, settings, max_tokens, stop, top_n, self.constraint(response_format, regex, grammar),
                           speculate)

    def constraint(self, response_format=None, regex=None, grammar=None):
        """The constrain.Constraint of one generation under these options (see generate), or None."""
        return constrain.constraint(self.tokenizer, self.config.vocab_size, response_format, regex, grammar)

    def _steps(self, ids, settings, max_tokens, stop, top_n, constraint=None, speculate=None):
        self.reset()
        logits = self.engine.prefill(ids, top=head_top(settings, top_n), allowed=constrain.allowed(constraint))
        out = TextStream(self.tokenizer, stop)
        for step in TokenLoop(self.engine, self.engine.cache, logits, settings, make_rng(settings.seed), max_tokens,
                              self.tokenizer.eog_ids, top_n=top_n, constraint=constraint, speculate=speculate):
            step.text = out.push(step.token)
            yield step
            if out.stopped:
                return
        tail = out.flush()
        if tail:
            yield Step(None, text=tail)


def load(model=None, threads=None, backend=None, n_ctx=None, verify=False, precision="balanced", log=None,
         progress=None, kv_type=DEFAULT_KV_TYPE):
    """Load a .mgpt file, a GGUF file or a known model name (GGUFs are converted, known models fetched,
    once, into the cache). Default: Qwen2.5-Coder-0.5B-Instruct (hub.DEFAULT_MODEL), which also answers
    in Chinese; "smollm2-135m-instruct" is the small, fast English one. log(message) and
    progress(n, total, stage) report that first-use work: n more bytes of total are done; stage is
    'downloading', 'verifying' or 'converting'."""
    _options(threads, backend, verify, precision, kv_type)   # before a download, not after it
    return Model(hub.resolve(args.optional(args.path, "model", model), log, progress), threads=threads, backend=backend,
                 n_ctx=n_ctx, verify=verify, precision=precision, kv_type=kv_type)


def _check_kv_type(cfg, kv_type):
    """kv_type, if a cache of it can hold this model's heads (q8_0 needs head_dim a multiple of 32)."""
    try:
        kv_row(kv_type, cfg.head_dim)
    except ValueError as e:
        raise ArgumentError(f"kv_type {kv_type} does not fit this model: {e}") from None
    return kv_type


def _options(threads, backend, verify, precision, kv_type=DEFAULT_KV_TYPE):
    """Model's options that need no file, checked."""
    return (args.optional(args.integer, "threads", threads, 1, kernels.MAX_THREADS),
            args.optional(args.text, "backend", backend), args.flag("verify", verify),
            args.choice("precision", precision, PRECISIONS), args.choice("kv_type", kv_type, KV_TYPES))
