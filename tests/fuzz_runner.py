"""The fuzz runner: cases of a target (fuzz_targets.py) run in contained child processes.

Every case is (target, seed, index): its mutations come from random.Random(f"{target}:{seed}:{index}")
over the target's seed inputs, so any case can be run again alone. Cases run in batches in a child
process (this file is its entry point) that holds them to what issue #12 promises of every bad input:

    ends           a per-case deadline (SIGALRM raises Deadline); the parent kills a child stuck in C
    memory         RLIMIT_AS a margin above the warmed-up child's size; each case's peak RSS (VmHWM,
                   reset per case) at most RSS_MARGIN above the RSS it started with
    MinigptError   or success: any other exception (MemoryError and Deadline included) is a failure,
                   and so is an error message longer than MAX_MESSAGE (an unclipped value)
    nothing left   the case folder holds only its input and the outputs the action made; $TMPDIR and
                   $MINIGPT_CACHE stay empty

The targets (what is mutated, what is run on it) are in fuzz_targets.py, the mutators in
fuzz_mutators.py; tests/test_fuzz.py runs a fixed number of cases per target, tools/fuzz.py a longer
campaign.
"""

import faulthandler
import importlib
import json
import os
import queue
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DEADLINE = 20.0            # seconds per case: generous, only to tell a hang from slow
GRACE = 10.0               # then the parent kills the child (a hang in C may never see the signal)
AS_MARGIN = 512 << 20      # address space a case may add to the warmed-up child
RSS_MARGIN = 256 << 20     # peak resident memory a case may add
MAX_MESSAGE = 2000         # characters of a MinigptError's message (errors.clip cuts values to 200)
PASSES = ("ok", "error")   # every other kind of outcome is a failure


class Deadline(BaseException):
    """Raised in a case that runs past its deadline (a BaseException: `except Exception` lets it through)."""


# --- one case, in the child

def _alarm(signum, frame):
    raise Deadline()


def _chain(e):
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _where(tb):
    """file:function of the deepest frame in minigpt (else the deepest of all) of a traceback."""
    import minigpt
    root = os.path.dirname(os.path.dirname(os.path.abspath(minigpt.__file__)))
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(os.path.join(root, "minigpt") + os.sep)]
    f = (ours or frames or [None])[-1]
    if f is None:
        return "?"
    name = os.path.relpath(f.filename, root) if ours else os.path.basename(f.filename)
    return f"{name}:{f.name}"


def classify(e):
    """(kind, error class, where) of an exception a case ended with."""
    from minigpt.errors import MinigptError
    chain = _chain(e)
    for kind, cls in (("timeout", Deadline), ("memory", MemoryError)):
        hit = next((x for x in chain if isinstance(x, cls)), None)
        if hit is not None:
            return kind, type(hit).__name__, _where(hit.__traceback__)
    if isinstance(e, MinigptError):
        kind = "unclipped" if len(str(e)) > MAX_MESSAGE else "error"
        return kind, type(e).__name__, _where(e.__traceback__)
    return "exception", type(e).__name__, _where(e.__traceback__)


def _files(*dirs):
    out = set()
    for d in dirs:
        for p in Path(d).rglob("*"):
            if not p.is_dir():
                out.add(str(p))
    return out


def run_case(target, ctx, seed, index, case_dir, deadline, keep=False, started=None):
    """Mutate and run one case; a dict describing how it ended. started(notes) is called between."""
    t0 = time.perf_counter()
    rng = random.Random(f"{target.name}:{seed}:{index}")
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    try:
        notes = target.mutate(rng, ctx, case_dir, index)
    except Exception as e:   # a bug of the fuzzer, not of minigpt: reported as such, and the campaign goes on
        shutil.rmtree(case_dir, ignore_errors=True)
        return {"index": index, "kind": "mutator", "error": type(e).__name__, "where": "tests/fuzz_targets.py",
                "seconds": 0.0, "mutating": round(time.perf_counter() - t0, 4), "notes": [],
                "detail": "".join(traceback.format_exception(e))[-4000:], "rss": 0, "grew": 0}
    if started:
        started(notes)
    before, made = _files(case_dir), []
    rss = _proc_status("VmRSS")
    fresh_peak = _reset_peak()
    t1 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        try:
            target.run(rng, ctx, case_dir, made)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        kind, error, where, detail = "ok", "", "", ""
    except BaseException as e:   # the point: whatever a case raises is reported, not raised
        kind, error, where = classify(e)
        detail = "".join(traceback.format_exception(e))[-4000:]
        if kind == "error":
            detail = str(e)[:300]
    seconds = time.perf_counter() - t1
    peak = _proc_status("VmHWM") if fresh_peak else _maxrss()   # else: the process's, a bound from above
    left = sorted(_files(case_dir, os.environ["TMPDIR"], os.environ["MINIGPT_CACHE"])
                  - before - {str(case_dir / m) for m in made})
    if left and kind in PASSES:
        kind, error, where = "leftover", "", ", ".join(os.path.relpath(p, case_dir.parent) for p in left)[:300]
    for d in (os.environ["TMPDIR"], os.environ["MINIGPT_CACHE"]) + (() if keep else (case_dir,)):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, exist_ok=True)
    return {"index": index, "kind": kind, "error": error, "where": where, "seconds": round(seconds, 4),
            "mutating": round(t1 - t0, 4), "notes": notes, "detail": detail, "rss": peak, "grew": peak - rss}


def _proc_status(key):
    """A size from /proc/self/status (VmSize, VmRSS, VmHWM: the peak RSS), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak():
    """Start VmHWM afresh (Linux: clear_refs 5), so that it is one case's peak; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_main(argv):
    """python fuzz_runner.py PLAN WORK: run cases plan.start.. (PLAN: a Plan as JSON) in the folder WORK,
    one JSON line per event on stdout."""
    plan, work = Plan(**json.loads(argv[0])), Path(argv[1])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # whatever minigpt prints goes to stderr, not into the reports
    faulthandler.enable()
    send = lambda **kw: out.write(json.dumps(kw) + "\n")

    target = importlib.import_module(plan.module).TARGETS[plan.target]
    ctx = target.warm(Path(plan.seed_dir), work)
    signal.signal(signal.SIGALRM, _alarm)
    warm = run_case(target, ctx, plan.seed, -1, work / "warm", plan.deadline)
    if warm["kind"] != "ok":   # the unmutated seed must work, or the cases say nothing
        send(broken=warm)
        return
    vm, rss = _proc_status("VmSize"), _proc_status("VmRSS")
    resource.setrlimit(resource.RLIMIT_AS, (vm + AS_MARGIN, resource.RLIM_INFINITY))
    send(ready={"vm": vm, "rss": rss})
    for i in range(plan.start, plan.stop):
        if plan.until and time.time() > plan.until:
            break
        r = run_case(target, ctx, plan.seed, i, work / "case", plan.deadline, plan.keep,
                     started=lambda notes: send(start=i, notes=notes))
        over = r["grew"] > RSS_MARGIN
        if over and r["kind"] in PASSES:
            r.update(kind="memory", error="", where="(peak RSS)",
                     detail=f"peak RSS {r['rss'] >> 20} MiB, {r['grew'] >> 20} MiB more than before the case")
        send(case=r)
        if over:   # a fresh child for the next case
            break
    send(end=True)


# --- the parent

@dataclass
class Report:
    """What a run of one target found."""
    target: str
    seed: int
    cases: int = 0
    kinds: dict = field(default_factory=dict)          # outcome kind -> count
    failures: list = field(default_factory=list)       # case dicts of failing cases
    slowest: dict = None
    peak_rss: int = 0                                  # bytes, the highest of any child
    baseline_rss: int = 0
    seconds: float = 0.0

    def add(self, r):
        self.cases += 1
        self.kinds[r["kind"]] = self.kinds.get(r["kind"], 0) + 1
        if r["kind"] not in PASSES:
            self.failures.append(r)
        if self.slowest is None or r["seconds"] > self.slowest["seconds"]:
            self.slowest = r
        self.peak_rss = max(self.peak_rss, r.get("rss", 0))

    def signatures(self):
        """{(kind, error, where): [failing cases]}: one entry per distinct failure."""
        out = {}
        for r in self.failures:
            out.setdefault(signature(r), []).append(r)
        return out

    def summary(self, repro=None, show=3, note=None):
        """Lines for a person: the counts, the slowest case, peak memory, each distinct failure with
        how to run its first cases again (repro(target, seed, index) -> a command), and note(case)
        after it (e.g. whether it is known)."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items(), key=lambda kv: -kv[1]))
        lines = [f"{self.target}: {self.cases} cases in {self.seconds:.0f} s, seed {self.seed}: {kinds}"]
        if self.slowest:
            s = self.slowest
            lines.append(f"  slowest: case {s['index']}, {s['seconds']:.2f} s ({s['kind']}; {'; '.join(s['notes'])[:150]})")
        lines.append(f"  peak RSS {self.peak_rss / 2**20:.0f} MiB (warmed-up child: {self.baseline_rss / 2**20:.0f} MiB)")
        for (kind, error, where), rs in sorted(self.signatures().items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  FAIL {kind} {error} at {where}: {len(rs)} case(s)" + (note(rs[0]) if note else ""))
            for r in rs[:show]:
                lines.append(f"    case {r['index']}: {'; '.join(r['notes'])[:200]}")
                if repro:
                    lines.append(f"      {repro(self.target, self.seed, r['index'])}")
        return lines


def signature(r):
    return r["kind"], r["error"], r["where"]


def _reader(stream, q):
    for line in stream:
        q.put(line)
    q.put(None)


@dataclass
class Plan:
    """A run of one target, as the parent gives it to each child (JSON on its command line)."""
    target: str                  # a name in TARGETS of `module`
    seed: int
    start: int = 0               # the first case index
    stop: int = 1 << 62          # the case index to stop before
    until: float = 0.0           # the wall-clock time to stop at (0: none)
    seed_dir: str = ""           # the target's seed inputs, made by the parent
    deadline: float = DEADLINE
    grace: float = GRACE
    keep: bool = False           # keep each case's folder (to look at a case run again)
    module: str = "fuzz_targets"


def run(target, seed, cases=None, minutes=None, start=0, work=None, env=None, log=None, **options):
    """Run cases start.. of `target` until `cases` have run or `minutes` have passed, in child processes;
    a Report. work: the seeds' and the children's scratch folder (a temporary one if None); env: the
    children's environment (subproc.python_env() in the tests); log(case dict) is called after each
    case; options: more Plan fields (deadline, grace, keep, module)."""
    t0 = time.time()
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="minigpt-fuzz-"))
    seeds = work / f"seeds-{target}"
    plan = Plan(target, seed, start, start + cases if cases is not None else Plan.stop,
                t0 + 60 * minutes if minutes else 0.0, str(seeds), **options)
    if not (seeds / "done").exists():
        seeds.mkdir(parents=True, exist_ok=True)
        importlib.import_module(plan.module).TARGETS[target].make_seeds(seeds)
        (seeds / "done").write_text("")
    report = Report(target, seed)
    try:
        while plan.start < plan.stop and not (plan.until and time.time() > plan.until):
            plan = replace(plan, start=_batch(plan, report, work, env, log))
    finally:
        if own and not plan.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.time() - t0
    return report


def _batch(plan, report, work, env, log):
    """Cases from plan.start in one child process, until it stops (done, out of time, over its memory
    peak) or is lost (a crash, or a hang the parent ends); the index to go on from."""
    child_work = work / f"{plan.target}-{plan.start}"
    for d in ("tmp", "cache"):
        (child_work / d).mkdir(parents=True, exist_ok=True)
    env = {**(env or os.environ), "TMPDIR": str(child_work / "tmp"), "MINIGPT_CACHE": str(child_work / "cache"),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    errlog = open(child_work / "stderr.txt", "w+")
    cmd = [sys.executable, os.path.abspath(__file__), json.dumps(asdict(plan)), str(child_work)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog, text=True, env=env, cwd=plan.seed_dir)
    lines = queue.Queue()
    threading.Thread(target=_reader, args=(p.stdout, lines), daemon=True).start()
    current, notes, started, nxt = None, [], time.time(), plan.start

    def record(r):
        report.add(r)
        if log:
            log(r)
    try:
        while True:
            limit = plan.deadline + plan.grace if current is not None else 300   # else: warming up
            try:
                line = lines.get(timeout=max(0.1, started + limit - time.time()))
            except queue.Empty:
                line = "hang"
            if line in ("hang", None):   # no answer in time, or the child ended without saying so
                if line == "hang":
                    p.kill()
                rc = p.wait()
                if current is None:
                    raise RuntimeError(f"fuzz child for {plan.target} failed outside a case ({_status(rc)}): "
                                       f"{_tail(errlog)}")
                why = f"no answer in {limit:.0f} s" if line == "hang" else f"child ended with {_status(rc)}"
                record(_lost(current, notes, "hang" if line == "hang" else "crash", why, errlog))
                return current + 1
            msg = json.loads(line)
            if "broken" in msg:
                raise RuntimeError(f"{plan.target}: the unmutated seed fails: {msg['broken']}")
            if "ready" in msg:
                report.baseline_rss = max(report.baseline_rss, msg["ready"]["rss"])
            elif "start" in msg:
                current, notes, started = msg["start"], msg["notes"], time.time()
            elif "case" in msg:
                record(msg["case"])
                current, nxt = None, msg["case"]["index"] + 1
            elif "end" in msg:
                p.wait()
                if nxt == plan.start and not (plan.until and time.time() > plan.until):
                    raise RuntimeError(f"fuzz child for {plan.target} ran no case: {_tail(errlog)}")
                return nxt
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        errlog.close()
        if not plan.keep:
            shutil.rmtree(child_work, ignore_errors=True)


def _lost(index, notes, kind, why, errlog):
    """The report of a case whose child died or hung: where comes from faulthandler's dump, if any
    (its first frame in minigpt is the deepest)."""
    tail = _tail(errlog)
    where = "?"
    for ln in tail.splitlines():
        if ln.strip().startswith("File ") and f"{os.sep}minigpt{os.sep}" in ln:
            path, func = ln.split('"')[1], ln.rsplit(" in ", 1)[-1]
            where = f"minigpt/{path.rsplit(os.sep + 'minigpt' + os.sep, 1)[-1]}:{func}"
            break
    return {"index": index, "kind": kind, "error": why, "where": where, "seconds": 0.0, "notes": notes,
            "detail": tail}


def _status(rc):
    return f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"


def _tail(f, n=3000):
    f.flush()
    f.seek(0)
    return f.read()[-n:]


if __name__ == "__main__":
    child_main(sys.argv[1:])
