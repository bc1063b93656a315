"""Decode speed at 2 threads while other processes keep cores busy: minigpt (and llama.cpp) with and without competitors.

    python bench/contention.py                                # 5 rounds, 0 and 1 competitor, minigpt and llama.cpp
    python bench/contention.py --competitors 0,1,2 --rounds 9 --baseline DIR

A competitor is a `python -c "while True: pass"` process started just before a measurement and killed right after
it (--pin N pins competitors to CPU N, else the scheduler places them). Each round runs every engine once per
competitor count, in a fixed order, so slow drifts of a shared machine hit all rows alike; every measurement is a
new process (bench/compare.py's, whose helpers this reuses: same prompt, warm-up, prefill and decode protocol).
Printed: median [min, max] over rounds of decode tok/s per engine and competitor count, and the ratio to the same
engine without competitor. --baseline DIR adds a row "minigpt@DIR": DIR holds another built `minigpt` package
(e.g. a copy of the tree before a change), run with the same interpreter. Raw results go to
~/.cache/minigpt/bench/contention-<time>.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import CACHE, LLAMA_PY, ROOT, _command, _empty_dir, _flat, _missing, _spread, machine  # noqa: E402

MGPT = CACHE / "models" / "smollm2-135m-instruct.mgpt"
GGUF = CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BUSY = "while True: pass"


# --- competitors

def start_competitors(n, pin):
    cmd = [sys.executable, "-c", BUSY]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    procs = [subprocess.Popen(cmd) for _ in range(n)]
    time.sleep(0.3)  # let them start spinning and the scheduler settle
    return procs


def stop_competitors(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# --- one measurement

def measure(engine, a):
    """The flat result dict, or a one-line reason it could not run. engine: 'llama.cpp', 'minigpt' or 'minigpt@DIR'."""
    name, _, tree = engine.partition("@")
    cmd = _command(name, a, a.threads)
    why = _missing(name, cmd)
    if why:
        return why
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tree or str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("MINIGPT_BACKEND", None)
    procs = start_competitors(a.n_busy, a.pin)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_empty_dir().name)
    finally:
        stop_competitors(procs)
    if r.returncode != 0:
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()] or ["no output"]
        return lines[-1]
    return _flat(json.loads(r.stdout))


# --- the table

def table(results, engines, counts, key):
    """Lines: one row per engine, one column per competitor count; results: {(engine, n_busy): [flat dicts]}."""
    rows = [[""] + [f"{n} busy" for n in counts]]
    for e in engines:
        if not any(results.get((e, n)) for n in counts):
            continue
        row = [e]
        base = results.get((e, counts[0]))
        for n in counts:
            runs = results.get((e, n))
            if not runs:
                row.append("-")
                continue
            xs = [r[key] for r in runs]
            cell = f"{_spread(xs, '{:.1f}')} ({len(xs)})"
            if base and n != counts[0]:
                cell += f" {statistics.median(xs) / statistics.median(r[key] for r in base):.2f}x"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# ---

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mgpt", type=Path, default=MGPT)
    ap.add_argument("--gguf", type=Path, default=GGUF)
    ap.add_argument("-p", "--n-prompt", type=int, default=32)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--competitors", default="0,1", help="Comma-separated numbers of busy processes.")
    ap.add_argument("--pin", type=int, default=None, help="Pin the competitors to this CPU.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--engines", default="minigpt,llama.cpp", help="Comma-separated rows: minigpt, llama.cpp.")
    ap.add_argument("--baseline", action="append", default=[], help="A directory holding another built minigpt.")
    ap.add_argument("--python", default=sys.executable, help="Interpreter for `-m minigpt bench`.")
    ap.add_argument("--llama-python", default=LLAMA_PY)
    ap.add_argument("--out", type=Path, default=None, help="Raw results JSON (default: in the bench cache).")
    a = ap.parse_args()
    engines = [e.strip() for e in a.engines.split(",") if e.strip()] + [f"minigpt@{d}" for d in a.baseline]
    unknown = {e for e in engines if e.partition("@")[0] not in ("minigpt", "llama.cpp")}
    if unknown:
        raise SystemExit(f"unknown engines {sorted(unknown)}; known: minigpt, llama.cpp")
    for f in (a.mgpt, a.gguf):
        if not f.is_file():
            raise SystemExit(f"{f} not found")
    counts = [int(c) for c in a.competitors.split(",")]

    results, skipped = {}, {}
    t_start = time.time()
    for rnd in range(a.rounds):
        for n in counts:
            for e in engines:
                if e in skipped:
                    continue
                a.n_busy = n
                r = measure(e, a)
                if isinstance(r, str):
                    skipped[e] = r
                    print(f"skipping {e}: {r}", file=sys.stderr)
                    continue
                results.setdefault((e, n), []).append(r)
                print(f"round {rnd + 1}/{a.rounds}  {e:<24} busy={n}  pp {r['prefill_tok_s']:7.1f}  "
                      f"tg {r['decode_tok_s']:6.1f} tok/s", file=sys.stderr, flush=True)

    print(f"model: {a.mgpt} / {a.gguf}; threads {a.threads}; pp{a.n_prompt} tg{a.n_gen}; "
          f"competitors {'pinned to CPU ' + str(a.pin) if a.pin is not None else 'unpinned'}")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine(results).items()))
    print(f"{a.rounds} rounds, {time.time() - t_start:.0f} s")
    for key, what in (("decode_tok_s", "decode"), ("prefill_tok_s", "prefill")):
        print(f"\n{what} tok/s: median [min, max] (runs) ratio to the same engine with {counts[0]} busy")
        print("\n".join(table(results, engines, counts, key)))
    for e, why in skipped.items():
        print(f"skipped {e}: {why}")

    out = a.out or CACHE / "bench" / time.strftime("contention-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(results), "args": {k: str(v) for k, v in vars(a).items()},
                               "results": [{"engine": e, "competitors": n, "runs": rs}
                                           for (e, n), rs in results.items()],
                               "skipped": skipped}, indent=1) + "\n")
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
