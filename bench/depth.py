"""Speed at depth: prefill and decode with D positions already in the KV cache, minigpt against llama.cpp,
interleaved A B A B, one fresh process per engine and round.

    python bench/depth.py --gguf ~/.cache/minigpt/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --mgpt ~/.cache/minigpt/models/smollm2-135m-instruct.mgpt --depths 0,512,2048,8192 --threads 1
    python bench/depth.py ... --kv-type q8_0          # both engines' caches in q8_0
    python bench/depth.py ... --engines minigpt        # minigpt alone (no GGUF needed)

llama.cpp runs in a venv of its own (never a minigpt dependency): make one with
`python -m venv LLAMA && LLAMA/bin/pip install llama-cpp-python numpy` and set MINIGPT_LLAMA_PYTHON to
LLAMA/bin/python (or pass --llama-python).

One measurement (a process, this file run with --worker): load the model with a context of
max(depth) + max(p, n) positions (at most --context, and for minigpt the model's), an untimed warm-up, then for each depth D: fill the cache with D fixed
ids (untimed, in chunks as the engine likes), time the prefill of p more ids in one call, take the cache back
to D positions, and time n single-token decode steps (fixed ids: the cost of a step does not depend on which
token it is). A depth the context cannot hold (D + max(p, n) > context) is measured at the deepest it
can and printed as such; give --context the model's trained context (8192 for SmolLM2) so that llama.cpp,
which would go beyond it, stops where minigpt does. Both engines use the same cache type (--kv-type: f16, as llama.cpp's default, q8_0
or f32); llama.cpp with flash attention on (its command-line tools' "auto" picks it on CPUs; a quantized V
cache needs it) unless --llama-no-flash-attn.

Printed per thread count: per depth and engine, median [min, max] over rounds of prefill and decode tok/s and
the ratio minigpt / llama.cpp; raw results go to ~/.cache/minigpt/bench/depth-<time>.json. This script needs
only the standard library; its minigpt worker imports minigpt (this repository's tree first on PYTHONPATH),
its llama.cpp worker llama_cpp and numpy.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")
ENGINES = ("llama.cpp", "minigpt")
GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}   # llama.cpp's ggml_type ids of the cache types


def prompt_ids(n, vocab):
    # minigpt.bench.prompt_ids' rule, copied: the llama.cpp worker cannot import minigpt
    return [100 + (i * 7919) % (vocab - 100) for i in range(n)]


# --- the workers: one process, every depth; print one JSON object

def _timed(f, *a):
    t0 = time.perf_counter()
    f(*a)
    return time.perf_counter() - t0


def sweep(eval_ids, truncate, reset, vocab, context, depths, p, n):
    """Per depth: {"depth", "prefill_tok_s", "decode_tok_s"}. eval_ids(ids) appends to the cache, truncate(k)
    keeps its first k positions, reset() empties it."""
    ids = prompt_ids(max(depths) + max(p, n), vocab)
    reset()
    eval_ids(ids[:min(64, p)])   # warm-up: first touches of the weights, thread start
    out = []
    for want in depths:
        d = max(0, min(want, context - max(p, n)))
        reset()
        if d:
            eval_ids(ids[:d])
        pp = p / _timed(eval_ids, ids[d:d + p])
        truncate(d)
        steps = ids[d:d + n]
        tg = n / _timed(lambda: [eval_ids([t]) for t in steps])
        out.append({"depth": d, "wanted": want, "prefill_tok_s": pp, "decode_tok_s": tg})
    return out


def _n_ctx(a, trained):
    return min(a.context, trained, max(a.depths) + max(a.p, a.n))


def worker_minigpt(a):
    import minigpt
    from minigpt.format import MgptFile
    m = minigpt.load(a.model, threads=a.threads, n_ctx=_n_ctx(a, MgptFile(a.model).config.context_length),
                     kv_type=a.kv_type)
    cache = m.engine.cache
    return {"kv_type": m.kv_type,
            "runs": sweep(m.eval, cache.truncate, m.reset, m.config.vocab_size, m.n_ctx, a.depths, a.p, a.n)}


def worker_llama(a):
    import llama_cpp
    n_ctx = _n_ctx(a, a.context)
    llm = llama_cpp.Llama(a.model, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=a.threads,
                          n_threads_batch=a.threads, flash_attn=not a.no_flash_attn,
                          type_k=GGML_TYPES[a.kv_type], type_v=GGML_TYPES[a.kv_type], logits_all=False, verbose=False)

    def truncate(k):   # Llama.eval drops the cache's positions from n_tokens on before it appends
        llm.n_tokens = k

    return {"kv_type": a.kv_type, "flash_attn": not a.no_flash_attn,
            "runs": sweep(llm.eval, truncate, llm.reset, llm.n_vocab(), min(n_ctx, llm.n_ctx()), a.depths, a.p, a.n)}


# --- the driver

def measure(engine, a, threads):
    """The worker's JSON, or a one-line reason it failed."""
    python = a.llama_python if engine == "llama.cpp" else a.python
    if not python:
        return "no interpreter: set MINIGPT_LLAMA_PYTHON or --llama-python (a venv with llama-cpp-python)"
    model = a.gguf if engine == "llama.cpp" else a.mgpt
    cmd = [python, str(Path(__file__).resolve()), "--worker", engine, "--model", str(model), "-t", str(threads),
           "-p", str(a.n_prompt), "-n", str(a.n_gen), "--depths", a.depths, "--kv-type", a.kv_type,
           "--context", str(a.context)] + (["--llama-no-flash-attn"] if a.llama_no_flash_attn else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/" if engine == "llama.cpp" else None)
    if r.returncode != 0:
        return ([l for l in r.stderr.strip().splitlines() if l.strip()] or ["no output"])[-1]
    return json.loads(r.stdout)


def _spread(xs):
    return f"{statistics.median(xs):.1f} [{min(xs):.1f}, {max(xs):.1f}]"


def table(results, engines, threads, depths):
    """Lines of one thread count's table; results: {(engine, threads): [worker JSON per round]}."""
    rows = [["depth", "engine", "prefill tok/s", "decode tok/s"]]
    for i, want in enumerate(depths):
        base = results.get(("llama.cpp", threads))
        for e in engines:
            runs = [r["runs"][i] for r in results.get((e, threads), [])]
            if not runs:
                continue
            row = [str(runs[0]["depth"]) + ("" if runs[0]["depth"] == want else f" (of {want})"), f"{e} ({len(runs)})"]
            for key in ("prefill_tok_s", "decode_tok_s"):
                cell = _spread([r[key] for r in runs])
                if base and e != "llama.cpp":
                    ratio = statistics.median(r[key] for r in runs) / statistics.median(b["runs"][i][key] for b in base)
                    cell += f" {ratio:.2f}x"
                row.append(cell)
            rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="What llama.cpp reads.")
    ap.add_argument("--mgpt", type=Path, help="What minigpt reads: the same weights (e.g. `minigpt convert` of --gguf).")
    ap.add_argument("--depths", default="0,512,2048,8192", help="Comma-separated positions already in the cache.")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="Tokens prefilled after each depth.")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="Decode steps after each depth.")
    ap.add_argument("--threads", default="1", help="Comma-separated thread counts.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-type", default="f16", choices=sorted(GGML_TYPES), help="Both engines' KV cache type.")
    ap.add_argument("--engines", default=",".join(ENGINES), help="Comma-separated: llama.cpp, minigpt.")
    ap.add_argument("--context", type=int, default=1 << 30, help="Cap on the context (default: the model's).")
    ap.add_argument("--llama-no-flash-attn", action="store_true", help="llama.cpp without flash attention.")
    ap.add_argument("--python", default=sys.executable, help="Interpreter of the minigpt worker.")
    ap.add_argument("--llama-python", default=os.environ.get("MINIGPT_LLAMA_PYTHON"),
                    help="Default: $MINIGPT_LLAMA_PYTHON.")
    ap.add_argument("--out", type=Path, default=None, help="Raw results JSON (default: in the bench cache).")
    # worker mode (what the driver runs)
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("-t", type=int, default=1, dest="worker_threads", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        w = argparse.Namespace(model=a.model, threads=a.worker_threads, p=a.n_prompt, n=a.n_gen, kv_type=a.kv_type,
                               depths=[int(d) for d in a.depths.split(",")], context=a.context,
                               no_flash_attn=a.llama_no_flash_attn)
        print(json.dumps(worker_llama(w) if a.worker == "llama.cpp" else worker_minigpt(w)))
        return

    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if not engines or set(engines) - set(ENGINES):
        raise SystemExit(f"--engines: choose from {', '.join(ENGINES)}")
    for e, f in (("llama.cpp", a.gguf), ("minigpt", a.mgpt)):
        if e in engines and (f is None or not f.expanduser().is_file()):
            raise SystemExit(f"{e} needs --{'gguf' if e == 'llama.cpp' else 'mgpt'}: an existing file")
    a.gguf, a.mgpt = (f and f.expanduser() for f in (a.gguf, a.mgpt))
    depths = [int(d) for d in a.depths.split(",")]
    thread_counts = [int(t) for t in a.threads.split(",")]

    results, t0 = {}, time.time()
    for rnd in range(a.rounds):
        for t in thread_counts:
            for e in engines:
                r = measure(e, a, t)
                if isinstance(r, str):
                    raise SystemExit(f"{e} failed: {r}")
                results.setdefault((e, t), []).append(r)
                cells = "  ".join(f"d{x['depth']} pp {x['prefill_tok_s']:.1f} tg {x['decode_tok_s']:.1f}" for x in r["runs"])
                print(f"round {rnd + 1}/{a.rounds}  {e:<9} t={t}  {cells}", file=sys.stderr, flush=True)

    print(f"model: {' / '.join(str(f) for f in (a.gguf, a.mgpt) if f)}")
    print(f"KV cache {a.kv_type}; prefill p{a.n_prompt} and decode n{a.n_gen} after each depth; "
          f"llama.cpp flash attention {'off' if a.llama_no_flash_attn else 'on'}; {a.rounds} rounds, {time.time() - t0:.0f} s")
    for t in thread_counts:
        print(f"\nthreads {t}: median [min, max] (ratio minigpt / llama.cpp)")
        print("\n".join(table(results, engines, t, depths)))
    out = a.out or CACHE / "bench" / time.strftime("depth-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                               "results": [{"engine": e, "threads": t, "runs": rs} for (e, t), rs in results.items()]},
                              indent=1) + "\n")
    print(f"raw results: {out}")


if __name__ == "__main__":
    main()
