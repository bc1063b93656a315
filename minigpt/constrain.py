"""Constrained output: replies that follow a JSON Schema, a regular expression or a Lark grammar.

llguidance (no torch) does the parsing: from the grammar and the model's own token bytes it computes,
before each token, the set of tokens that keep the text valid (a bitmask), and the tokens the grammar
forces (one choice only), which the token loop evaluates together instead of one step each.

    c = constraint(model.tokenizer, model.config.vocab_size, response_format={"type": "json_object"})
    logits = c.mask(logits); c.advance([token]); c.forced(); c.done; c.valid_prefix(draft); c.bits()
    Triggered(tok, "<tool_call>", c): free text until the marker, c after it (the same methods)

The llguidance tokenizer is built once per minigpt tokenizer (cached beside it); a grammar is compiled
per generation. A bad schema, regex or grammar is an ArgumentError of one line.
"""

import json
import re
import threading
import weakref

import llguidance
import llguidance.numpy
import numpy as np

from . import args
from .errors import CLIP_ARG, ArgumentError, ArgumentTypeError, MinigptError, clip

# Compact JSON: no whitespace between tokens, so a reply cannot wander off into blank space and the
# punctuation the schema fixes ('{"name":"') is forced, hence evaluated in one batch.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

_tokenizers = weakref.WeakKeyDictionary()   # minigpt tokenizer -> {n_vocab: llguidance.LLTokenizer}
_lock = threading.Lock()


# --- the llguidance tokenizer, from minigpt's own token bytes

class _Vocab:
    """What llguidance.TokenizerWrapper reads: each token's bytes, the special ids, and encode.
    Tokens that render as no bytes (control, unknown, unused) are special: grammars never use them;
    their text stands in for their bytes so that no two look alike."""

    def __init__(self, tok):
        self._tok = tok
        self.tokens, self.special_token_ids = [], []
        for i in range(tok.n_vocab):
            b = tok.token_bytes(i)
            if not b:
                self.special_token_ids.append(i)
                b = tok.token_text(i).encode("utf-8", "surrogatepass")
            self.tokens.append(b)
        self.eos_token_id, self.bos_token_id = tok.eos_id, tok.bos_id

    def __call__(self, text):   # bytes or str -> ids, as minigpt tokenizes (llguidance calls it for prompts)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tok.encode(text)


def ll_tokenizer(tok, n_vocab):
    """The llguidance tokenizer of minigpt tokenizer `tok` over n_vocab logits (the model's rows,
    which may outnumber the tokens), built once and cached beside tok. End of generation: tok.eog_ids."""
    with _lock:
        per_tok = _tokenizers.setdefault(tok, {})
        if n_vocab not in per_tok:
            eos = sorted(tok.eog_ids) or ([tok.eos_id] if tok.eos_id is not None else [])
            if not eos:
                raise MinigptError("constrained output needs an end-of-generation token, and this model has none")
            per_tok[n_vocab] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab(tok)), n_vocab=n_vocab,
                                                      eos_token=eos)
        return per_tok[n_vocab]


# --- from the caller's options to an llguidance grammar

def grammar_spec(response_format=None, regex=None, grammar=None):
    """The llguidance grammar (a JSON str) for at most one of: response_format (OpenAI's
    {"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {...}}} or {"type": "text"},
    or a JSON Schema dict itself), regex (the whole reply matches it) or grammar (Lark, llguidance's
    dialect). None when none is given (or the format is "text")."""
    given = [name for name, v in (("response_format", response_format), ("regex", regex), ("grammar", grammar))
             if v is not None]
    if len(given) > 1:
        raise ArgumentError(f"give one of response_format, regex and grammar, not {' and '.join(given)}")
    if regex is not None:
        return llguidance.LLMatcher.grammar_from_regex(args.text("regex", regex))
    if grammar is not None:
        return llguidance.LLMatcher.grammar_from_lark(args.text("grammar", grammar))
    if response_format is None:
        return None
    schema = json_schema(response_format)
    if schema is None:
        return None
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise ArgumentError(f"response_format: bad JSON Schema: {_one_line(e)}") from None


def json_schema(response_format):
    """The JSON Schema a response_format asks for (None: plain text)."""
    if not isinstance(response_format, dict):
        raise ArgumentTypeError(f"response_format must be a dict (a JSON Schema, or OpenAI's "
                                f"{{'type': 'json_schema', ...}}), got {clip(response_format, CLIP_ARG)}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise ArgumentError("response_format of type json_schema needs {'json_schema': {'schema': {...}}}, "
                                f"got {clip(response_format, CLIP_ARG)}")
        return schema
    return response_format   # a schema of its own


def _one_line(error):
    """llguidance's message without its source excerpts and caret lines, on one line."""
    lines = [line.strip() for line in str(error).splitlines()]
    keep = [line for line in lines if line and not re.fullmatch(r"\^+|\d+ \|.*", line)]
    return " ".join(keep)


# --- one generation

def constraint(tok, n_vocab, response_format=None, regex=None, grammar=None):
    """A Constraint for one generation, or None when nothing constrains it. Bad options raise
    ArgumentError here (one line), before anything is generated."""
    spec = grammar_spec(response_format, regex, grammar)
    if spec is None:
        return None
    matcher = llguidance.LLMatcher(ll_tokenizer(tok, n_vocab), spec, log_level=0)
    if matcher.is_error():
        what = "regex" if regex is not None else "grammar" if grammar is not None else "response_format"
        raise ArgumentError(f"{what}: {_one_line(matcher.get_error())}")
    return Constraint(matcher, n_vocab)


class Constraint:
    """One generation's grammar state. Before each sampled token mask() the logits; after each token
    (sampled or forced) advance(); forced() lists the tokens the grammar allows no alternative to;
    done: the grammar is complete and nothing but end-of-generation may follow."""

    def __init__(self, matcher, n_vocab):
        self.matcher, self.n_vocab = matcher, n_vocab
        self._bits = np.zeros((1, (n_vocab + 31) // 32), dtype=np.int32)   # [1, ceil(vocab / 32)]
        self._fresh = False   # _bits is the mask of the current state
        self._out = np.empty(n_vocab, dtype=np.float32)

    def bits(self):
        """The tokens the grammar allows next, as a bitmask: bit k of word w is token 32w + k (int32
        [ceil(vocab / 32)], a buffer reused per state; computed once per state, for the engine's screen
        and mask() alike)."""
        if not self._fresh:
            self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            self._check()
            self._fresh = True
        return self._bits[0]

    def mask(self, logits):
        """logits: [vocab] -> [vocab], -inf where the grammar forbids the token (a buffer reused per call)."""
        if not self.bits().any():   # none past the vocabulary is set
            raise MinigptError("the grammar allows no token here (constrained output cannot go on)")
        np.copyto(self._out, logits)
        llguidance.numpy.apply_token_bitmask_inplace(self._out, self._bits)   # -inf where a bit is 0, in place
        return self._out

    def forced(self):
        """Ids the grammar forces next (none when there is a choice)."""
        return self.matcher.compute_ff_tokens()

    def advance(self, ids):
        self._fresh = False
        if not self.matcher.consume_tokens(list(ids)):
            self._check()

    def valid_prefix(self, ids):
        """How many of ids, from the first, the grammar would accept next (nothing is consumed)."""
        return self.matcher.validate_tokens(list(ids))

    @property
    def done(self):
        return self.matcher.is_stopped()

    def _check(self):
        if self.matcher.is_error():
            raise MinigptError(f"constrained output failed: {_one_line(self.matcher.get_error())}")


class Triggered:
    """A Constraint that lets the text run free until it spells `marker`, and follows `then` (a Constraint
    of what comes after the marker) from there on: a tool call the model chose to begin is constrained
    from its tag on. Text after the marker in the marker's own token goes to `then` first; when `then`
    refuses it, the text stays free for good. The same methods as Constraint, for the token loop."""

    def __init__(self, tok, marker, then):
        self.tok, self.marker, self.then = tok, marker.encode(), then
        self.on, self._tail = False, b""   # _tail: the text's last bytes, while waiting for the marker

    def bits(self):
        return self.then.bits() if self.on else None

    def mask(self, logits):
        return self.then.mask(logits) if self.on else logits

    def forced(self):
        return self.then.forced() if self.on else []

    def advance(self, ids):
        if self.on:
            return self.then.advance(ids)
        for k, token in enumerate(ids):
            if self.then is None:   # refused: free for good
                return
            b = self.tok.token_bytes(token)
            self._tail = (self._tail + b)[-(len(self.marker) - 1 + len(b)):]
            at = self._tail.find(self.marker)
            if at >= 0:
                rest = self._tail[at + len(self.marker):]
                try:
                    if rest:
                        self.then.advance(self.tok.encode(rest.decode("utf-8", "replace")))
                except MinigptError:
                    self.then = None
                    return
                self.on = True
                return self.then.advance(ids[k + 1:]) if ids[k + 1:] else None

    def valid_prefix(self, ids):
        """Before the marker, all of them: each is checked as it is taken."""
        return self.then.valid_prefix(ids) if self.on else len(ids)

    @property
    def done(self):
        return self.on and self.then.done


def allowed(c):
    """The bitmask of the tokens the constraint c allows next (Constraint.bits), or None: no constraint,
    none in force yet (a Triggered before its marker), or a complete one (nothing is chosen after it)."""
    return None if c is None or c.done else c.bits()


def schema_text(text, source):
    """A JSON Schema read from `source` (a file name, for messages): the parsed dict, or a one-line error."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise MinigptError(f"{source}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(schema, dict):
        raise MinigptError(f"{source}: a JSON Schema is a JSON object, got {type(schema).__name__}")
    return schema
