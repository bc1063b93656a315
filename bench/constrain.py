"""What constrained output costs in decode: the time the grammar takes (mask, forced tokens, advancing) beside
the model's own, per reply. The issue's target: at most 10 % of decode tok/s on Qwen2.5's 151,936 tokens.

    python bench/constrain.py                                   # qwen2.5-coder-0.5b-instruct, 1 thread
    python bench/constrain.py -m smollm2-135m-instruct -t 2 -n 300 -r 5 --json

Each repetition writes one greedy reply under a JSON Schema with one string of exactly -n characters: the
model writes text inside a JSON string, so every token but the forced punctuation is drawn under a mask of
the whole vocabulary. The time inside minigpt.constrain.Constraint's mask, forced and advance is counted by
wrapping them; the rest of the reply's time is the model's (forced runs included) and the sampler's.
overhead = grammar time / the rest: the fraction by which the grammar slows decoding. Beside it, an
unconstrained greedy reply of the same number of tokens (it may end sooner, at an end-of-generation token),
for the two tok/s. Printed: per repetition, then the median; --json prints every sample as one object.
"""

import argparse
import functools
import json
import platform
import statistics
import time

import minigpt
from minigpt.constrain import Constraint

PROMPT = "Write a short paragraph about the sea, as JSON."


def timed(cls, names, spent):
    """Wrap cls's methods `names` so that spent[0] adds up the seconds inside them."""
    for name in names:
        def wrapper(self, *a, _f=getattr(cls, name), **kw):
            t0 = time.perf_counter()
            try:
                return _f(self, *a, **kw)
            finally:
                spent[0] += time.perf_counter() - t0
        setattr(cls, name, functools.wraps(getattr(cls, name))(wrapper))


def reply(m, n_tokens=None, schema=None):
    """(tokens, seconds from the first token to the last) of one greedy reply."""
    t0, n = None, 0
    for step in m.steps(PROMPT, max_tokens=n_tokens or 4096, temperature=0, response_format=schema):
        if step.token is None:
            continue
        if t0 is None:   # the first token comes after the prefill: time decoding only
            t0 = time.perf_counter()
        n += 1
    return n, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b-instruct", help="a known name or a .mgpt path")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-n", "--chars", type=int, default=200, help="characters of the JSON string")
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print every sample as JSON")
    a = ap.parse_args()

    m = minigpt.load(a.model, threads=a.threads)
    schema = {"type": "object", "properties": {"text": {"type": "string", "minLength": a.chars, "maxLength": a.chars}},
              "required": ["text"], "additionalProperties": False}
    spent = [0.0]
    timed(Constraint, ("mask", "forced", "advance"), spent)
    m.constraint(response_format=schema)   # the llguidance tokenizer is built once per model: not in the timings
    rows = []
    for _ in range(a.reps):
        spent[0] = 0.0
        n, seconds = reply(m, schema=schema)
        grammar = spent[0]
        n_free, free_seconds = reply(m, n_tokens=n)
        rows.append({"tokens": n, "seconds": seconds, "grammar_seconds": grammar,
                     "overhead": grammar / max(seconds - grammar, 1e-9), "tok_s": n / seconds,
                     "free_tokens": n_free, "free_tok_s": n_free / free_seconds})
    summary = {k: statistics.median(r[k] for r in rows) for k in ("overhead", "tok_s", "free_tok_s")}
    info = {"model": m.name, "vocab": m.config.vocab_size, "threads": m.threads, "chars": a.chars,
            "machine": platform.machine(), "reps": rows, "median": summary}
    if a.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{m.name}: vocabulary {m.config.vocab_size:,}, {m.threads} thread(s), a JSON string of {a.chars} characters")
    print(f"{'tokens':>7} {'tok/s':>8} {'grammar ms':>11} {'overhead':>9} {'free tok/s':>11}")
    for r in rows:
        print(f"{r['tokens']:>7} {r['tok_s']:>8.1f} {1e3 * r['grammar_seconds']:>11.1f} {r['overhead']:>9.1%} "
              f"{r['free_tok_s']:>11.1f}")
    print(f"median overhead {summary['overhead']:.1%} (target <= 10%); decode {summary['tok_s']:.1f} tok/s "
          f"constrained, {summary['free_tok_s']:.1f} tok/s free")


if __name__ == "__main__":
    main()
