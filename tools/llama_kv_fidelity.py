"""llama.cpp's fidelity with a given KV cache type, scored against a committed reference's transformers f32
arrays: top-1 agreement, approximate KL(transformers || llama.cpp) over the stored top-k plus a tail bucket,
and perplexity, pooled over every position of the fixture. Does not import minigpt; changes no fixture.

    $MINIGPT_LLAMA_VENV/bin/python tools/llama_kv_fidelity.py [--model-name smollm2|gemma3|qwen2]
        [--kv-type f16|q8_0] [--v-type f16|q8_0] [--flash-attn] [--model PATH]

Each chunk's stored `ids` are fed as tools/make_reference.py's llama stage feeds them (same n_ctx, one
ubatch per chunk, empty cache at position 0, 2 threads); only the cache types and flash attention change.
--kv-type q8_0 stores both K and V as q8_0 (--v-type sets V's apart). A quantized V cache needs flash
attention, so any q8_0 implies --flash-attn. The committed fixtures' llama arrays are `--kv-type f16`
without flash attention; that run reproduces them, and the tool prints its top-1 agreement with them.
"""

import argparse
import os
import sys

import numpy as np

from make_reference import CACHE, FIXTURES, N_THREADS, PRESETS, kl_top_k, log_softmax

KV_TYPES = {"f16": 1, "q8_0": 8}     # GGML_TYPE_F16, GGML_TYPE_Q8_0


def groups_of(preset):
    """{kind: chunk names} for the presets whose tests report per kind of text (tests/test_qwen2.py)."""
    if preset.fixture.startswith("qwen2"):
        return {"english": ("english_prose", "english_expository", "chat"),
                "chinese": ("chinese_prose", "chinese_qwen_essay", "chat_chatml_zh"),
                "code": ("python_code", "c_code", "javascript_code")}
    return {}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-name", choices=list(PRESETS), default="smollm2")
    ap.add_argument("--model", help="the GGUF file (default: the preset's, in $MINIGPT_CACHE/gguf)")
    ap.add_argument("--kv-type", choices=list(KV_TYPES), default="f16", help="type of both K and V caches")
    ap.add_argument("--v-type", choices=list(KV_TYPES), help="type of the V cache (default: --kv-type)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp's flash attention (implied by q8_0)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.model_name]
    model = args.model or os.path.join(CACHE, "gguf", preset.gguf)
    if not os.path.isfile(model):
        raise SystemExit(f"llama_kv_fidelity: no such model file: {model}")
    v_type = args.v_type or args.kv_type
    flash = args.flash_attn or args.kv_type != "f16" or v_type != "f16"

    import llama_cpp

    z = np.load(os.path.join(FIXTURES, preset.fixture + ".npz"))
    n = preset.max_chunk_tokens
    llm = llama_cpp.Llama(model_path=model, logits_all=True, n_ctx=preset.n_ctx, n_batch=n, n_ubatch=n,
                          n_threads=N_THREADS, flash_attn=flash, type_k=KV_TYPES[args.kv_type],
                          type_v=KV_TYPES[v_type], verbose=False)
    per_chunk = {}
    for name in z["chunk_names"]:
        ids = z[f"{name}/ids"]
        llm.reset()                                       # empty KV cache: every chunk starts at position 0
        llm.eval(ids.tolist())
        lp = log_softmax(np.array(llm.scores[: len(ids) - 1], dtype=np.float32))     # [n-1, vocab]
        top1 = lp.argmax(-1)
        per_chunk[str(name)] = (top1 == z[f"{name}/hf_top_ids"][:, 0],
                                top1 == z[f"{name}/llama_top_ids"][:, 0],
                                lp[np.arange(len(ids) - 1), ids[1:]],
                                kl_top_k(z[f"{name}/hf_top_ids"], z[f"{name}/hf_top_logp"], lp))
    print(f"{os.path.basename(model)}: llama-cpp-python {llama_cpp.__version__}, K cache {args.kv_type}, "
          f"V cache {v_type}, flash attention {'on' if flash else 'off'}")
    for group, names in {**groups_of(preset), "all": tuple(per_chunk)}.items():
        agree, same, target, kl = (np.concatenate([per_chunk[c][i] for c in names]) for i in range(4))
        print(f"{group:8s} {len(agree):5d} positions: top-1 vs transformers {agree.mean():.4f}, "
              f"approx. KL {kl.mean():.2e}, ppl {np.exp(-target.mean()):.4f}; "
              f"top-1 vs the fixture's llama.cpp {same.mean():.4f}")


if __name__ == "__main__":
    sys.exit(main())
