"""Make the committed fidelity references: SmolLM2-135M-Instruct Q4_1, Gemma-3-270M Q4_K_M and
Qwen2.5-Coder-0.5B-Instruct (Q5_0 with Q8_0/Q4_K/Q6_K tensors).

Two independent reference runtimes score the same token ids, teacher-forced, over the preset's
corpus (tests/fixtures/fidelity_corpus.json, plus fidelity_corpus_gemma3.json for Gemma):
  llama.cpp (llama-cpp-python)        -- the quantized runtime everyone compares with;
  Hugging Face transformers, float32  -- the GGUF dequantized to f32, our "exact" model.

Each stage runs in its own venv (the two stacks do not share one), and none imports minigpt:

    $MINIGPT_LLAMA_VENV/bin/python tools/make_reference.py llama [--model-name gemma3]   # tokenize + llama.cpp logits
    $MINIGPT_HF_VENV/bin/python tools/make_reference.py hf [--model-name gemma3]         # transformers f32, same ids
    $MINIGPT_HF_VENV/bin/python tools/make_reference.py combine [--model-name gemma3]    # -> tests/fixtures/*.npz, *.json

combine without the hf stage's output writes a llama.cpp-only reference (no hf_* arrays, no HF numbers
in the summary). The hf stage needs accelerate and gguf beside torch and transformers.

Options (all stages): --model-name smollm2|gemma3|qwen2 (the preset: GGUF, corpus, fixture names and
the model's settings; default smollm2), --model PATH (another copy of the preset's GGUF),
--work DIR (full-vocab logits between stages, ~1 MB per position for Gemma's 262k vocabulary;
default /tmp/minigpt_fidelity/<model-name>). combine needs only NumPy.

Outputs (see docs/fidelity.md for how a runtime is measured against them):
  tests/fixtures/<fixture>.npz   per chunk <name>/...:
      ids                 [n]            int32    llama.cpp token ids (fed to both references)
      {ref}_top_ids       [n-1, k]       int32    top-k tokens at position i (predicting
                                                  ids[i+1]), best first (k: 32; qwen2: 8)
      {ref}_top_logp      [n-1, k]       float32  their log-probs (log-softmax of the full vocab)
      {ref}_target_logp   [n-1]          float32  log-prob of the actual next token ids[i+1]
    with ref in {hf, llama} (llama alone without the hf stage), plus chunk_names [n_chunks] and top_k.
  tests/fixtures/<fixture>.json  summary: positions, perplexities, top-1 agreement,
      KL(HF || llama.cpp) exact and top-k approximate, versions, GGUF sha256.
with <fixture> smollm2_q4_1_reference, gemma3_270m_q4_k_m_reference or qwen2_5_coder_0_5b_reference.
"""

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CACHE = os.environ.get("MINIGPT_CACHE") or os.path.expanduser("~/.cache/minigpt")
DEFAULT_WORK = "/tmp/minigpt_fidelity"
TOP_K = 32
N_THREADS = 2


@dataclass(frozen=True)
class Preset:
    gguf: str                  # the GGUF's name in $MINIGPT_CACHE/gguf (where `minigpt pull --keep-source` puts it)
    corpora: tuple             # corpus files in tests/fixtures, their chunks scored in this order
    fixture: str               # tests/fixtures/<fixture>.npz and .json
    max_chunk_tokens: int      # = n_batch = n_ubatch: one llama.cpp eval call (one ubatch) per chunk
    n_ctx: int
    attn_implementation: str | None   # transformers' attention; None: its default
    top_k: int = TOP_K         # tokens stored per position (a 152k vocabulary's logits do not compress)


PRESETS = {
    "smollm2": Preset(gguf="SmolLM2-135M-Instruct.Q4_1.gguf", corpora=("fidelity_corpus.json",),
                      fixture="smollm2_q4_1_reference", max_chunk_tokens=512, n_ctx=1024,
                      attn_implementation=None),
    # Gemma's extra chunks include its chat markup and one text longer than the 512-token sliding
    # window; "eager" attention is transformers' exact path for Gemma 3 (sliding window included).
    "gemma3": Preset(gguf="gemma-3-270m-q4_k_m.gguf",
                     corpora=("fidelity_corpus.json", "fidelity_corpus_gemma3.json"),
                     fixture="gemma3_270m_q4_k_m_reference", max_chunk_tokens=1024, n_ctx=1024,
                     attn_implementation="eager"),
    # Qwen2.5's extra chunks: Chinese prose, a Chinese ChatML chat with code, JavaScript
    "qwen2": Preset(gguf="qwen2.5-coder-0.5b-instruct.gguf",
                    corpora=("fidelity_corpus.json", "fidelity_corpus_qwen2.json"),
                    fixture="qwen2_5_coder_0_5b_reference", max_chunk_tokens=512, n_ctx=1024,
                    attn_implementation=None, top_k=8),
}

GREEDY_PROMPT = "The capital of France is"   # a sanity check of the HF model, recorded in the summary
GREEDY_TOKENS = 16


def load_corpus(preset):
    chunks = []
    for name in preset.corpora:
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
            chunks += json.load(f)["chunks"]
    names = [c["name"] for c in chunks]
    if len(set(names)) != len(names):
        raise ValueError(f"chunk names repeat across {preset.corpora}: {names}")
    return chunks


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

def stage_llama(preset, model_path, work):
    import llama_cpp

    n_batch = preset.max_chunk_tokens
    llm = llama_cpp.Llama(model_path=model_path, logits_all=True, n_ctx=preset.n_ctx, n_batch=n_batch,
                          n_ubatch=n_batch, n_threads=N_THREADS, verbose=False)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
    ids_by_chunk = {}
    for chunk in load_corpus(preset):
        name = chunk["name"]
        ids = llm.tokenize(chunk["text"].encode("utf-8"), add_bos=add_bos, special=True)
        if not 2 <= len(ids) <= preset.max_chunk_tokens:
            raise ValueError(f"chunk {name!r} has {len(ids)} tokens; need 2..{preset.max_chunk_tokens}")
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
        "n_ctx": preset.n_ctx,
        "n_batch": n_batch,
        "n_threads": N_THREADS,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    })


# --- stage 2: transformers f32 (same ids) -----------------------------------------------------

def check_lm_head(model, model_path):
    """lm_head must be what llama.cpp multiplies by: the GGUF's output.weight, dequantized, when it has
    one (Qwen2.5's GGUF stores it apart, at Q8_0, though the HF model ties it), else the embedding
    matrix itself (tied). -> whether lm_head is tied to the embeddings. RuntimeError otherwise."""
    import gguf

    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    output = [t for t in gguf.GGUFReader(model_path).tensors if t.name == "output.weight"]
    if not output:
        if not tied:
            raise RuntimeError("transformers did not tie lm_head to token_embd; HF logits would be wrong")
        return tied
    want = gguf.dequantize(output[0].data, output[0].tensor_type).reshape(model.lm_head.weight.shape)
    if tied or not np.array_equal(model.lm_head.weight.detach().numpy(), want):
        raise RuntimeError("transformers' lm_head is not the GGUF's output.weight; HF logits would be wrong")
    return tied


def stage_hf(preset, model_path, work):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids_by_chunk = read_json(os.path.join(work, "ids.json"))
    add_bos = read_json(os.path.join(work, "llama_meta.json"))["add_bos"]
    model_dir, gguf_name = os.path.split(model_path)
    torch.set_num_threads(N_THREADS)
    # dtype= is transformers 5's name for torch_dtype=; the GGUF is dequantized to float32.
    # For gemma3, transformers' GGUF loader maps the metadata to Gemma3TextConfig (sliding window,
    # both RoPE bases, query scale 1/sqrt(head_dim)), subtracts the 1 that GGUF adds to Gemma's
    # norm weights, and (rightly) does not un-permute q/k: llama.cpp does not permute them for gemma3.
    extra = {"attn_implementation": preset.attn_implementation} if preset.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_name,
                                                 dtype=torch.float32, **extra)
    model.eval()
    tied = check_lm_head(model, model_path)
    # transformers' own GGUF tokenizer is recorded for information only; it is never used for ids.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name)
    texts = {c["name"]: c["text"] for c in load_corpus(preset)}
    same_ids = {}
    for name, ids in ids_by_chunk.items():
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids], dtype=torch.long))
        np.save(os.path.join(work, f"hf_{name}.npy"), out.logits[0].float().numpy())
        same_ids[name] = tokenizer(texts[name], add_special_tokens=add_bos)["input_ids"] == ids
        print(f"hf     {name:20s} {len(ids):4d} tokens  hf-tokenizer-agrees={same_ids[name]}")
    # a sanity check a reader can judge: the f32 model's greedy continuation of a plain prompt
    prompt = tokenizer(GREEDY_PROMPT, add_special_tokens=add_bos, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(prompt, max_new_tokens=GREEDY_TOKENS, do_sample=False)[0, prompt.shape[1]:]
    greedy_text = tokenizer.decode(greedy, skip_special_tokens=False)
    print(f"hf     greedy: {GREEDY_PROMPT!r} -> {greedy_text!r}")
    write_json(os.path.join(work, "hf_meta.json"), {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": model.config._attn_implementation,
        "lm_head_tied_to_embeddings": tied,
        "hf_tokenizer_matches_llama_ids": same_ids,
        "greedy": {"prompt": GREEDY_PROMPT, "continuation": greedy_text},
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


def stage_combine(preset, model_path, work):
    ids_by_chunk = read_json(os.path.join(work, "ids.json"))
    llama_meta = read_json(os.path.join(work, "llama_meta.json"))
    with_hf = os.path.exists(os.path.join(work, "hf_meta.json"))
    hf_meta = read_json(os.path.join(work, "hf_meta.json")) if with_hf else None
    refs = ("hf", "llama") if with_hf else ("llama",)
    arrays = {"chunk_names": np.array(list(ids_by_chunk)), "top_k": np.int32(preset.top_k)}
    totals = {"nll_hf": [], "nll_llama": [], "agree": [], "kl": [], "kl_top": []}
    per_chunk = {}
    for name, ids in ids_by_chunk.items():
        ids = np.asarray(ids, dtype=np.int32)
        target = ids[1:, None].astype(np.int64)          # position i predicts ids[i + 1]
        arrays[f"{name}/ids"] = ids
        logp = {}
        for ref in refs:
            logits = np.load(os.path.join(work, f"{ref}_{name}.npy"))[:-1]    # [n-1, vocab]
            logp[ref] = log_softmax(logits)
            top_ids, top_logp = top_k(logp[ref], preset.top_k)
            arrays[f"{name}/{ref}_top_ids"] = top_ids
            arrays[f"{name}/{ref}_top_logp"] = top_logp
            arrays[f"{name}/{ref}_target_logp"] = (
                np.take_along_axis(logp[ref], target, axis=-1)[:, 0].astype(np.float32))
        nll_llama = -arrays[f"{name}/llama_target_logp"].astype(np.float64)
        totals["nll_llama"].append(nll_llama)
        per_chunk[name] = {"tokens": int(len(ids)), "positions": int(len(ids) - 1),
                           "ppl_llama": round(float(np.exp(nll_llama.mean())), 4)}
        if not with_hf:
            continue
        agree = logp["hf"].argmax(-1) == logp["llama"].argmax(-1)
        p_hf = np.exp(logp["hf"])
        kl = (p_hf * (logp["hf"] - logp["llama"])).sum(-1)
        kl_top = kl_top_k(arrays[f"{name}/hf_top_ids"], arrays[f"{name}/hf_top_logp"],
                          logp["llama"])
        nll_hf = -arrays[f"{name}/hf_target_logp"].astype(np.float64)
        for key, val in (("nll_hf", nll_hf), ("agree", agree), ("kl", kl), ("kl_top", kl_top)):
            totals[key].append(val)
        per_chunk[name] |= {
            "ppl_hf": round(float(np.exp(nll_hf.mean())), 4),
            "top1_agreement": round(float(agree.mean()), 4),
            "kl_hf_llama": round(float(kl.mean()), 6),
        }
    cat = {k: np.concatenate(v) for k, v in totals.items() if v}
    summary = {
        "model": os.path.basename(model_path),
        "gguf_sha256": sha256_of(model_path),
        "corpus": " + ".join(f"tests/fixtures/{name}" for name in preset.corpora),
        "chunks": len(ids_by_chunk),
        "positions": int(cat["nll_llama"].size),
        "top_k": preset.top_k,
        "references": list(refs),
        "ppl_llama": round(float(np.exp(cat["nll_llama"].mean())), 4),
    }
    if with_hf:
        summary |= {
            "ppl_hf": round(float(np.exp(cat["nll_hf"].mean())), 4),
            "top1_agreement_llama_vs_hf": round(float(cat["agree"].mean()), 4),
            "top1_disagreements": int((~cat["agree"]).sum()),
            "kl_hf_llama_mean": round(float(cat["kl"].mean()), 6),
            "kl_hf_llama_p99": round(float(np.quantile(cat["kl"], 0.99)), 6),
            f"kl_hf_llama_top{preset.top_k}_approx_mean": round(float(cat["kl_top"].mean()), 6),
        }
    summary |= {
        "versions": {
            "llama_cpp_python": llama_meta["llama_cpp_python"],
            **({"torch": hf_meta["torch"], "transformers": hf_meta["transformers"]} if with_hf else {}),
            "numpy": np.__version__,
        },
        "per_chunk": per_chunk,
        "llama_cpp": llama_meta,
        **({"hf": hf_meta} if with_hf else {}),
    }
    out_npz = os.path.join(FIXTURES, preset.fixture + ".npz")
    out_json = os.path.join(FIXTURES, preset.fixture + ".json")
    np.savez_compressed(out_npz, **arrays)
    write_json(out_json, summary)
    brief = {k: v for k, v in summary.items() if k not in ("per_chunk", "llama_cpp", "hf")}
    print(json.dumps(brief, indent=1))
    print(f"wrote {out_npz} ({os.path.getsize(out_npz) / 1e6:.2f} MB) and {out_json}")


STAGES = {"llama": stage_llama, "hf": stage_hf, "combine": stage_combine}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--model-name", choices=list(PRESETS), default="smollm2", help="which model's references")
    ap.add_argument("--model", help="the GGUF file (default: the preset's, in $MINIGPT_CACHE/gguf)")
    ap.add_argument("--work", help=f"scratch dir for full-vocab logits (default {DEFAULT_WORK}/<model-name>)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.model_name]
    model = args.model or os.path.join(CACHE, "gguf", preset.gguf)
    if not os.path.isfile(model):
        raise SystemExit(f"make_reference: no such model file: {model} (`minigpt pull NAME --keep-source` fetches it)")
    work = args.work or os.path.join(DEFAULT_WORK, args.model_name)
    os.makedirs(work, exist_ok=True)
    STAGES[args.stage](preset, os.path.abspath(model), work)


if __name__ == "__main__":
    sys.exit(main())
