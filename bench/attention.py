"""Attention alone: one `_core.attention` call (n new queries after T cached positions), and an A/B of two builds.

    python bench/attention.py                                  # Qwen2.5-0.5B's shape: 58 queries after 2,828
    python bench/attention.py -n 1 -T 2048 --heads 9 --kv-heads 3    # a SmolLM2 decode step at depth
    python bench/attention.py --baseline /path/to/other/_core.cpython-311-x86_64-linux-gnu.so

It times the kernels of the minigpt its interpreter imports (bench/ holds none), on random queries and a
random cache of the given type, 1 thread unless -t says otherwise. With --baseline, a second build's compiled
module (the .so file of another install or build tree) is loaded beside it and the two are timed alternately,
A B A B, on the same arrays: the per-round time ratio is the steady figure on a shared machine; the outputs are
compared too (the same floats when both builds round alike). MINIGPT_ISA picks the instruction set of both.
GFMA/s counts the multiply-adds of the scores and of P.V: 2 n H hd (T + (n + 1) / 2).
"""

import argparse
import importlib.machinery
import importlib.util
import os
import platform
import statistics
import time

import numpy as np

from minigpt import quant
from minigpt.kernels import _core


def _load_core(path):
    """Another build's _core, under the same module name (its init function's), from its own file."""
    loader = importlib.machinery.ExtensionFileLoader("minigpt.kernels._core", path)
    spec = importlib.util.spec_from_file_location("minigpt.kernels._core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def against_baseline(times, outs):
    """The line that compares two builds: (baseline's times, this build's), each's output."""
    ratios = [b / a for a, b in zip(*times)]
    return (f"  this build / baseline, per round: {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]; "
            f"outputs {'equal' if np.array_equal(*outs) else 'differ: max ' + str(np.abs(outs[0] - outs[1]).max())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=58, help="new queries (1: a decode step)")
    ap.add_argument("-T", type=int, default=2828, help="positions already in the cache")
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--kv-type", default="f16", choices=quant.KV_TYPES)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-r", "--rounds", type=int, default=15)
    ap.add_argument("--baseline", help="the compiled _core module (.so) of another build, timed against this one")
    args = ap.parse_args()

    builds = [("this build", _core)]
    if args.baseline:
        builds.insert(0, ("baseline", _load_core(os.path.abspath(args.baseline))))
    for _, core in builds:
        core.set_threads(args.threads)

    rng = np.random.default_rng(0)
    n, T, hd = args.n, args.T, args.head_dim
    q = rng.standard_normal((n, args.heads, hd), dtype=np.float32)
    k, v = (rng.standard_normal((args.kv_heads, T + n, hd), dtype=np.float32) for _ in range(2))
    if args.kv_type != "f32":
        k, v = quant.kv_encode(k, args.kv_type), quant.kv_encode(v, args.kv_type)

    outs = [core.attention(q, k, v, T) for _, core in builds]   # also the warm-up
    times = [[] for _ in builds]
    for _ in range(args.rounds):
        for i, (_, core) in enumerate(builds):
            t0 = time.perf_counter()
            core.attention(q, k, v, T)
            times[i].append(time.perf_counter() - t0)

    fma = 2 * n * args.heads * hd * (T + (n + 1) / 2)
    print(f"{platform.processor() or platform.machine()}, isa {_core.isa()}, {args.threads} thread(s); "
          f"{n} queries after {T} positions, {args.heads} heads / {args.kv_heads} kv heads of {hd}, "
          f"{args.kv_type} cache; {args.rounds} rounds")
    for (name, _), ts in zip(builds, times):
        med = statistics.median(ts)
        print(f"  {name:<11} {med * 1e3:8.3f} ms [{min(ts) * 1e3:.3f}, {max(ts) * 1e3:.3f}]  {fma / med / 1e9:5.1f} GFMA/s")
    if args.baseline:
        print(against_baseline(times, outs))


if __name__ == "__main__":
    main()
