"""One llama.cpp measurement, the twin of `minigpt bench --json -r 1`; prints one JSON object on stdout.

    $MINIGPT_LLAMA_PYTHON bench/llama_worker.py -m ~/.cache/minigpt/bench/SmolLM2-135M-Instruct.Q4_0.gguf -t 1
    $MINIGPT_LLAMA_PYTHON bench/llama_worker.py -m SmolLM2-135M-Instruct.Q4_1.gguf -t 2 --seqs 1,4 -p 32 -n 64

Same protocol as minigpt/bench.py: load (timed), an untimed warm-up, then prefill of p fixed ids from an empty
cache in one call (n_batch >= p) and n greedy single-token decode steps after a 1-token prompt; the KV cache
holds p + n + 1 positions.

With --seqs, llama.cpp's own batched decode instead, the twin of bench/batch.py's measure (what llama.cpp's
batched-bench calls S_TG): for each S, S sequences of one context, each prefilled with its own prompt of p ids,
one untimed step, then n timed steps of one token per sequence in one llama_decode each, every row's logits
asked for. Prints {"seqs": {S: aggregate tok/s}, ...}.

Runs under the llama venv only; it imports neither minigpt nor anything of this repo.
"""

import argparse
import json
import platform
import resource
import time

import llama_cpp
import numpy as np


def prompt_ids(n, vocab):
    # the rule of minigpt.bench.prompt_ids, copied: this process cannot import minigpt
    return [100 + (i * 7919) % (vocab - 100) for i in range(n)]


def time_prefill(llm, ids):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    return time.perf_counter() - t0


def time_decode(llm, first, n):
    llm.reset()
    llm.eval([first])
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return time.perf_counter() - t0


def batched(a, seqs):
    """{S: aggregate decode tok/s of S sequences stepped together} (llama.cpp's C API, through llama_cpp)."""
    L = llama_cpp
    L.llama_backend_init()
    model = L.llama_model_load_from_file(a.model.encode(), L.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {a.model}")
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    cp = L.llama_context_default_params()
    n_max = max(seqs)
    cp.n_ctx, cp.n_seq_max = n_max * (a.n_prompt + a.n_gen + 2), n_max
    cp.n_batch = cp.n_ubatch = max(512, a.n_prompt, n_max)
    cp.n_threads = cp.n_threads_batch = a.threads
    ctx = L.llama_init_from_model(model, cp)
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(cp.n_batch, 0, 1)

    def decode(rows):   # rows: [(token, position, sequence, logits wanted)]
        batch.n_tokens = len(rows)
        for i, (tok, pos, seq, want) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, want
            batch.seq_id[i][0] = seq
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    def run(n_seqs, n_gen):
        L.llama_memory_clear(memory, True)
        ids = prompt_ids(a.n_prompt + n_seqs, vocab)
        for s in range(n_seqs):   # each its own prompt, as bench/batch.py
            decode([(t, i, s, i == a.n_prompt - 1) for i, t in enumerate(ids[s:s + a.n_prompt])])
        decode([(100 + s, a.n_prompt, s, True) for s in range(n_seqs)])   # warm-up
        t0 = time.perf_counter()
        for step in range(n_gen):
            decode([(100 + (step * 31 + s) % (vocab - 100), a.n_prompt + 1 + step, s, True) for s in range(n_seqs)])
        return n_seqs * n_gen / (time.perf_counter() - t0)

    run(n_max, 2)
    out = {s: run(s, a.n_gen) for s in seqs}
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--seqs", help="Comma-separated batch sizes: llama.cpp's batched decode (see above).")
    a = ap.parse_args()
    if a.seqs:
        seqs = [int(s) for s in a.seqs.split(",")]
        print(json.dumps({"backend": "llama.cpp", "threads": a.threads, "n_prompt": a.n_prompt, "n_gen": a.n_gen,
                          "seqs": batched(a, seqs), "versions": {"llama-cpp-python": llama_cpp.__version__}}))
        return

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(a.model, n_ctx=a.n_prompt + a.n_gen + 1, n_batch=max(512, a.n_prompt),
                          n_ubatch=max(512, a.n_prompt), n_threads=a.threads, n_threads_batch=a.threads,
                          logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0

    ids = prompt_ids(a.n_prompt, llm.n_vocab())
    time_prefill(llm, ids)   # warm-up, as minigpt bench does
    time_decode(llm, ids[0], 2)
    pp = a.n_prompt / time_prefill(llm, ids)
    tg = a.n_gen / time_decode(llm, ids[0], a.n_gen)
    print(json.dumps({
        "backend": "llama.cpp", "threads": a.threads, "n_prompt": a.n_prompt, "n_gen": a.n_gen,
        "load_s": load_s, "prefill_tok_s": pp, "decode_tok_s": tg,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"llama-cpp-python": llama_cpp.__version__, "python": platform.python_version(),
                     "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
