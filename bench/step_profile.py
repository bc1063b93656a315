"""Python work per decode step: N single-token steps timed, then the same steps under cProfile (and perf).

    python bench/step_profile.py                        # SmolLM2-135M-Instruct, 1 thread, 200 steps
    python bench/step_profile.py -m gemma-3-270m --json
    python bench/step_profile.py --backend numpy -n 20
    python bench/step_profile.py --perf                 # also the CPU time per library, from Linux perf

It measures the minigpt that its interpreter imports (bench/ holds none, and the repo is not put on
sys.path), so `VENV/bin/python bench/step_profile.py` measures VENV's install, from any directory; the
report names the file it imported. A step is one `Model.eval([tok])` after a fixed prompt: greedy steps,
timed one by one without a profiler (median wall ms), then the same tokens again under cProfile, which
reports per step the wall ms, the tottime of functions defined in .py files (minigpt's, NumPy's Python
layer), the number of their calls, and the 10 with the most tottime. The profiler inflates Python time.

cProfile sees calls of builtins and of extension methods, but not of Cython functions, NumPy ufuncs or
Numba dispatchers: their time counts in the tottime of the Python function that called them (before
issue #11: the whole compiled forward pass, in engine.prefill). --perf adds a measure without that blind
spot: the same tokens a third time under `perf record -e cpu-clock` (Linux perf, on PATH), as CPU ms per
step in each library: the interpreter (libpython or the python binary), the extension, NumPy, libc, kernel.
"""

import argparse
import cProfile
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import minigpt

PROMPT = "The printing press changed how books were made. Before it, every copy of a book was written by hand, and"


def _short(path):
    """A file name without the machine's install prefix: minigpt/engine.py, numpy/_core/fromnumeric.py."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return "minigpt/" + path.rsplit("/minigpt/", 1)[1] if "/minigpt/" in path else path


def _replay(m, ids, toks, step):
    """Seconds of each step([tok]) after a prefill of ids."""
    m.reset()
    m.eval(ids)
    walls = []
    for tok in toks:
        t0 = time.perf_counter()
        step([tok])
        walls.append(time.perf_counter() - t0)
    return walls


def profile(m, ids, toks):
    """cProfile over the steps: per step wall ms, Python ms and calls, the rest, the top 10 Python functions."""
    prof, n = cProfile.Profile(), len(toks)
    walls = _replay(m, ids, toks, lambda x: prof.runcall(m.eval, x))
    stats = pstats.Stats(prof).stats    # {(file, line, name): (prim calls, calls, tottime, cumtime, callers)}
    py = {k: v for k, v in stats.items() if k[0].endswith(".py")}
    other = [v for k, v in stats.items() if k not in py]
    top = sorted(py.items(), key=lambda kv: -kv[1][2])[:10]
    return {"wall_ms": 1e3 * sum(walls) / n,
            "python_ms": 1e3 * sum(v[2] for v in py.values()) / n, "python_calls": sum(v[1] for v in py.values()) / n,
            "other_ms": 1e3 * sum(v[2] for v in other) / n, "other_calls": sum(v[1] for v in other) / n,
            "top": [{"function": f"{_short(f)}:{line}({name})", "tottime_us": 1e6 * v[2] / n,
                     "cumtime_us": 1e6 * v[3] / n, "calls": v[1] / n} for (f, line, name), v in top]}


def perf(m, ids, toks):
    """CPU ms per step in each library (perf's 'dso'), from sampling every thread of this process at 10 kHz."""
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "perf.data")
        m.reset()
        m.eval(ids)
        try:
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-p", str(os.getpid()),
                                    "-o", data], stdout=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit("--perf needs Linux perf on PATH") from None
        time.sleep(1.0)                 # let perf attach; an idle process gives no cpu-clock samples
        t0 = time.perf_counter()
        for tok in toks:
            m.eval([tok])
        wall = time.perf_counter() - t0
        rec.send_signal(signal.SIGINT)
        if rec.wait() not in (0, -signal.SIGINT):
            raise SystemExit("perf record failed (is perf installed and allowed: kernel.perf_event_paranoid?)")
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "-q", "--sort", "dso", "-F", "period,dso"],
                             capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    return {"wall_ms": 1e3 * wall / len(toks),     # cpu-clock periods are ns
            "cpu_ms": {dso.strip(): int(period) / 1e6 / len(toks) for period, dso in rows}}


def measure(m, ids, n, with_perf=False):
    """The report dict: n greedy steps after ids timed alone, then replayed under cProfile (and perf)."""
    m.reset()
    tok = int(np.argmax(m.eval(ids)))
    for _ in range(4):                  # warm-up: first touches of the mapped weights, thread start
        tok = int(np.argmax(m.eval([tok])))
    m.reset()
    toks, walls = [int(np.argmax(m.eval(ids)))], []
    for _ in range(n):
        t0 = time.perf_counter()
        logits = m.eval(toks[-1:])
        walls.append(time.perf_counter() - t0)
        toks.append(int(np.argmax(logits)))
    toks = toks[:n]
    r = {"minigpt": {"version": getattr(minigpt, "__version__", "?"), "file": minigpt.__file__},
         "python": platform.python_version(), "numpy": np.__version__, "backend": m.kern.name,
         "prompt_tokens": len(ids), "steps": n,
         "wall_ms": {"median": 1e3 * statistics.median(walls), "min": 1e3 * min(walls), "max": 1e3 * max(walls)},
         "profiled": profile(m, ids, toks)}
    if with_perf:
        r["perf"] = perf(m, ids, toks)
    return r


def report(r):
    p, w = r["profiled"], r["wall_ms"]
    lines = [
        f"minigpt {r['minigpt']['version']} ({r['minigpt']['file']}), Python {r['python']}, numpy {r['numpy']}",
        f"model {r['model']}, backend {r['backend']}, {r['threads']} thread(s), precision "
        f"{r['precision'] or 'default'}; prompt {r['prompt_tokens']} tokens, {r['steps']} decode steps",
        f"unprofiled  wall {w['median']:.3f} ms/step median [{w['min']:.3f}, {w['max']:.3f}]",
        f"cProfile    wall {p['wall_ms']:.3f} ms/step; Python functions {p['python_ms']:.3f} ms in "
        f"{p['python_calls']:.1f} calls; builtins and extension methods {p['other_ms']:.3f} ms in "
        f"{p['other_calls']:.1f} calls",
        f"{'tottime us':>14} {'cumtime us':>10} {'calls':>6}  Python function (per step)",
    ]
    lines += [f"{t['tottime_us']:14.1f} {t['cumtime_us']:10.1f} {t['calls']:6.1f}  {t['function']}" for t in p["top"]]
    if "perf" in r:
        cpu = r["perf"]["cpu_ms"]
        lines.append(f"perf        wall {r['perf']['wall_ms']:.3f} ms/step; CPU {sum(cpu.values()):.3f} ms/step, "
                     "by library:")
        lines += [f"{ms:14.3f}  {dso}" for dso, ms in sorted(cpu.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct", help="A .mgpt path or a known model name.")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--backend", default=None, help="c, numba or numpy (default: minigpt's).")
    ap.add_argument("--precision", default=None, help="balanced, exact or fast (default: minigpt's).")
    ap.add_argument("-n", "--steps", type=int, default=200)
    ap.add_argument("--perf", action="store_true", help="Also the CPU time per library, from Linux perf.")
    ap.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    a = ap.parse_args()
    if a.steps < 1:
        raise SystemExit(f"bad --steps {a.steps}")
    kw = {"precision": a.precision} if a.precision else {}
    m = minigpt.load(a.model, threads=a.threads, backend=a.backend, n_ctx=512 + a.steps, **kw)
    r = {"model": a.model, "threads": a.threads, "precision": a.precision,
         **measure(m, m.tokenize(PROMPT), a.steps, a.perf)}
    print(json.dumps(r, indent=1) if a.json else report(r))


if __name__ == "__main__":
    sys.exit(main())
