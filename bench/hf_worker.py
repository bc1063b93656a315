"""One Hugging Face transformers + torch float32 measurement ("what a user would pick instead"); prints JSON.

    $MINIGPT_HF_PYTHON bench/hf_worker.py -m ~/.cache/minigpt/bench/SmolLM2-135M-Instruct.Q4_0.gguf -t 1

transformers dequantizes the GGUF to float32 at load (so load time includes that), then runs the same protocol
as minigpt/bench.py: an untimed warm-up, prefill of p fixed ids from an empty cache in one forward, and n greedy
single-token decode steps with a KV cache after a 1-token prompt. Runs under the hf venv; imports no minigpt.
"""

import argparse
import json
import os
import platform
import resource
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def prompt_ids(n, vocab):
    # the rule of minigpt.bench.prompt_ids, copied: this process cannot import minigpt
    return [100 + (i * 7919) % (vocab - 100) for i in range(n)]


@torch.inference_mode()
def time_prefill(model, ids):
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    model(x, use_cache=True)
    return time.perf_counter() - t0


@torch.inference_mode()
def time_decode(model, first, n):
    out = model(torch.tensor([[first]]), use_cache=True)
    t0 = time.perf_counter()
    for _ in range(n):
        tok = out.logits[0, -1].argmax().view(1, 1)
        out = model(tok, past_key_values=out.past_key_values, use_cache=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True, help="A GGUF file.")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()

    t0 = time.perf_counter()
    path = os.path.abspath(os.path.expanduser(a.model))
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0

    ids = prompt_ids(a.n_prompt, model.config.vocab_size)
    time_prefill(model, ids)
    time_decode(model, ids[0], 2)
    pp = a.n_prompt / time_prefill(model, ids)
    tg = a.n_gen / time_decode(model, ids[0], a.n_gen)
    print(json.dumps({
        "backend": "transformers f32", "threads": a.threads, "n_prompt": a.n_prompt, "n_gen": a.n_gen,
        "load_s": load_s, "prefill_tok_s": pp, "decode_tok_s": tg,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
