"""The float32 head screened (csrc/screen.c) against the same head computed whole, interleaved in one
process.

    python bench/screen.py                                  # Qwen2.5-Coder-0.5B, 1 thread
    python bench/screen.py smollm2-135m-instruct -t 2 --rounds 10

One model, two ways of asking for the logits: top=None, every logit (the float32 head computed whole,
as before the screen), and top=K, what a draw from the best K needs (K = 40: sampling's default top-k;
greedy asks for 1). Each round measures both, A B A B: decode of S sequences stepped together for each
--seqs (bench/batch.py's aggregate tok/s), and a speculative check, one sequence's pass of --rows rows
whose logits are all wanted (rows per second). Printed: median [min, max] of each, and of the rounds'
ratios screened / whole, which a shared machine's drifts disturb least.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import measure  # noqa: E402
from compare import _spread, machine  # noqa: E402

import minigpt  # noqa: E402
from minigpt.bench import prompt_ids  # noqa: E402


def check_rows(m, a, top):
    """Rows per second of passes of a.rows rows (a draft's check) after a.prompt ids, all rows' logits."""
    ids = prompt_ids(a.prompt + a.rows, m.config.vocab_size)
    cache = m.new_cache(a.prompt + a.rows)
    m.engine.prefill(ids[:a.prompt], cache=cache)
    t0 = time.perf_counter()
    for _ in range(a.n_gen):
        m.engine.prefill(ids[a.prompt:], all_logits=True, cache=cache, top=top)
        cache.truncate(a.prompt)
    return a.rows * a.n_gen / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-0.5b-instruct", help="A .mgpt path or a known model name.")
    ap.add_argument("--seqs", default="1,4", help="Comma-separated batch sizes.")
    ap.add_argument("--rows", type=int, default=15, help="Rows of the check pass (at most speculate.max_rows).")
    ap.add_argument("--top", type=int, default=40, help="What the screened steps ask for (greedy: 1).")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-p", "--prompt", type=int, default=32, help="Ids each sequence holds before the timed steps.")
    ap.add_argument("-n", "--n-gen", type=int, default=16, help="Timed steps (or passes) per measurement.")
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    m = minigpt.load(a.model, threads=a.threads)
    if "output_screen" not in m.engine.weights:
        sys.exit(f"{a.model}: its head is not screened here (precision, backend or CPU): nothing to compare")
    tests = [(f"{s} seq", lambda top, s=s: measure(m, s, a, top=top)) for s in map(int, a.seqs.split(","))]
    tests.append((f"{a.rows}-row check", lambda top: check_rows(m, a, top)))

    rate = {}
    for rnd in range(a.rounds):
        for name, run in tests:
            for top in (None, a.top):
                rate.setdefault((name, top), []).append(run(top))
        print(f"round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)

    print(f"model: {a.model}; {a.threads} thread(s); screened for the best {a.top}; {a.n_gen} timed steps, "
          f"{a.rounds} rounds; tok/s (the check: rows/s)")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine({}).items()))
    print(f"{'test':<14} {'whole head':<22} {'screened':<22} ratio per round")
    for name, _ in tests:
        old, new = rate[name, None], rate[name, a.top]
        ratios = [y / x for x, y in zip(old, new)]
        print(f"{name:<14} {_spread(old, '{:.1f}'):<22} {_spread(new, '{:.1f}'):<22} {_spread(ratios, '{:.3f}')}")


if __name__ == "__main__":
    main()
