"""Decode speed of several sequences stepped together (Engine.forward_batch): aggregate tokens/s per batch size.

    python bench/batch.py                                          # SmolLM2-135M, 1/2/4/8 sequences, 1 and 2 threads
    python bench/batch.py qwen2.5-coder-0.5b-instruct --seqs 1,4,16 --threads 2 --rounds 7
    python bench/batch.py --seqs 1,4 --threads 2 --top 1                     # steps as greedy decoding asks them
    MINIGPT_LLAMA_PYTHON=... python bench/batch.py --seqs 1,4 -t 2 --top 1 --llama   # and llama.cpp's batched decode

Decode is memory bound: a step reads every weight once whether it carries one row or eight, so stepping S
sequences together should cost little more than stepping one, and the tokens per second of all of them
together grow with S until the matmuls turn compute bound. One measurement: S fresh caches, each prefilled
with its own prompt of --prompt ids (untimed), one untimed step, then --n-gen timed steps of one token per
sequence (fixed ids: a step's cost does not depend on which tokens it carries). Rounds go over every
(threads, S) in a fixed order, so a shared machine's slow drifts hit all rows alike.

Printed: per batch size, median [min, max] over rounds of aggregate decode tok/s (S x steps / time) for each
thread count, and the ratio of medians to the first batch size (one sequence by default) at the same thread count.

--llama adds llama.cpp's own batched decode of --gguf (the same weights as the default model) as rows of the
table, measured the same way in each round after minigpt's (bench/llama_worker.py --seqs, a process of the
llama-cpp-python venv: $MINIGPT_LLAMA_PYTHON or --llama-python; see bench/compare.py for how to make one),
and minigpt / llama.cpp per batch size. It is how a C runtime batches, beside minigpt, on the same machine.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import CACHE, LLAMA_PY, ROOT, _empty_dir, _spread, machine  # noqa: E402

import minigpt  # noqa: E402
from minigpt.bench import prompt_ids  # noqa: E402


def measure(m, n_seqs, a, clock=time.perf_counter, top=None):
    """Aggregate decode tok/s of n_seqs sequences stepped together (time as `clock` tells it; top: what
    the steps ask of the head, Engine.prefill)."""
    eng, vocab = m.engine, m.config.vocab_size
    caches = [m.new_cache(a.prompt + a.n_gen + 1) for _ in range(n_seqs)]
    ids = prompt_ids(a.prompt + n_seqs, vocab)
    for k, c in enumerate(caches):   # each its own prompt
        eng.prefill(ids[k:k + a.prompt], cache=c)
    eng.forward_batch([(c, [100 + k]) for k, c in enumerate(caches)], top=top)   # warm-up
    t0 = clock()
    for step in range(a.n_gen):
        eng.forward_batch([(c, [100 + (step * 31 + k) % (vocab - 100)]) for k, c in enumerate(caches)], top=top)
    return n_seqs * a.n_gen / (clock() - t0)


GGUF = CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"   # what bench/serve.py gives llama.cpp


def llama_round(a, threads, seqs):
    """{S: aggregate tok/s} of llama.cpp's batched decode at `threads`, from one worker process."""
    cmd = [a.llama_python, str(ROOT / "bench" / "llama_worker.py"), "-m", str(a.gguf), "-t", str(threads),
           "--seqs", ",".join(map(str, seqs)), "-p", str(a.prompt), "-n", str(a.n_gen)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=_empty_dir().name)
    if r.returncode != 0:
        last = [line for line in r.stderr.splitlines() if line.strip()] or ["no output"]
        raise SystemExit(f"llama.cpp's worker failed: {last[-1]}")
    return {int(s): v for s, v in json.loads(r.stdout)["seqs"].items()}


def table(results, engines, seqs, threads):
    """results: {(engine, threads, S): [tok/s per round]}; an engine column when there are several."""
    head = ["engine"] * (len(engines) > 1)
    rows = [head + ["sequences"] + [f"{t} thread{'s' * (t > 1)}" for t in threads]]
    for e in engines:
        for s in seqs:
            row = [e] * (len(engines) > 1) + [str(s)]
            for t in threads:
                xs, base = results[e, t, s], statistics.median(results[e, t, seqs[0]])
                row.append(f"{_spread(xs, '{:.1f}')} {statistics.median(xs) / base:.2f}x")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="A .mgpt path or a known model name.")
    ap.add_argument("--seqs", default="1,2,4,8", help="Comma-separated batch sizes (sequences stepped together).")
    ap.add_argument("-t", "--threads", default="1,2", help="Comma-separated thread counts.")
    ap.add_argument("-p", "--prompt", type=int, default=32, help="Ids each sequence holds before the timed steps.")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="Timed decode steps per measurement.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--precision", default="balanced")
    ap.add_argument("--kv-type", default="f16")
    ap.add_argument("--top", type=int, default=None,
                    help="What each step asks of the head (Engine.prefill): 1 as greedy decoding does, "
                         "40 as top-k 40 sampling; default: every logit.")
    ap.add_argument("--llama", action="store_true", help="Also llama.cpp's batched decode of --gguf (see above).")
    ap.add_argument("--gguf", type=Path, default=GGUF, help="What llama.cpp reads (the model's own GGUF).")
    ap.add_argument("--llama-python", default=LLAMA_PY, help="Default: $MINIGPT_LLAMA_PYTHON.")
    a = ap.parse_args()
    seqs = [int(s) for s in a.seqs.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    engines = ["minigpt"] + ["llama.cpp"] * a.llama
    if a.llama and not (a.llama_python and Path(a.llama_python).is_file()):
        raise SystemExit(f"--llama: set MINIGPT_LLAMA_PYTHON or --llama-python to the python of a venv with "
                         f"llama-cpp-python (got {a.llama_python!r})")
    if a.llama and not a.gguf.is_file():
        raise SystemExit(f"--llama: no GGUF at {a.gguf} (--gguf)")

    m = minigpt.load(a.model, threads=max(threads), backend=a.backend, precision=a.precision, kv_type=a.kv_type)
    results = {}
    t_start = time.time()
    for rnd in range(a.rounds):
        for t in threads:
            m.kern.set_threads(t)
            for s in seqs:
                r = measure(m, s, a, top=a.top)
                results.setdefault(("minigpt", t, s), []).append(r)
                print(f"round {rnd + 1}/{a.rounds}  threads {t}  sequences {s:<3}  {r:7.1f} tok/s",
                      file=sys.stderr, flush=True)
            if a.llama:
                for s, r in llama_round(a, t, seqs).items():
                    results.setdefault(("llama.cpp", t, s), []).append(r)
                    print(f"round {rnd + 1}/{a.rounds}  threads {t}  sequences {s:<3}  {r:7.1f} tok/s  llama.cpp",
                          file=sys.stderr, flush=True)

    print(f"model: {a.model} ({m.config.arch}, {m.config.n_layers} layers, dim {m.config.dim}); backend {m.kern.name}; "
          f"precision {a.precision}; kv {a.kv_type}; prompt {a.prompt} ids per sequence, {a.n_gen} timed steps; "
          f"head: {'every logit' if a.top is None else f'the best {a.top}'}" +
          (f"; llama.cpp reads {a.gguf}" if a.llama else ""))
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine({}).items()))
    print(f"{a.rounds} rounds, {time.time() - t_start:.0f} s")
    print(f"\naggregate decode tok/s: median [min, max] over rounds; ratio to {seqs[0]} sequence(s), same threads")
    print("\n".join(table(results, engines, seqs, threads)))
    if a.llama:
        med = {k: statistics.median(v) for k, v in results.items()}
        print("\nminigpt / llama.cpp, ratio of medians: " + "; ".join(
            f"{t} thread{'s' * (t > 1)}: " + ", ".join(f"{s} seq {med['minigpt', t, s] / med['llama.cpp', t, s]:.2f}x"
                                                   for s in seqs) for t in threads))


if __name__ == "__main__":
    main()
