"""A fuzzing campaign on minigpt's readers of untrusted files: the targets tests/test_fuzz.py runs in CI
(tests/fuzz_targets.py: mgpt, gguf, hf, mgchat), for as long as you like, one case at a time.

    python tools/fuzz.py --minutes 30                      # every target, the time shared evenly
    python tools/fuzz.py --minutes 10 --target gguf --seed 7
    python tools/fuzz.py --target mgpt --seed 1 --case 21  # one case again: its traceback, its input kept

Prints per target: cases, outcomes by kind, the slowest case, peak memory, and each distinct failure
(kind, exception, deepest minigpt frame) with its first cases and the command that runs each again;
failures that tests/test_fuzz.py tolerates (its KNOWN list) are marked so. Exit status 1 if anything
failed that KNOWN does not tolerate. Needs only minigpt (built in place: setup.py build_ext --inplace).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fuzz_runner  # noqa: E402
from fuzz_targets import TARGETS  # noqa: E402
from subproc import python_env  # noqa: E402

try:   # the list of tolerated failures lives with the CI test (which needs pytest)
    from test_fuzz import KNOWN, repro
except ImportError:
    KNOWN, repro = [], lambda t, s, i: f"python tools/fuzz.py --target {t} --seed {s} --case {i}"


def known(target, r):
    return next((k for k in KNOWN if k.matches(target, r)), None)


def campaign(targets, seed, minutes, work):
    """Run each target for its share of `minutes`; whether anything failed that KNOWN does not tolerate."""
    new = False
    for target in targets:
        print(f"--- {target}: {minutes / len(targets):.1f} minutes from case 0, seed {seed}", flush=True)
        report = fuzz_runner.run(target, seed, minutes=minutes / len(targets), work=work / target, env=python_env())
        note = lambda r: f"  [known, until {k.until}]" if (k := known(target, r)) else "  [NEW]"
        print("\n".join(report.summary(repro, note=note)), flush=True)
        new |= any(known(target, r) is None for r in report.failures)
    return new


def one_case(target, seed, index, work):
    """Run one case again, print its changes and traceback, keep its input; whether it failed."""
    cases = []
    fuzz_runner.run(target, seed, cases=1, start=index, work=work, keep=True, env=python_env(), log=cases.append)
    r = cases[0]
    print(f"{target} seed {seed} case {index}: {r['kind']} {r['error']} {r['where']} ({r['seconds']:.2f} s)")
    print("changes: " + "\n         ".join(r["notes"]))
    print(r["detail"] or "(no error)")
    print(f"input kept in {work / f'{target}-{index}' / 'case'}")
    return r["kind"] not in fuzz_runner.PASSES


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="the campaign's length, shared by the targets (default 30)")
    p.add_argument("--target", action="append", choices=sorted(TARGETS), help="a target (repeatable; default: all)")
    p.add_argument("--seed", type=int, help="default: from the clock (printed)")
    p.add_argument("--case", type=int, help="run only this case of --target and --seed, and keep its input")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else int(time.time()) % 100000
    work = a.work or Path(tempfile.mkdtemp(prefix="minigpt-fuzz-"))
    targets = a.target or sorted(TARGETS)
    if a.case is not None:
        if a.seed is None or len(targets) != 1:
            p.error("--case needs --target and --seed")
        sys.exit(one_case(targets[0], seed, a.case, work))
    print(f"seed {seed}, {os.cpu_count()} CPUs, scratch folder {work}", flush=True)
    try:
        failed = campaign(targets, seed, a.minutes, work)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(failed)


if __name__ == "__main__":
    main()
