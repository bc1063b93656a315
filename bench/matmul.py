"""The x8 matmul kernels alone, their weights streamed from memory, and an A/B of two builds.

    python bench/matmul.py                                     # SmolLM2's gate: 1536 x 576 q4_1, 4 inputs
    python bench/matmul.py --qtype q8_0 -t 1 --bits 16         # int16 inputs, one thread
    python bench/matmul.py --baseline /path/to/other/_core.cpython-311-x86_64-linux-gnu.so

It times `_core.matmul_q8` / `matmul_q16` of the minigpt its interpreter imports (bench/ holds none) on
--copies copies of one random weight, packed x8 (csrc/packed.c): one call per copy, one copy after the
other, as a decode step goes through a model's weights, so that they come from memory and not from the
caches (the default, 180 copies of 1536 x 576 q4_1, is 100 MB). --copies 1 keeps the weight in cache.
With --baseline, a second build's compiled module (the .so file of another install or build tree) is
loaded beside it and the two are timed alternately, A B A B, on the same arrays: the per-round ratio of
the times is the steady figure on a shared machine; the outputs are compared too (the same kernels give
the same floats).
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np

from attention import _load_core, against_baseline
from minigpt import quant
from minigpt.kernels import _core


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qtype", default="q4_1", help="what the weight is stored as: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q6_k")
    ap.add_argument("--rows", type=int, default=1536)
    ap.add_argument("--cols", type=int, default=576)
    ap.add_argument("-n", "--inputs", type=int, default=4, help="inputs per call (sequences in a decode step)")
    ap.add_argument("--bits", type=int, default=8, choices=(8, 16), help="the inputs' integer width")
    ap.add_argument("--copies", type=int, default=180, help="weights gone through one after another")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--rounds", type=int, default=15)
    ap.add_argument("--baseline", help="the compiled _core module (.so) of another build, timed against this one")
    args = ap.parse_args()
    if not _core.x8_supported(args.qtype):
        raise SystemExit(f"matmul.py: no x8 kernels for {args.qtype} on this CPU ({_core.isa()})")

    builds = [("this build", _core)]
    if args.baseline:
        builds.insert(0, ("baseline", _load_core(os.path.abspath(args.baseline))))
    for _, core in builds:
        core.set_threads(args.threads)

    if min(args.rows, args.cols, args.inputs, args.copies, args.rounds) < 1:
        raise SystemExit("matmul.py: --rows, --cols, --inputs, --copies and --rounds take 1 or more")
    rng = np.random.default_rng(0)
    try:
        w = quant.quantize(rng.standard_normal((args.rows, args.cols), dtype=np.float32) / np.sqrt(args.cols),
                           args.qtype)
        packed = _core.pack_x8(w, args.qtype)
    except ValueError as e:   # a shape the layout does not take (rows: multiples of 8, cols: of a block)
        raise SystemExit(f"matmul.py: {e}") from None
    weights = [packed.copy() for _ in range(args.copies)]
    x = rng.standard_normal((args.inputs, args.cols), dtype=np.float32)
    qtype = args.qtype + "x8"

    def run(core):
        f = core.matmul_q8 if args.bits == 8 else core.matmul_q16
        t0 = time.perf_counter()
        for wc in weights:
            out = f(x, wc, qtype)
        return (time.perf_counter() - t0) / len(weights), out

    outs = [run(core)[1] for _, core in builds]   # also the warm-up
    times = [[] for _ in builds]
    for _ in range(args.rounds):
        for i, (_, core) in enumerate(builds):
            times[i].append(run(core)[0])

    print(f"{platform.processor() or platform.machine()}, isa {_core.isa()}, {args.threads} thread(s); "
          f"{args.rows} x {args.cols} {args.qtype}, {args.inputs} inputs of int{args.bits}, {args.copies} copies "
          f"({args.copies * packed.nbytes / 2**20:.0f} MiB); {args.rounds} rounds; time per copy")
    for (name, _), ts in zip(builds, times):
        med = statistics.median(ts)
        print(f"  {name:<11} {med * 1e6:8.1f} us [{min(ts) * 1e6:.1f}, {max(ts) * 1e6:.1f}]  "
              f"{args.inputs * args.rows * args.cols / med / 1e9:5.1f} GMAC/s  {packed.nbytes / med / 1e9:5.1f} GB/s")
    if args.baseline:
        print(against_baseline(times, outs))


if __name__ == "__main__":
    main()
