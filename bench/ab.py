"""Two builds of minigpt at decode, A B A B in turns of a fraction of a second: a change measured against
the tree before it.

    python bench/ab.py BASELINE                        # SmolLM2-135M, 1 and 4 sequences, 2 threads
    python bench/ab.py BASELINE --seqs 1,2,4 -t 1 --rounds 60
    python bench/ab.py BASELINE qwen2.5-coder-0.5b-instruct -n 32

B is the minigpt this interpreter imports (bench/ holds none); A, the baseline, is the one found in the
folder BASELINE: a build tree (`git worktree add ../before HEAD~1 && cd ../before && python setup.py
build_ext --inplace`) or another environment's site-packages. Each runs in a worker process of its own
that loads the model once and then, turn by turn, measures --n-gen steps (bench/batch.py's measurement:
aggregate decode tok/s of S sequences stepped together) while the other waits; which goes first alternates.
A machine shared with other programs drifts over seconds, and measuring the two a process apart (bench/
compare.py --baseline-python) leaves that drift in the ratio; turns this short cancel most of it.

Printed per batch size: median tok/s of each, and the median [min, max] of the turns' ratios B / A; then
each build's largest batch over its first, median over rounds.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path


def worker(a):
    """Load the model; then for each line "S N" on stdin, print the tok/s of N steps of S sequences."""
    if a.worker != "-":
        sys.path.insert(0, a.worker)   # before this script's folder, bench/, which holds batch.py
    import minigpt
    from batch import measure

    m = minigpt.load(a.model, threads=a.threads, precision=a.precision)
    print(minigpt.__file__, flush=True)
    for line in sys.stdin:
        s, n = map(int, line.split())
        print(measure(m, s, argparse.Namespace(prompt=a.prompt, n_gen=n), top=a.top), flush=True)


def turn(build, name, s, n):
    """One turn of a worker: the tok/s of n steps of s sequences."""
    try:
        build.stdin.write(f"{s} {n}\n")
        build.stdin.flush()
        line = build.stdout.readline()
    except BrokenPipeError:
        line = ""
    if not line:
        raise SystemExit(f"ab.py: build {name} stopped (its error is above)")
    return float(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", nargs="?", help="A folder holding the baseline's minigpt package.")
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="A .mgpt path or a known model name.")
    ap.add_argument("--seqs", default="1,4", help="Comma-separated batch sizes.")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--prompt", type=int, default=32, help="Ids each sequence holds before the timed steps.")
    ap.add_argument("-n", "--n-gen", type=int, default=96, help="Timed decode steps per turn.")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--precision", default="balanced")
    ap.add_argument("--top", type=int, default=1, help="What each step asks of the head (bench/batch.py --top).")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    if not a.baseline or not (Path(a.baseline) / "minigpt").is_dir():
        raise SystemExit(f"ab.py: {a.baseline!r} holds no minigpt package (give a build tree or a site-packages)")
    try:
        seqs = [int(s) for s in a.seqs.split(",")]
    except ValueError:
        seqs = []
    if not seqs or min(seqs) < 1 or a.n_gen < 1 or a.rounds < 1:
        raise SystemExit(f"ab.py: --seqs takes comma-separated batch sizes of 1 or more (got {a.seqs!r}), "
                         "--n-gen and --rounds 1 or more")

    opts = ["-", a.model, "-t", str(a.threads), "-p", str(a.prompt), "--precision", a.precision, "--top", str(a.top)]
    builds = [subprocess.Popen([sys.executable, __file__, *opts, "--worker", w], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for w in (str(Path(a.baseline).resolve()), "-")]
    for name, b in zip("AB", builds):
        line = b.stdout.readline().strip()
        if not line:
            raise SystemExit(f"ab.py: build {name} did not start (its error is above)")
        print(f"{name}: {line}")
    tok_s = {(k, s): [] for k in range(2) for s in seqs}
    for r in range(a.rounds):
        for s in seqs:
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                tok_s[k, s].append(turn(builds[k], "AB"[k], s, a.n_gen))
    for b in builds:
        b.stdin.close()
        b.wait()

    print(f"model {a.model}; {a.threads} thread(s); precision {a.precision}; {a.rounds} rounds of {a.n_gen} steps "
          f"after {a.prompt} ids; head: the best {a.top}")
    print("sequences  A tok/s   B tok/s   B / A per turn")
    for s in seqs:
        ratios = sorted(y / x for x, y in zip(tok_s[0, s], tok_s[1, s]))
        print(f"{s:<10} {statistics.median(tok_s[0, s]):<9.1f} {statistics.median(tok_s[1, s]):<9.1f} "
              f"{statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]")
    if len(seqs) > 1:
        top, first = seqs[-1], seqs[0]
        for k, name in enumerate("AB"):
            per = [x / y for x, y in zip(tok_s[k, top], tok_s[k, first])]
            print(f"{name}: {top} sequences / {first}, per round: {statistics.median(per):.2f}x")


if __name__ == "__main__":
    main()
