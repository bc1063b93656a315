"""A small fuzzer for minigpt's readers of untrusted files: seeded mutators and a contained runner.

Every case is (target, seed, index): its mutations come from random.Random(f"{target}:{seed}:{index}")
over the target's seed inputs, so any case can be run again alone. Cases run in batches in a child
process (this file is its entry point) that holds them to what issue #12 promises of every bad input:

    ends           a per-case deadline (SIGALRM raises Deadline); the parent kills a child stuck in C
    memory         RLIMIT_AS a margin above the warmed-up child's size; peak RSS a margin above its own
    MinigptError   or success: any other exception (MemoryError and Deadline included) is a failure,
                   and so is an error message longer than MAX_MESSAGE (an unclipped value)
    nothing left   the case folder holds only its input and the outputs the action made; $TMPDIR and
                   $MINIGPT_CACHE stay empty

The targets (what is mutated, what is run on it) are in fuzz_targets.py; tests/test_fuzz.py runs a
bounded number of cases per target, tools/fuzz.py a longer campaign.
"""

import copy
import faulthandler
import json
import math
import os
import queue
import random
import reprlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

DEADLINE = 20.0            # seconds per case: generous, only to tell a hang from slow
GRACE = 10.0               # then the parent kills the child (a hang in C never sees the signal)
AS_MARGIN = 512 << 20      # address space a case may add to the warmed-up child
RSS_MARGIN = 256 << 20     # peak resident memory a case may add
MAX_MESSAGE = 2000         # characters of a MinigptError's message (errors.clip cuts values to 200)
PASSES = ("ok", "error")   # every other kind of outcome is a failure


class Deadline(BaseException):
    """Raised in a case that runs past its deadline (a BaseException: `except Exception` lets it through)."""


# --- JSON mutation, structure-aware

class Raw:
    """JSON text written as is: nesting deeper than Python's JSON encoder goes, a 5,000-digit number."""

    def __init__(self, text):
        self.text = text


class Dup:
    """A JSON object written with a repeated key (json.loads keeps the last)."""

    def __init__(self, pairs):
        self.pairs = pairs


def dumps(x):
    """JSON text of x (dicts, lists, Raw, Dup; NaN and Infinity as Python's json reads them); strings
    with lone surrogates escaped, so they reach the reader as such."""
    if isinstance(x, Raw):
        return x.text
    if isinstance(x, (dict, Dup)):
        pairs = x.items() if isinstance(x, dict) else x.pairs
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in pairs) + "}"
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(map(dumps, x)) + "]"
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(x)
        return json.dumps(x, ensure_ascii=False)
    return json.dumps(x)


def encode(x):
    return dumps(x).encode("utf-8")


INTS = [0, 1, -1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 1023, 1024, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
        2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**31, -2**63, 10**30]
FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-45, 5e-324, 1e-30, 1e30, 3.4e38, 1e308, -1e308, math.nan, math.inf, -math.inf]
STRINGS = ["", " ", "0", "1", "-1", "1e400", "NaN", "null", "true", "llama", "gemma3", "gpt2", "f32", "q4_0",
           "q9_9", "\x00", "\n", "\x1b[31mred", "\ud800", "\U0001f600", "<|im_start|>", "../../etc/passwd",
           "/dev/zero", "%s%s%n", "{{ 7 * 7 }}", "\u202e", "a" * 300]


def interesting(rng, depth=0):
    """A value of a random JSON type, biased to edge cases."""
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice(INTS)
    if kind == 1:
        return rng.choice(FLOATS)
    if kind == 2:
        return rng.choice(STRINGS)
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return long_string(rng)
    if kind == 5:
        return rng.choice([Raw("9" * 5000), Raw("1e999"), Raw("-0"), Raw(nested(rng))])
    if kind == 6:
        return []
    if kind == 7:
        return [interesting(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(STRINGS): interesting(rng, depth + 1) for _ in range(rng.randrange(3))}


def long_string(rng):
    n = rng.choice([1000, 70000, 300000])
    return rng.choice(["x", "é", "\U0001f600", "<|im_end|>", "\x00"]) * (n // 4)


def nested(rng):
    n = rng.choice([50, 1000, 100000])
    return "[" * n + "]" * n if rng.random() < 0.5 else '{"a":' * n + "1" + "}" * n


def grow(v, k, most=300_000):
    """v (a str or list) repeated up to k times, and to at most about `most` items."""
    return v * max(1, min(k, most // max(1, len(v))))


def tweak(rng, v):
    """A value near v, of v's own type where one is near."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([v + 1, v - 1, -v, 2 * v, v // 2, v * 1000, 0, float(v), str(v), v + 2**32])
    if isinstance(v, float):
        return rng.choice([-v, 2 * v, v / 2, v * 1e30, 0.0, int(v) if math.isfinite(v) else 0, math.nan, math.inf])
    if isinstance(v, str):
        i = rng.randrange(len(v) + 1)
        return rng.choice([v[:i], v[i:], grow(v, 2), v[:i] + rng.choice(STRINGS) + v[i:], v.upper(), grow(v, 1000)])
    if isinstance(v, list):
        v = list(v)
        op = rng.randrange(7)
        if op == 0 and v:
            del v[rng.randrange(len(v))]
        elif op == 1 and v:
            v.insert(rng.randrange(len(v)), v[rng.randrange(len(v))])
        elif op == 2:
            rng.shuffle(v)
        elif op == 3:
            v = v[:rng.randrange(len(v) + 1)]
        elif op == 4:
            v.append(interesting(rng))
        elif op == 5 and v:
            v = grow(v, rng.choice([2, 100, 10000]), 100_000)
        else:
            v = [v]
        return v
    if isinstance(v, dict):
        d = dict(v)
        op = rng.randrange(4)
        if op == 0 and d:
            del d[rng.choice(list(d))]
        elif op == 1:
            d[rng.choice(STRINGS + ["unknown_key"])] = interesting(rng)
        elif op == 2 and d:
            k = rng.choice(list(d))
            return Dup(list(d.items()) + [(k, interesting(rng))])
        else:
            return list(d.values())
        return d
    return interesting(rng)


def pick(rng, root, path=(), stop=0.3):
    """A random path from root down: at each container, stop with probability `stop`, else descend
    into a random child (so every key of a small object is as likely as a long list's items)."""
    node = get(root, path)
    while isinstance(node, (dict, list)) and node and rng.random() > stop:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path, node = path + (key,), node[key]
    return path


def get(root, path):
    for k in path:
        root = root[k]
    return root


def put(root, path, value):
    """root with the node at path replaced (root itself when path is empty)."""
    if not path:
        return value
    get(root, path[:-1])[path[-1]] = value
    return root


def size(x, most):
    """About how many characters x takes as JSON, counted up to `most` (a value may hold the same
    long list a thousand times: counting stops early)."""
    n, todo = 0, [x]
    while todo and n <= most:
        x = todo.pop()
        if isinstance(x, (dict, Dup)):
            for k, v in (x.items() if isinstance(x, dict) else x.pairs):
                n += len(str(k)) + 4
                todo.append(v)
        elif isinstance(x, (list, tuple)):
            n += len(x) + 2
            todo.extend(x)
        else:
            n += len(x.text) if isinstance(x, Raw) else len(x) + 2 if isinstance(x, str) else 8
    return n


MAX_DOC = 16 << 20   # characters of a mutated document: big enough to hurt a reader, small enough to write


def mutate_json(rng, doc, focus=(), n=None):
    """Apply 1-3 random mutations to doc (a parsed JSON value, changed in place) under the path `focus`
    (when it still leads somewhere); a mutation that would make the document longer than MAX_DOC
    is left out. Returns (doc, [descriptions])."""
    notes = []
    for _ in range(n or rng.choice([1, 1, 1, 2, 3])):
        try:
            base = focus if get(doc, focus) is not None or not focus else ()
        except (KeyError, IndexError, TypeError):   # an earlier mutation took it away
            base = ()
        path = pick(rng, doc, base)
        old = get(doc, path)
        op = rng.random()
        if op < 0.45:
            new = interesting(rng)
        elif op < 0.85:
            new = tweak(rng, old)
        else:   # another part of the document: a value of a plausible shape in the wrong place
            new = copy.deepcopy(get(doc, pick(rng, doc)))
        doc = put(doc, path, new)
        if size(doc, MAX_DOC) > MAX_DOC:
            doc = put(doc, path, old)
            continue
        notes.append(f"{'.'.join(map(str, path)) or '<root>'} = {short(new)}")
    return doc, notes


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 50, 5, 4, 3


def short(v):
    """A short description of a value of any size."""
    if isinstance(v, Raw):
        return f"raw JSON[{len(v.text)} chars: {v.text[:20]}...]"
    if isinstance(v, Dup):
        return f"object with a repeated key {v.pairs[-1][0]!r}"
    n = f" ({len(v)} items)" if isinstance(v, (str, list, dict)) and len(v) > 5 else ""
    return _REPR.repr(v) + n


# --- byte mutation

def mutate_bytes(rng, data, regions=None, n=None):
    """data (bytes) with 1-4 random byte-level changes: flips, edge values, u32/u64 overwrites,
    truncation, insertion, deletion, appended junk. regions: {name: (start, end)} to aim at (default:
    the whole). Returns (bytes, [descriptions])."""
    data, notes = bytearray(data), []
    regions = regions or {"file": (0, len(data))}
    for _ in range(n or rng.choice([1, 1, 2, 4])):
        name = rng.choice(sorted(regions))
        lo, hi = regions[name]
        hi = min(hi, len(data))
        if hi <= lo:
            lo, hi = 0, max(len(data), 1)
        at = rng.randrange(lo, hi)
        op = rng.randrange(8)
        if op == 0 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
            notes.append(f"flip bit in byte {at} ({name})")
        elif op == 1 and at < len(data):
            data[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord('"')])
            notes.append(f"byte {at} = {data[at]} ({name})")
        elif op == 2:
            width = rng.choice([4, 8])
            v = rng.choice([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, rng.randrange(2**width * 8)]) % 2**(8 * width)
            data[at:at + width] = v.to_bytes(width, "little")
            notes.append(f"u{8 * width} at {at} = {v} ({name})")
        elif op == 3:
            del data[at:]
            notes.append(f"truncated at {at} ({name})")
        elif op == 4:
            k = rng.choice([1, 7, 64, 4096])
            data[at:at] = rng.randbytes(k)
            notes.append(f"{k} random bytes inserted at {at} ({name})")
        elif op == 5:
            k = rng.choice([1, 8, 64, 4096])
            del data[at:at + k]
            notes.append(f"{k} bytes deleted at {at} ({name})")
        elif op == 6:
            k = rng.choice([1, 100, 1 << 16])
            data += rng.randbytes(k)
            notes.append(f"{k} bytes appended")
        else:
            k = rng.choice([16, 256, 4096])
            src = rng.randrange(max(len(data), 1))
            data[at:at + k] = data[src:src + k]
            notes.append(f"{k} bytes at {at} copied from {src} ({name})")
    return bytes(data), notes


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
    rng = random.Random(f"{target.name}:{seed}:{index}")
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    notes = target.mutate(rng, ctx, case_dir, pristine=index < 0)
    if started:
        started(notes)
    before, made = _files(case_dir), []
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        try:
            target.run(rng, ctx, case_dir, made)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        kind, error, where, detail = "ok", "", "", ""
    except BaseException as e:   # noqa: B036 -- the point: whatever a case raises is reported, not raised
        kind, error, where = classify(e)
        detail = "".join(traceback.format_exception(e))[-4000:]
        if kind == "error":
            detail = str(e)[:300]
    seconds = time.perf_counter() - t0
    left = sorted(_files(case_dir, os.environ["TMPDIR"], os.environ["MINIGPT_CACHE"])
                  - before - {str(case_dir / m) for m in made})
    if left and kind in PASSES:
        kind, error, where = "leftover", "", ", ".join(os.path.relpath(p, case_dir.parent) for p in left)[:300]
    for d in (os.environ["TMPDIR"], os.environ["MINIGPT_CACHE"]) + (() if keep else (case_dir,)):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, exist_ok=True)
    return {"index": index, "kind": kind, "error": error, "where": where, "seconds": round(seconds, 4),
            "notes": notes, "detail": detail}


def _vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_main(argv):
    """python fuzzlib.py TARGET SEED START STOP UNTIL SEED_DIR WORK_DIR DEADLINE KEEP: run cases
    START..STOP-1 (until the wall clock reaches UNTIL, if not 0), one JSON line per event on stdout."""
    target_name, seed, start, stop, until, seed_dir, work, deadline, keep = argv
    start, stop, until, deadline = int(start), int(stop), float(until), float(deadline)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # whatever minigpt prints goes to stderr, not into the reports
    faulthandler.enable()
    send = lambda **kw: out.write(json.dumps(kw) + "\n")

    from fuzz_targets import TARGETS
    target = TARGETS[target_name]
    work = Path(work)
    ctx = target.warm(Path(seed_dir), work)
    signal.signal(signal.SIGALRM, _alarm)
    warm = run_case(target, ctx, seed, -1, work / "warm", deadline)
    if warm["kind"] != "ok":   # the unmutated seed must work, or the cases say nothing
        send(broken=warm)
        return
    vm, rss = _vm_bytes(), _maxrss()
    resource.setrlimit(resource.RLIMIT_AS, (vm + AS_MARGIN, resource.RLIM_INFINITY))
    send(ready={"vm": vm, "rss": rss})
    for i in range(start, stop):
        if until and time.time() > until:
            break
        r = run_case(target, ctx, seed, i, work / "case", deadline, keep=keep == "1",
                     started=lambda notes: send(start=i, notes=notes))
        r["rss"] = _maxrss()
        over = r["rss"] - rss > RSS_MARGIN
        if over and r["kind"] in PASSES:
            r.update(kind="memory", error="", where=f"peak RSS {r['rss'] >> 20} MiB")
        send(case=r)
        if over:   # a fresh child for the next case, with a fresh peak
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


def run(target, seed, cases=None, minutes=None, start=0, seed_dir=None, work=None, deadline=DEADLINE,
        keep=False, env=None, log=None):
    """Run cases start.. of `target` (a name in fuzz_targets.TARGETS) until `cases` have run or `minutes`
    have passed, in child processes; a Report. seed_dir holds the target's seed inputs (made if absent),
    work the children's scratch folders (a temporary folder if None). env: the child's environment
    (subproc.python_env() in the tests). log(case dict) is called after each case."""
    from fuzz_targets import TARGETS
    t0 = time.time()
    until = t0 + 60 * minutes if minutes else 0
    stop = start + cases if cases is not None else 1 << 62
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="minigpt-fuzz-"))
    seed_dir = Path(seed_dir or work / "seeds")
    if not (seed_dir / "done").exists():
        seed_dir.mkdir(parents=True, exist_ok=True)
        TARGETS[target].make_seeds(seed_dir)
        (seed_dir / "done").write_text("")
    report = Report(target, seed)
    i = start
    try:
        while i < stop and not (until and time.time() > until):
            i = _batch(report, target, seed, i, stop, until, seed_dir, work, deadline, keep, env, log)
    finally:
        if own and not keep:
            shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.time() - t0
    return report


def _batch(report, target, seed, start, stop, until, seed_dir, work, deadline, keep, env, log):
    """Cases from `start` in one child process, until it stops (done, out of time, over its memory
    peak) or is lost (a crash, or a hang the parent ends); the index to go on from."""
    child_work = work / f"{target}-{start}"
    for d in ("tmp", "cache"):
        (child_work / d).mkdir(parents=True, exist_ok=True)
    env = {**(env or os.environ), "TMPDIR": str(child_work / "tmp"), "MINIGPT_CACHE": str(child_work / "cache"),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    errlog = open(child_work / "stderr.txt", "w+")
    cmd = [sys.executable, os.path.abspath(__file__), target, str(seed), str(start), str(stop), str(until),
           str(seed_dir), str(child_work), str(deadline), "1" if keep else "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog, text=True, env=env, cwd=seed_dir)
    lines = queue.Queue()
    threading.Thread(target=_reader, args=(p.stdout, lines), daemon=True).start()
    current, notes, started, nxt = None, [], time.time(), start

    def record(r):
        report.add(r)
        if log:
            log(r)
    try:
        while True:
            limit = deadline + GRACE if current is not None else 300   # before the first case: warming up
            try:
                line = lines.get(timeout=max(0.1, started + limit - time.time()))
            except queue.Empty:
                line = "hang"
            if line in ("hang", None):   # no answer in time, or the child ended without saying so
                if line == "hang":
                    p.kill()
                rc = p.wait()
                if current is None:
                    raise RuntimeError(f"fuzz child for {target} ended before a case ({_status(rc)}): {_tail(errlog)}")
                why = f"no answer in {limit:.0f} s" if line == "hang" else f"child ended with {_status(rc)}"
                record(_lost(current, notes, "hang" if line == "hang" else "crash", why, errlog))
                return current + 1
            msg = json.loads(line)
            if "broken" in msg:
                raise RuntimeError(f"{target}: the unmutated seed fails: {msg['broken']}")
            if "ready" in msg:
                report.baseline_rss = max(report.baseline_rss, msg["ready"]["rss"])
            elif "start" in msg:
                current, notes, started = msg["start"], msg["notes"], time.time()
            elif "case" in msg:
                record(msg["case"])
                current, nxt = None, msg["case"]["index"] + 1
            elif "end" in msg:
                p.wait()
                if nxt == start and not (until and time.time() > until):
                    raise RuntimeError(f"fuzz child for {target} ran no case: {_tail(errlog)}")
                return nxt
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        errlog.close()
        if not keep:
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
    return {"index": index, "kind": kind, "error": why, "where": where, "seconds": 0.0, "notes": notes, "detail": tail}


def _status(rc):
    return f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"


def _tail(f, n=3000):
    f.flush()
    f.seek(0)
    return f.read()[-n:]


if __name__ == "__main__":
    child_main(sys.argv[1:])
