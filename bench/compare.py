"""minigpt against llama.cpp on the same Q4_0 weights, interleaved A B A B, one fresh process per measurement.

    $MINIGPT_LLAMA_PYTHON bench/make_model.py              # once: the Q4_0 GGUF and its .mgpt (see that file)
    python bench/compare.py                                # 5 rounds at 1 and 2 threads, all rows it can run
    python bench/compare.py --rounds 9 --threads 1 --engines llama.cpp,minigpt
    python bench/compare.py --gguf ~/.cache/minigpt/gguf/gemma-3-270m-q4_k_m.gguf --quant q8_0   # another model
    python bench/compare.py --engines minigpt --baseline-python OLD/bin/python --threads 1 --rounds 9   # A/B

The other engines run in venvs of their own (never minigpt dependencies), named by environment variables
or flags:

    python -m venv LLAMA && LLAMA/bin/pip install llama-cpp-python numpy  # builds llama.cpp: cmake, a C++ compiler
    python -m venv HF && HF/bin/pip install torch transformers gguf       # transformers reads GGUFs through gguf
    export MINIGPT_LLAMA_PYTHON=$PWD/LLAMA/bin/python MINIGPT_HF_PYTHON=$PWD/HF/bin/python  # or the flags

--gguf is what llama.cpp (and transformers) read; minigpt reads --mgpt, by default the GGUF's conversion
in the bench cache: <stem>.mgpt for the default SmolLM2 Q4_0 file (bench/make_model.py makes it), and for
any other GGUF <stem>.<quant>.mgpt (--quant, default: the converter's choice, "default"), converted by
`minigpt convert` on first use. Rows that are not minigpt's need no .mgpt.

Each round runs every engine once per thread count, in a fixed order (--engines': llama.cpp, minigpt, then the
optional rows), so slow drifts of a shared machine hit all of them alike. Every measurement is a new process: load
(timed), an untimed warm-up, prefill of p fixed ids from an empty cache, n greedy single-token decode steps
(minigpt/bench.py; bench/llama_worker.py and bench/hf_worker.py are its twins). Printed per thread count:
median [min, max] over rounds of prefill and decode tok/s, load seconds and peak RSS, with the ratio
row / llama.cpp (RSS: the difference in MiB), then the fraction of the memory floor minigpt's decode reaches. Raw results go to ~/.cache/minigpt/bench/compare-<time>.json.

Rows: llama.cpp (llama-cpp-python, $MINIGPT_LLAMA_PYTHON), minigpt (default backend), and the optional
minigpt-numba and minigpt-numpy (skipped when that backend is not available) and transformers-f32
($MINIGPT_HF_PYTHON; the GGUF dequantized to float32 - "what a user would pick instead"). --extra-rounds limits
the rounds of the optional rows, which can be very slow. Without llama.cpp in --engines, the ratios are to the
first row, and no GGUF is needed when --mgpt names the file (or the default one exists).

Which minigpt: the minigpt rows run `--python -m minigpt` (default: this interpreter) with this repository on
PYTHONPATH, i.e. the tree's code; with --installed, the package installed in --python's environment instead.
--baseline-python PY adds the row minigpt-baseline: `PY -m minigpt bench` on the same .mgpt, importing PY's own
installed minigpt (no PYTHONPATH, an empty working directory), so a change can be measured A B A B against an
install of the commit before it, without llama.cpp. It runs just before the minigpt row, so that without
llama.cpp the ratios are minigpt / minigpt-baseline. The file each row imports is printed first.
This script itself needs only the Python standard library.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")
BENCH_DIR = CACHE / "bench"
STEM = "SmolLM2-135M-Instruct.Q4_0"
LLAMA_PY = os.environ.get("MINIGPT_LLAMA_PYTHON")   # None: the llama.cpp row cannot run (--llama-python)
HF_PY = os.environ.get("MINIGPT_HF_PYTHON")
REQUIRED = ("llama.cpp", "minigpt", "minigpt-baseline")
OPTIONAL = ("minigpt-numba", "transformers-f32", "minigpt-numpy")
MINIGPT_ROWS = ("minigpt", "minigpt-baseline", "minigpt-numba", "minigpt-numpy")
HOW_TO = {"llama.cpp": "set MINIGPT_LLAMA_PYTHON or --llama-python (a venv with llama-cpp-python)",
          "transformers-f32": "set MINIGPT_HF_PYTHON or --hf-python (a venv with torch, transformers, gguf)"}


# --- one measurement per process

def _command(engine, a, threads):
    size = ["-p", str(a.n_prompt), "-n", str(a.n_gen), "-t", str(threads)]
    if engine == "llama.cpp":
        return [a.llama_python, str(ROOT / "bench" / "llama_worker.py"), "-m", str(a.gguf), *size]
    if engine == "transformers-f32":
        return [a.hf_python, str(ROOT / "bench" / "hf_worker.py"), "-m", str(a.gguf), *size]
    backend = {"minigpt": [], "minigpt-baseline": [], "minigpt-numba": ["--backend", "numba"],
               "minigpt-numpy": ["--backend", "numpy"]}[engine]
    python = a.baseline_python if engine == "minigpt-baseline" else a.python
    return [python, "-m", "minigpt", "bench", "-m", str(a.mgpt), *size, "-r", "1", "--json", *backend]


def _missing(engine, cmd):
    """Why cmd cannot start (its interpreter unset or absent), or None."""
    if cmd[0] is None:
        return f"no interpreter: {HOW_TO.get(engine, 'give --python')}"
    if os.sep in cmd[0] and not Path(cmd[0]).exists():
        return f"{cmd[0]} not found"
    return None


def _flat(d):
    """A worker's JSON or `minigpt bench --json` in one shape: scalars only."""
    out = dict(d)
    for k in ("prefill_tok_s", "decode_tok_s"):
        if isinstance(d.get(k), dict):
            out[k] = d[k]["median"]
    return out


def measure(engine, a, threads):
    """The flat result dict, or a one-line reason it could not run."""
    cmd = _command(engine, a, threads)
    why = _missing(engine, cmd)
    if why:
        return why
    env, cwd = _env(a, engine)
    env.pop("MINIGPT_BACKEND", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()] or ["no output"]
        return lines[-1]
    return _flat(json.loads(r.stdout))


# --- the table

def _spread(xs, fmt):
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}, {fmt.format(max(xs))}]"


def table(results, engines, threads, a):
    """Lines of one thread count's table; results: {(engine, threads): [flat dicts]}. Ratios are to llama.cpp,
    or without it to the first row."""
    ref = "llama.cpp" if "llama.cpp" in engines else engines[0]
    base = results.get((ref, threads))
    rows = [["", "prefill tok/s", "decode tok/s", "load s", "peak RSS MiB"]]
    for e in engines:
        runs = results.get((e, threads))
        if not runs:
            continue
        row = [f"{e} ({len(runs)})"]
        for key, fmt in (("prefill_tok_s", "{:.1f}"), ("decode_tok_s", "{:.1f}"), ("load_s", "{:.2f}"),
                         ("peak_rss_mib", "{:.0f}")):
            xs = [r[key] for r in runs]
            cell = _spread(xs, fmt)
            if base and e != ref:
                m, b = statistics.median(xs), statistics.median(r[key] for r in base)
                cell += f" {m - b:+.0f}" if key == "peak_rss_mib" else f" {m / b:.2f}x"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"threads {threads}: pp{a.n_prompt}, tg{a.n_gen}; median [min, max] (ratio to {ref}); (runs)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return lines


def floor_line(runs, threads):
    """How close minigpt's decode comes to the memory floor (minigpt/bench.py): one line, or None."""
    runs = [r for r in runs or () if r.get("floor_tok_s")]
    if not runs:
        return None
    decode, floor = (statistics.median(r[k] for r in runs) for k in ("decode_tok_s", "floor_tok_s"))
    return (f"minigpt t={threads}: decode {decode:.1f} tok/s = {decode / floor:.0%} of the memory floor "
            f"{floor:.1f} tok/s ({runs[0]['decode_bytes_per_token'] / 1e6:.0f} MB of weights per token at "
            f"{statistics.median(r['read_gb_s'] for r in runs):.1f} GB/s, one thread's read bandwidth)\n")


def machine(results):
    """What the numbers were measured on."""
    info = {"os": platform.platform(), "python": platform.python_version()}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name"))
        flags = set(next(l for l in cpu.splitlines() if l.startswith("flags")).split(":", 1)[1].split())
        info["flags"] = " ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni") if f in flags)
        info["cpus"] = len(os.sched_getaffinity(0))
        mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration, AttributeError):
        pass
    for runs in results.values():
        for r in runs:
            for k, v in r.get("versions", {}).items():
                info.setdefault(k, v)
    return info


# --- the model files

@functools.cache
def _empty_dir():
    """A working directory with nothing to import: `python -m` and `-c` put the working directory first on sys.path."""
    return tempfile.TemporaryDirectory(prefix="minigpt-bench-")


def _env(a=None, engine="minigpt"):
    """(environment, working directory) of a minigpt row's process: this repository's tree first on
    PYTHONPATH, or (--installed, minigpt-baseline) the interpreter's own install, from an empty directory."""
    if engine == "minigpt-baseline" or (a is not None and a.installed):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        return env, _empty_dir().name
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))), None


def which_minigpt(a, engine):
    """The file a minigpt row's interpreter imports minigpt from, or why it cannot."""
    cmd = _command(engine, a, 1)[:1] + ["-c", "import minigpt; print(minigpt.__file__)"]
    env, cwd = _env(a, engine)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    return r.stdout.strip() if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]


def model_files(a, engines):
    """Check --gguf where it is read, and settle (and make, if missing) the .mgpt the minigpt rows read; sets a.mgpt."""
    default = a.gguf == BENCH_DIR / f"{STEM}.gguf"
    make = "run: $MINIGPT_LLAMA_PYTHON bench/make_model.py"
    if a.mgpt is None and set(engines) & set(MINIGPT_ROWS):
        stem = a.gguf.stem if default and a.quant is None else f"{a.gguf.stem}.{a.quant or 'default'}"
        a.mgpt = BENCH_DIR / f"{stem}.mgpt"
    needs_gguf = set(engines) & {"llama.cpp", "transformers-f32"} or (a.mgpt and not a.mgpt.is_file())
    if needs_gguf and not a.gguf.is_file():
        raise SystemExit(f"{a.gguf} not found; {make if default else 'give an existing --gguf'}")
    if a.mgpt is None or a.mgpt.is_file():
        return
    if default and a.quant is None:
        raise SystemExit(f"{a.mgpt} not found; {make}")
    a.mgpt.parent.mkdir(parents=True, exist_ok=True)
    cmd = [a.python, "-m", "minigpt", "convert", str(a.gguf), "-o", str(a.mgpt)]
    cmd += ["--quant", a.quant] if a.quant else []
    print(" ".join(cmd), file=sys.stderr, flush=True)
    env, cwd = _env(a)
    if subprocess.run(cmd, env=env, cwd=cwd).returncode != 0:
        raise SystemExit(f"could not convert {a.gguf} for the minigpt rows; run with --engines llama.cpp for "
                         f"llama.cpp alone")


# ---

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=BENCH_DIR / f"{STEM}.gguf", help="What llama.cpp reads.")
    ap.add_argument("--mgpt", type=Path, default=None, help="What minigpt reads (default: see above).")
    ap.add_argument("--quant", default=None, help="The type of the default --mgpt, converted from --gguf on first "
                    "use: any type `minigpt convert --quant` takes (default: the converter's choice).")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--threads", default="1,2", help="Comma-separated thread counts.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra-rounds", type=int, default=None, help="Rounds of the optional rows (default: --rounds).")
    ap.add_argument("--engines", default=",".join(("llama.cpp", "minigpt") + OPTIONAL),
                    help="Comma-separated rows to run.")
    ap.add_argument("--python", default=sys.executable, help="Interpreter for `-m minigpt bench`.")
    ap.add_argument("--installed", action="store_true",
                    help="The minigpt rows import --python's installed minigpt, not this repository's tree.")
    ap.add_argument("--baseline-python", default=None, help="Adds the row minigpt-baseline: this interpreter's "
                    "installed minigpt, e.g. a venv holding the commit before a change.")
    ap.add_argument("--llama-python", default=LLAMA_PY, help="Default: $MINIGPT_LLAMA_PYTHON.")
    ap.add_argument("--hf-python", default=HF_PY, help="Default: $MINIGPT_HF_PYTHON.")
    ap.add_argument("--out", type=Path, default=None, help="Raw results JSON (default: in the bench cache).")
    a = ap.parse_args()
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    unknown = set(engines) - set(REQUIRED + OPTIONAL)
    if unknown or not engines:
        raise SystemExit(f"unknown engines {sorted(unknown)}; known: {', '.join(REQUIRED + OPTIONAL)}")
    if a.baseline_python and "minigpt-baseline" not in engines:
        engines.insert(engines.index("minigpt") if "minigpt" in engines else len(engines), "minigpt-baseline")
    if "minigpt-baseline" in engines and not a.baseline_python:
        raise SystemExit("the row minigpt-baseline needs --baseline-python")
    a.gguf = a.gguf.expanduser()
    model_files(a, engines)
    for e in engines:
        if e in ("minigpt", "minigpt-baseline"):
            print(f"{e} imports {which_minigpt(a, e)}", file=sys.stderr)
    thread_counts = [int(t) for t in a.threads.split(",")]
    extra = a.rounds if a.extra_rounds is None else a.extra_rounds

    results, skipped = {}, {}
    t_start = time.time()
    for rnd in range(a.rounds):
        for t in thread_counts:
            for e in engines:
                if e in skipped or (e in OPTIONAL and rnd >= extra):
                    continue
                r = measure(e, a, t)
                if isinstance(r, str):
                    if e in REQUIRED:
                        raise SystemExit(f"{e} failed: {r}")
                    skipped[e] = r
                    print(f"skipping {e}: {r}", file=sys.stderr)
                    continue
                results.setdefault((e, t), []).append(r)
                print(f"round {rnd + 1}/{a.rounds}  {e:<17} t={t}  pp {r['prefill_tok_s']:8.1f}  "
                      f"tg {r['decode_tok_s']:7.1f} tok/s  load {r['load_s']:.2f} s  "
                      f"rss {r['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)

    info = machine(results)
    reads_gguf = set(engines) & {"llama.cpp", "transformers-f32"}
    print("model: " + " / ".join(str(f) for f in (a.gguf if reads_gguf else None, a.mgpt) if f))
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print(f"{a.rounds} rounds (optional rows: {extra}), {time.time() - t_start:.0f} s")
    for t in thread_counts:
        print()
        print("\n".join(table(results, engines, t, a)))
    for e, why in skipped.items():
        print(f"skipped {e}: {why}")
    for t in thread_counts:
        print(floor_line(results.get(("minigpt", t)), t) or "", end="")

    out = a.out or BENCH_DIR / time.strftime("compare-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(a).items()},
                               "results": [{"engine": e, "threads": t, "runs": rs} for (e, t), rs in results.items()],
                               "skipped": skipped}, indent=1) + "\n")
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
