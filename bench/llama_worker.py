"""One llama.cpp measurement, the twin of `minigpt bench --json -r 1`; prints one JSON object on stdout.

    $MINIGPT_LLAMA_PYTHON bench/llama_worker.py -m ~/.cache/minigpt/bench/SmolLM2-135M-Instruct.Q4_0.gguf -t 1

Same protocol as minigpt/bench.py: load (timed), an untimed warm-up, then prefill of p fixed ids from an empty
cache in one call (n_batch >= p) and n greedy single-token decode steps after a 1-token prompt; the KV cache
holds p + n + 1 positions. Runs under the llama venv only; it imports neither minigpt nor anything of this repo.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=1)
    a = ap.parse_args()

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
