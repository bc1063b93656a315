"""What a conversion cost: the source model against the converted one, on a built-in multilingual text.

`minigpt convert SRC -o OUT --check` and check_conversion() convert SRC a second time, to f32, into a
temporary file next to OUT, and run it on the NumPy reference backend: the source's own weights,
dequantized, with float32 activations everywhere. The converted file runs on the chosen backend and
precision (by default the compiled backend, balanced), as it will be used. Both read each piece of
minigpt/data/check_text.txt (English, Chinese, Python, French, German, Japanese, Russian; ~1,150
tokens with SmolLM2's vocabulary) teacher-forced from an empty cache, BOS first if the model adds it,
and are compared at every position that predicts a token of the piece:

    top-1 agreement   how often the two models' likeliest next token is the same
    mean KL           KL(source || converted) over the full vocabulary, in nats, averaged over positions
    perplexity        exp(mean negative log-likelihood of the actual next token), for each model

All positions of all pieces are pooled. A piece longer than the model's context is cut to it.
"""

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import DEFAULT_KV_TYPE
from .errors import MinigptError
from .perplexity import log_softmax, logit_blocks

TEXT_PATH = Path(__file__).parent / "data" / "check_text.txt"


def builtin_text():
    """[(name, text)]: the pieces of the built-in check text, in file order."""
    raw = TEXT_PATH.read_text(encoding="utf-8")
    parts = re.split(r"^@@ (\S+)\n", raw, flags=re.M)   # "", name, body, name, body, ...
    return [(name, body.strip("\n")) for name, body in zip(parts[1::2], parts[2::2])]


@dataclass
class Comparison:
    """Pooled over `positions` predicted tokens: top-1 agreement (0..1), mean KL(source || converted) in
    nats, and both perplexities. pieces: the same numbers per piece of text, by name."""
    positions: int
    agreement: float
    kl: float
    ppl_source: float
    ppl_converted: float
    pieces: dict = field(default_factory=dict)

    def line(self):
        """One line for a person: the numbers `minigpt convert --check` prints."""
        kl = f"{self.kl:.4f}" if self.kl >= 1e-4 else f"{self.kl:.1e}"
        ppl = lambda x: f"{x:.2f}" if x < 1e5 else f"{x:.3g}"
        delta = round(100 * (self.ppl_converted / self.ppl_source - 1), 1) + 0.0   # no "-0.0"
        return (f"check: {self.positions:,} positions of built-in text: top-1 agreement {100 * self.agreement:.1f}%, "
                f"mean KL {kl}, perplexity {ppl(self.ppl_source)} (source f32) vs {ppl(self.ppl_converted)} "
                f"(converted), {delta:+.1f}%")


class _Sums:
    def __init__(self):
        self.n = self.agree = 0
        self.kl = self.nll_p = self.nll_q = 0.0

    def add(self, lp, lq, targets):
        # lp, lq: float64 [k, vocab] log-probs of source and converted; targets: [k] next tokens
        rows = np.arange(len(targets))
        self.n += len(targets)
        self.agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        self.kl += float((np.exp(lp) * (lp - lq)).sum())
        self.nll_p -= float(lp[rows, targets].sum())
        self.nll_q -= float(lq[rows, targets].sum())

    def result(self, pieces=None):
        n = max(self.n, 1)
        return Comparison(self.n, self.agree / n, self.kl / n, float(np.exp(self.nll_p / n)),
                          float(np.exp(self.nll_q / n)), pieces or {})


def compare(source, converted, pieces=None, progress=None) -> Comparison:
    """Teacher-force both models (minigpt.api.Model, same vocabulary) over `pieces` ([(name, text)],
    default: the built-in text) and compare their next-token distributions. progress(n, total) is
    called with the positions done."""
    if source.config.vocab_size != converted.config.vocab_size:
        raise MinigptError(f"vocabularies differ: {source.config.vocab_size} vs {converted.config.vocab_size} tokens")
    tok = converted.tokenizer
    n_ctx = min(source.n_ctx, converted.n_ctx)
    todo = []
    for name, text in pieces if pieces is not None else builtin_text():
        ids = converted.tokenize(text, add_bos=tok.add_bos, special=False)[:n_ctx]
        if len(ids) >= 2:
            todo.append((name, ids))
    if not todo:
        raise MinigptError("nothing to compare: the text has no piece of two tokens or more")
    total = sum(len(ids) - 1 for _, ids in todo)
    pooled, per_piece = _Sums(), {}
    for name, ids in todo:
        sums, s = _Sums(), 0
        for a, b in zip(logit_blocks(source, ids[:-1]), logit_blocks(converted, ids[:-1])):
            lp, lq = log_softmax(a), log_softmax(b)
            targets = np.asarray(ids[s + 1:s + 1 + len(a)])
            sums.add(lp, lq, targets)
            pooled.add(lp, lq, targets)
            s += len(a)
            if progress:
                progress(len(a), total)
        per_piece[name] = sums.result()
    return pooled.result(per_piece)


def check_conversion(src, out, backend=None, precision="balanced", threads=None, progress=None,
                     kv_type=DEFAULT_KV_TYPE) -> Comparison:
    """Compare the converted file `out` with its source checkpoint `src` (anything minigpt.convert
    reads). The source is converted to f32 into a temporary file beside `out` (deleted afterwards) and
    run on the NumPy reference with an f32 KV cache; `out` runs on `backend` at `precision` with a
    kv_type cache. progress(n, total, stage) is called with stage 'dequantizing' (bytes of the f32
    copy) and then 'checking' (positions)."""
    from .api import Model
    from .convert import convert

    out = Path(out)
    stage = lambda name: progress and (lambda n, total: progress(n, total, name))
    with tempfile.TemporaryDirectory(prefix=".minigpt-check-", dir=out.parent) as tmp:
        f32 = Path(tmp) / "source-f32.mgpt"
        convert(src, f32, "f32", progress=stage("dequantizing"))
        source = Model(f32, threads=threads, backend="numpy", precision="exact", kv_type="f32")
        converted = Model(out, threads=threads, backend=backend, precision=precision, kv_type=kv_type)
        try:
            return compare(source, converted, progress=stage("checking"))
        finally:
            del source, converted   # unmap the temporary file before it is deleted
