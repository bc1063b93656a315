"""Fuzz targets for minigpt's readers of untrusted files (issue #12): a fixed number of mutated .mgpt,
GGUF, Hugging Face and .mgchat inputs per target, about a minute in all, each run in a contained child
process (tests/fuzz_runner.py, tests/fuzz_targets.py). Every case must end, within its memory, with
success or a MinigptError, leaving nothing behind. tools/fuzz.py runs the longer campaign.

The seed is fixed, so CI runs the same cases every time; MINIGPT_FUZZ_SEED=N runs others.
"""

import os
import signal
import time
from dataclasses import dataclass

import pytest

import fuzz_runner
from minigpt.errors import MinigptError
from subproc import python_env

SEED = int(os.environ.get("MINIGPT_FUZZ_SEED", "1"))
CASES = {"mgpt": 1000, "gguf": 1200, "hf": 700, "mgchat": 800}   # 10-15 s each on a shared 2-core VM


@dataclass(frozen=True)
class Known:
    """Failures of one kind (fuzz_runner: exception, unclipped, timeout, memory, ...) whose deepest minigpt
    frame starts with `where` (in `target`'s cases only, if given), tolerated until `until` is merged."""
    kind: str
    where: str
    until: str
    target: str = ""

    def matches(self, target, r):
        return r["kind"] == self.kind and r["where"].startswith(self.where) and self.target in ("", target)


# Failures tolerated while the change that fixes them is under way elsewhere (Known entries); a failure
# no entry matches fails the test. None now: every failure the campaigns found is fixed
# (docs/reliability.md, "Fuzzing"). tools/fuzz.py marks each failure known or NEW by this list.
KNOWN = []


def repro(target, seed, index):
    return f"python tools/fuzz.py --target {target} --seed {seed} --case {index}"


@pytest.mark.parametrize("target", sorted(CASES))
def test_fuzz_target(target, tmp_path):
    report = fuzz_runner.run(target, SEED, cases=CASES[target], work=tmp_path, env=python_env())
    print("\n".join(report.summary(repro)))
    new = [r for r in report.failures if not any(k.matches(target, r) for k in KNOWN)]
    lines = [f"{r['kind']} {r['error']} at {r['where']}: case {r['index']} ({'; '.join(r['notes'])[:300]})\n"
             f"  again: {repro(target, SEED, r['index'])}\n{r['detail'][-1500:]}" for r in new[:5]]
    assert not new, f"{len(new)} new failure(s), seed {SEED}:\n" + "\n".join(lines)
    assert report.cases == CASES[target]


# --- the runner's own test: each way a case can end is told apart

def _sleep_deaf(case_dir, made):   # a hang no signal ends (C code holding on): the parent must kill it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)


def _spin(case_dir, made):
    while True:
        pass


def _output(case_dir, made):
    (case_dir / "out").write_text("made")
    made.append("out")


def _raise(e):
    raise e


FAULTS = [   # (what case i does, the kind the runner must report)
    (lambda d, made: None, "ok"),
    (_output, "ok"),
    (lambda d, made: _raise(MinigptError("bad input")), "error"),
    (lambda d, made: _raise(MinigptError("x" * 5000)), "unclipped"),
    (lambda d, made: _raise(KeyError("k")), "exception"),
    (lambda d, made: (d / "stray.tmp").write_text("left"), "leftover"),
    (lambda d, made: open(os.path.join(os.environ["TMPDIR"], "t"), "w").close(), "leftover"),
    (lambda d, made: b"x" * (300 << 20), "memory"),          # past RSS_MARGIN
    (lambda d, made: b"x" * (4 << 30), "memory"),            # past RLIMIT_AS: MemoryError
    (_spin, "timeout"),
    (_sleep_deaf, "hang"),
    (lambda d, made: os.kill(os.getpid(), signal.SIGSEGV), "crash"),
    (lambda d, made: None, "ok"),                            # and the cases after go on
]


class Faults:
    name = "faults"

    def make_seeds(self, d):
        pass

    def warm(self, seed_dir, work):
        return None

    def mutate(self, rng, ctx, case_dir, index):
        (case_dir / "input").write_text(str(index))
        return [f"fault {index}"]

    def run(self, rng, ctx, case_dir, made):
        index = int((case_dir / "input").read_text())
        if index >= 0:
            FAULTS[index][0](case_dir, made)


TARGETS = {"faults": Faults()}   # the child imports this module for them (Plan.module)


def test_the_runner_tells_each_ending_apart(tmp_path):
    cases = []
    report = fuzz_runner.run("faults", 0, cases=len(FAULTS), work=tmp_path, env=python_env(), log=cases.append,
                             deadline=1.0, grace=1.0, module="test_fuzz")
    assert [c["kind"] for c in cases] == [kind for _, kind in FAULTS]
    assert "stray.tmp" in cases[5]["where"] and cases[7]["where"] == "(peak RSS)"
    assert report.cases == len(FAULTS) and len(report.failures) == len(FAULTS) - 4
