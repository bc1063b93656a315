"""Decode with the streamed weights in huge pages (minigpt/engine/arena.py) against the same weights in
ordinary pages, interleaved in one process.

    python bench/arena.py                                     # SmolLM2-135M, 1 and 4 sequences, 1 thread
    python bench/arena.py qwen2.5-coder-0.5b-instruct --seqs 1 --rounds 15 --n-gen 8
    python bench/arena.py --cpu-time                          # on a busy machine

The model is loaded twice: as minigpt loads it, and with Arena.keep made the identity and Arena.empty
NumPy's (what it did before: the packed copies and the head's screen in NumPy's own memory, the head
read in place from the file). Each round
measures every batch size on both, A B A B (bench/batch.py's measurement: aggregate decode tok/s of S
sequences stepped together). Printed per batch size: median [min, max] tok/s of each, and the median
[min, max] of the rounds' ratios arena / ordinary, which a shared machine's drifts disturb least.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import measure  # noqa: E402
from compare import _spread, machine  # noqa: E402

import numpy as np  # noqa: E402

import minigpt  # noqa: E402
from minigpt.engine import arena  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="A .mgpt path or a known model name.")
    ap.add_argument("--seqs", default="1,4", help="Comma-separated batch sizes.")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-p", "--prompt", type=int, default=32, help="Ids each sequence holds before the timed steps.")
    ap.add_argument("-n", "--n-gen", type=int, default=24, help="Timed decode steps per measurement.")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--precision", default="balanced")
    ap.add_argument("--cpu-time", action="store_true",
                    help="Time the calling thread's CPU, not the wall clock (1 thread only: the compute runs "
                         "there; a busy machine's other programs then disturb it less).")
    a = ap.parse_args()
    if a.cpu_time and a.threads != 1:
        ap.error("--cpu-time needs --threads 1")
    clock = time.thread_time if a.cpu_time else time.perf_counter
    seqs = [int(s) for s in a.seqs.split(",")]

    models = {"huge pages": minigpt.load(a.model, threads=a.threads, precision=a.precision)}
    keep, empty = arena.Arena.keep, arena.Arena.empty
    arena.Arena.keep = lambda self, x, copied=None: x
    arena.Arena.empty = lambda self, shape, dtype: np.empty(shape, dtype)
    try:
        models["ordinary"] = minigpt.load(a.model, threads=a.threads, precision=a.precision)
    finally:
        arena.Arena.keep, arena.Arena.empty = keep, empty

    tok_s = {}
    for rnd in range(a.rounds):
        for s in seqs:
            for name, m in models.items():
                tok_s.setdefault((name, s), []).append(measure(m, s, a, clock))
        print(f"round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)

    print(f"model: {a.model}; precision {a.precision}; {a.threads} thread(s); {a.n_gen} timed steps, {a.rounds} rounds; "
          f"{'CPU time of the calling thread' if a.cpu_time else 'wall clock'}")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine({}).items()))
    print("sequences  ordinary tok/s         huge pages tok/s       ratio per round")
    for s in seqs:
        old, new = tok_s["ordinary", s], tok_s["huge pages", s]
        ratios = [y / x for x, y in zip(old, new)]
        print(f"{s:<10} {_spread(old, '{:.1f}'):<22} {_spread(new, '{:.1f}'):<22} {_spread(ratios, '{:.3f}')}")


if __name__ == "__main__":
    main()
