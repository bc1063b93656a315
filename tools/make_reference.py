"""Make the committed fidelity references for SmolLM2-135M-Instruct Q4_1.

Two independent reference runtimes score the same token ids, teacher-forced, over
tests/fixtures/fidelity_corpus.json:
  llama.cpp (llama-cpp-python)        -- the quantized runtime everyone compares with;
  Hugging Face transformers, float32  -- the GGUF dequantized to f32, our "exact" model.

Each stage runs in its own venv (the two stacks do not share one), and none imports minigpt:

    /work/venvs/llama/bin/python tools/make_reference.py llama    # tokenize + llama.cpp logits
    /work/venvs/hf/bin/python tools/make_reference.py hf          # transformers f32, same ids
    /work/venvs/hf/bin/python tools/make_reference.py combine     # -> tests/fixtures/*.npz, *.json

Options (all stages): --model PATH (the GGUF), --work DIR (full-vocab logits between stages,
~330 MB per reference; default /tmp/minigpt_fidelity). combine needs only NumPy.

Outputs (see docs/fidelity.md for how a runtime is measured against them):
  tests/fixtures/smollm2_q4_1_reference.npz   per chunk <name>/...:
      ids                 [n]            int32    llama.cpp token ids (fed to both references)
      {ref}_top_ids       [n-1, 32]      int32    top-32 tokens at position i (predicting
                                                  ids[i+1]), best first
      {ref}_top_logp      [n-1, 32]      float32  their log-probs (log-softmax of the full vocab)
      {ref}_target_logp   [n-1]          float32  log-prob of the actual next token ids[i+1]
    with ref in {hf, llama}, plus chunk_names [n_chunks] and top_k.
  tests/fixtures/smollm2_q4_1_reference.json  summary: positions, perplexities, top-1 agreement,
      KL(HF || llama.cpp) exact and top-32 approximate, versions, GGUF sha256.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "fixtures", "fidelity_corpus.json")
OUT_NPZ = os.path.join(ROOT, "tests", "fixtures", "smollm2_q4_1_reference.npz")
OUT_JSON = os.path.join(ROOT, "tests", "fixtures", "smollm2_q4_1_reference.json")
DEFAULT_MODEL = "/root/.cache/minigpt/src/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WORK = "/tmp/minigpt_fidelity"
TOP_K = 32
MAX_CHUNK_TOKENS = 512   # llama.cpp's default n_batch: one eval call per chunk, fresh cache
N_CTX = 1024
N_THREADS = 2


def load_corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return json.load(f)["chunks"]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- stage 1: llama.cpp (tokenizer + logits) ---------------------------------------------------

def stage_llama(model_path, work):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, logits_all=True, n_ctx=N_CTX,
                          n_threads=N_THREADS, verbose=False)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
    ids_by_chunk = {}
    for chunk in load_corpus():
        name = chunk["name"]
        ids = llm.tokenize(chunk["text"].encode("utf-8"), add_bos=add_bos, special=True)
        if not 2 <= len(ids) <= MAX_CHUNK_TOKENS:
            raise ValueError(f"chunk {name!r} has {len(ids)} tokens; need 2..{MAX_CHUNK_TOKENS}")
        llm.reset()                          # empty KV cache: every chunk starts at position 0
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)    # [n, vocab]
        np.save(os.path.join(work, f"llama_{name}.npy"), logits)
        ids_by_chunk[name] = [int(t) for t in ids]
        print(f"llama  {name:20s} {len(ids):4d} tokens")
    write_json(os.path.join(work, "ids.json"), ids_by_chunk)
    write_json(os.path.join(work, "llama_meta.json"), {
        "llama_cpp_python": llama_cpp.__version__,
        "add_bos": add_bos,
        "n_ctx": N_CTX,
        "n_threads": N_THREADS,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    })


# --- stage 2: transformers f32 (same ids) -----------------------------------------------------

def stage_hf(model_path, work):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids_by_chunk = read_json(os.path.join(work, "ids.json"))
    model_dir, gguf_name = os.path.split(model_path)
    torch.set_num_threads(N_THREADS)
    # dtype= is transformers 5's name for torch_dtype=; the GGUF is dequantized to float32.
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_name,
                                                 dtype=torch.float32)
    model.eval()
    # The GGUF has no output.weight (tied embeddings): lm_head must be the embedding matrix.
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    if not tied:
        raise RuntimeError("transformers did not tie lm_head to token_embd; HF logits would be wrong")
    # transformers' own GGUF tokenizer is recorded for information only; it is never used for ids.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name)
    texts = {c["name"]: c["text"] for c in load_corpus()}
    same_ids = {}
    for name, ids in ids_by_chunk.items():
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids], dtype=torch.long))
        np.save(os.path.join(work, f"hf_{name}.npy"), out.logits[0].float().numpy())
        same_ids[name] = tokenizer(texts[name], add_special_tokens=False)["input_ids"] == ids
        print(f"hf     {name:20s} {len(ids):4d} tokens  hf-tokenizer-agrees={same_ids[name]}")
    write_json(os.path.join(work, "hf_meta.json"), {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lm_head_tied_to_embeddings": tied,
        "hf_tokenizer_matches_llama_ids": same_ids,
    })


# --- stage 3: combine (NumPy only) ------------------------------------------------------------

def log_softmax(logits):
    # logits: [n, vocab] -> [n, vocab] float64
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_k(logp, k):
    # logp: [n, vocab] -> ids [n, k] int32, logp [n, k] float32, best first
    idx = np.argpartition(-logp, k, axis=-1)[:, :k]
    vals = np.take_along_axis(logp, idx, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=-1)
    return idx.astype(np.int32), np.take_along_axis(vals, order, axis=-1).astype(np.float32)


def kl_top_k(ref_top_ids, ref_top_logp, logp_x):
    """Approximate KL(ref || X) per position from ref's stored top-k and X's full log-softmax.

    The vocabulary is coarsened to the k stored tokens plus one "rest" bucket holding each
    distribution's remaining mass; this is exactly KL of the coarsened distributions, hence a
    lower bound on the full KL (docs/fidelity.md).
    ref_top_ids, ref_top_logp: [n, k]; logp_x: [n, vocab] -> [n]
    """
    lp = ref_top_logp.astype(np.float64)
    lq = np.take_along_axis(logp_x.astype(np.float64), ref_top_ids.astype(np.int64), axis=-1)
    p = np.exp(lp)
    p_rest = np.clip(1.0 - p.sum(axis=-1), 1e-30, 1.0)
    q_rest = np.clip(1.0 - np.exp(lq).sum(axis=-1), 1e-30, 1.0)
    return (p * (lp - lq)).sum(axis=-1) + p_rest * (np.log(p_rest) - np.log(q_rest))


def stage_combine(model_path, work):
    ids_by_chunk = read_json(os.path.join(work, "ids.json"))
    llama_meta = read_json(os.path.join(work, "llama_meta.json"))
    hf_meta = read_json(os.path.join(work, "hf_meta.json"))
    arrays = {"chunk_names": np.array(list(ids_by_chunk)), "top_k": np.int32(TOP_K)}
    totals = {"nll_hf": [], "nll_llama": [], "agree": [], "kl": [], "kl_top": []}
    per_chunk = {}
    for name, ids in ids_by_chunk.items():
        ids = np.asarray(ids, dtype=np.int32)
        target = ids[1:, None].astype(np.int64)          # position i predicts ids[i + 1]
        arrays[f"{name}/ids"] = ids
        logp = {}
        for ref in ("hf", "llama"):
            logits = np.load(os.path.join(work, f"{ref}_{name}.npy"))[:-1]    # [n-1, vocab]
            logp[ref] = log_softmax(logits)
            top_ids, top_logp = top_k(logp[ref], TOP_K)
            arrays[f"{name}/{ref}_top_ids"] = top_ids
            arrays[f"{name}/{ref}_top_logp"] = top_logp
            arrays[f"{name}/{ref}_target_logp"] = (
                np.take_along_axis(logp[ref], target, axis=-1)[:, 0].astype(np.float32))
        agree = logp["hf"].argmax(-1) == logp["llama"].argmax(-1)
        p_hf = np.exp(logp["hf"])
        kl = (p_hf * (logp["hf"] - logp["llama"])).sum(-1)
        kl_top = kl_top_k(arrays[f"{name}/hf_top_ids"], arrays[f"{name}/hf_top_logp"],
                          logp["llama"])
        nll_hf = -arrays[f"{name}/hf_target_logp"].astype(np.float64)
        nll_llama = -arrays[f"{name}/llama_target_logp"].astype(np.float64)
        for key, val in (("nll_hf", nll_hf), ("nll_llama", nll_llama), ("agree", agree),
                         ("kl", kl), ("kl_top", kl_top)):
            totals[key].append(val)
        per_chunk[name] = {
            "tokens": int(len(ids)),
            "positions": int(len(ids) - 1),
            "ppl_hf": round(float(np.exp(nll_hf.mean())), 4),
            "ppl_llama": round(float(np.exp(nll_llama.mean())), 4),
            "top1_agreement": round(float(agree.mean()), 4),
            "kl_hf_llama": round(float(kl.mean()), 6),
        }
    cat = {k: np.concatenate(v) for k, v in totals.items()}
    summary = {
        "model": os.path.basename(model_path),
        "gguf_sha256": sha256_of(model_path),
        "corpus": "tests/fixtures/fidelity_corpus.json",
        "chunks": len(ids_by_chunk),
        "positions": int(cat["agree"].size),
        "top_k": TOP_K,
        "ppl_hf": round(float(np.exp(cat["nll_hf"].mean())), 4),
        "ppl_llama": round(float(np.exp(cat["nll_llama"].mean())), 4),
        "top1_agreement_llama_vs_hf": round(float(cat["agree"].mean()), 4),
        "top1_disagreements": int((~cat["agree"]).sum()),
        "kl_hf_llama_mean": round(float(cat["kl"].mean()), 6),
        "kl_hf_llama_p99": round(float(np.quantile(cat["kl"], 0.99)), 6),
        "kl_hf_llama_top32_approx_mean": round(float(cat["kl_top"].mean()), 6),
        "versions": {
            "llama_cpp_python": llama_meta["llama_cpp_python"],
            "torch": hf_meta["torch"],
            "transformers": hf_meta["transformers"],
            "numpy": np.__version__,
        },
        "per_chunk": per_chunk,
        "llama_cpp": llama_meta,
        "hf": hf_meta,
    }
    np.savez_compressed(OUT_NPZ, **arrays)
    write_json(OUT_JSON, summary)
    brief = {k: v for k, v in summary.items() if k not in ("per_chunk", "llama_cpp", "hf")}
    print(json.dumps(brief, indent=1))
    print(f"wrote {OUT_NPZ} ({os.path.getsize(OUT_NPZ) / 1e6:.2f} MB) and {OUT_JSON}")


STAGES = {"llama": stage_llama, "hf": stage_hf, "combine": stage_combine}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the GGUF file")
    ap.add_argument("--work", default=DEFAULT_WORK, help="scratch dir for full-vocab logits")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.model):
        raise SystemExit(f"make_reference: no such model file: {args.model}")
    os.makedirs(args.work, exist_ok=True)
    STAGES[args.stage](os.path.abspath(args.model), args.work)


if __name__ == "__main__":
    sys.exit(main())
