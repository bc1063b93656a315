"""`minigpt bench`: load time, prefill and decode speed, memory, in the spirit of llama-bench.

    prefill  pp<p>: p fixed token ids evaluated in one call from an empty KV cache
    decode   tg<n>: n greedy tokens after a 1-token prompt, one decode step per token
Each repetition starts from an empty cache; one untimed warm-up (p tokens, then 2 decode steps) comes first.
The cache holds p + n positions, as in llama-bench. bench/compare.py runs llama.cpp the same way.

Decode reads every weight once per token, so it cannot be faster than the memory floor: read bandwidth /
weight bytes per token. The report gives that floor (bandwidth measured here, one thread, after the runs)
and the fraction of it decode reaches.

Memory: the resident set right after load (weights as packed, the mapped pages still resident, the caches'
first pages) and its peak over the whole run.
"""

import platform
import resource
import statistics
import sys
import time

import numpy as np

from . import __version__
from .api import load
from .engine import DEFAULT_KV_TYPE
from .errors import MinigptError

# ---


def prompt_ids(n, vocab):
    """n fixed, ordinary token ids (no control tokens at the low end); bench/llama_worker.py uses the same rule."""
    return [100 + (i * 7919) % (vocab - 100) for i in range(n)]


def _peak_rss_mib():
    # ru_maxrss is KiB on Linux, bytes on macOS
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (2**20 if sys.platform == "darwin" else 2**10)


def rss_mib():
    """This process's resident set now, in MiB (VmRSS in /proc/self/status); None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**10   # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _isa(kern):
    isa = getattr(kern, "isa", None)
    return isa() if callable(isa) else None


def _time_prefill(m, ids):
    m.reset()
    t0 = time.perf_counter()
    m.eval(ids)
    return time.perf_counter() - t0


def _time_decode(m, first, n):
    """Seconds for n single-token greedy steps after a 1-token prompt, each asking for the best logit
    alone, as greedy generation does (top=1: a screened head computes that one exactly, Engine.prefill)."""
    m.reset()
    tok = int(np.argmax(m.engine.decode_step(first, top=1)))
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(m.engine.decode_step(tok, top=1)))
    return time.perf_counter() - t0


def decode_bytes(m):
    """Weight bytes one decode step reads: every tensor but the embedding table, of which it reads one row
    (unless the table is the output matrix too)."""
    skip = () if m.config.tied_embeddings else ("tok_embd",)
    return sum(t.nbytes for name, t in m.file.tensors.items() if name not in skip)


def read_bandwidth(mib=512, reps=5):
    """Bytes per second one thread reads from memory (NumPy's float32 sum over a buffer far larger than any
    cache; the best of reps)."""
    a = np.ones(mib << 18, dtype=np.float32)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def _summary(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def run(model, n_prompt=128, n_gen=128, threads=None, reps=3, backend=None, precision="balanced",
        kv_type=DEFAULT_KV_TYPE):
    """Benchmark one model; a JSON-ready dict. model: a .mgpt path or a known model name.

    Timings are tok/s (higher is better) summarized over `reps` repetitions; n_prompt or n_gen 0 skips that test.
    """
    if n_prompt < 0 or n_gen < 0 or reps < 1 or n_prompt + n_gen < 1:
        raise MinigptError(f"bad bench sizes: n_prompt {n_prompt}, n_gen {n_gen}, reps {reps}")
    t0 = time.perf_counter()
    m = load(model, threads=threads, backend=backend, n_ctx=n_prompt + n_gen + 1, precision=precision, kv_type=kv_type)
    load_s = time.perf_counter() - t0
    load_rss = rss_mib()

    c = m.config
    ids = prompt_ids(max(1, n_prompt), c.vocab_size)
    _time_prefill(m, ids)   # warm-up: first touches of the mapped weights, thread start
    _time_decode(m, ids[0], 2)
    pp = [n_prompt / _time_prefill(m, ids) for _ in range(reps)] if n_prompt else []
    tg = [n_gen / _time_decode(m, ids[0], n_gen) for _ in range(reps)] if n_gen else []

    types = {}
    for t in m.file.tensors.values():
        types[t.qtype] = types.get(t.qtype, 0) + 1
    peak_rss = _peak_rss_mib()   # before read_bandwidth's buffer
    bw, nbytes = read_bandwidth(), decode_bytes(m)
    return {
        "model": {"path": str(m.path), "name": c.name, "arch": c.arch, "file_size": m.file.file_size,
                  "n_params": sum(int(np.prod(t.shape)) for t in m.file.tensors.values()), "tensor_types": types},
        "backend": m.kern.name, "isa": _isa(m.kern), "threads": m.threads,
        "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
        "load_s": load_s,
        "precision": "exact" if m.kern.name == "numpy" else m.engine.precision,   # numpy: f32 weights
        "kv_type": m.kv_type,
        "prefill_tok_s": _summary(pp) if pp else None,
        "decode_tok_s": _summary(tg) if tg else None,
        "load_rss_mib": load_rss, "peak_rss_mib": peak_rss,
        "decode_bytes_per_token": nbytes, "read_gb_s": bw / 1e9, "floor_tok_s": bw / nbytes,
        "versions": {"minigpt": __version__, "python": platform.python_version(), "numpy": np.__version__},
    }


def format_table(r):
    """The human-readable report of a run() dict."""
    mo = r["model"]
    types = ", ".join(f"{n} {q}" for q, n in sorted(mo["tensor_types"].items()))
    lines = [
        f"model     {mo['name'] or mo['path']}  ({mo['arch']}, {mo['n_params'] / 1e6:.1f}M params, "
        f"{mo['file_size'] / 2**20:.1f} MiB; {types})",
        f"backend   {r['backend']}" + (f" ({r['isa']})" if r["isa"] else "") +
        f", {r['precision']} precision, {r['kv_type']} KV cache, {r['threads']} threads",
        f"load      {r['load_s']:.3f} s",
    ]
    for label, key, n in (("prefill", "prefill_tok_s", f"pp{r['n_prompt']}"), ("decode", "decode_tok_s", f"tg{r['n_gen']}")):
        s = r[key]
        if s:
            lines.append(f"{label:<9} {n:<7} {s['median']:8.1f} tok/s  [{s['min']:.1f}, {s['max']:.1f}] "
                         f"over {len(s['samples'])} reps")
    floor = r["floor_tok_s"]
    lines.append(f"floor     {floor:8.1f} tok/s  ({r['decode_bytes_per_token'] / 1e6:.0f} MB of weights per token "
                 f"at {r['read_gb_s']:.1f} GB/s read by one thread)" +
                 (f"; decode reaches {r['decode_tok_s']['median'] / floor:.0%} of it" if r["decode_tok_s"] else ""))
    if r["load_rss_mib"] is not None:
        lines.append(f"load RSS  {r['load_rss_mib']:.1f} MiB  (resident right after load)")
    lines.append(f"peak RSS  {r['peak_rss_mib']:.1f} MiB")
    return "\n".join(lines)
