"""Scoring a model against a committed fidelity reference (tools/make_reference.py, docs/fidelity.md)."""

import hashlib

import numpy as np

from minigpt.perplexity import log_softmax


def score(model, z, ref="hf"):
    """Top-1 agreement with the reference `ref` (hf: transformers f32, or llama: llama.cpp), perplexity, and
    KL(ref || model) over the reference's stored top-k plus a tail bucket."""
    agree, target, kl = [], [], []
    for name in z["chunk_names"]:
        ids = z[f"{name}/ids"]
        lp = log_softmax(model.logits(ids.tolist())[:-1])                  # [n-1, vocab]
        agree.append(lp.argmax(-1) == z[f"{name}/{ref}_top_ids"][:, 0])
        target.append(lp[np.arange(len(ids) - 1), ids[1:]])
        kl.append(_kl_top(z, name, lp, ref))
    agree, target, kl = (np.concatenate(a) for a in (agree, target, kl))
    return agree.mean(), float(np.exp(-target.mean())), kl.mean(), len(agree)


def _kl_top(z, name, lp, ref):
    """KL(ref || model) per position over the reference's stored top-k plus a tail bucket.
    lp: the model's log-softmax [n-1, vocab] -> [n-1]"""
    top_ids, top_lp = z[f"{name}/{ref}_top_ids"], z[f"{name}/{ref}_top_logp"].astype(np.float64)
    p = np.exp(top_lp)
    q_top = np.take_along_axis(lp, top_ids, axis=1)
    tail_p = np.clip(1 - p.sum(1), 1e-12, None)
    tail_q = np.clip(1 - np.exp(q_top).sum(1), 1e-12, None)
    return (p * (top_lp - q_top)).sum(1) + tail_p * np.log(tail_p / tail_q)


def score_groups(model, z, groups):
    """Per group of chunks ({group: (chunk names)}, plus "all"): top-1 agreement with transformers f32 of the
    model and of llama.cpp, the perplexities of the model, of transformers and of llama.cpp, and the model's
    KL(transformers || model) as score() computes it."""
    per_chunk = {}
    for name in z["chunk_names"]:
        ids = z[f"{name}/ids"]
        lp = log_softmax(model.logits(ids.tolist())[:-1])                  # [n-1, vocab]
        hf_top1 = z[f"{name}/hf_top_ids"][:, 0]
        per_chunk[str(name)] = (lp.argmax(-1) == hf_top1, z[f"{name}/llama_top_ids"][:, 0] == hf_top1,
                                lp[np.arange(len(ids) - 1), ids[1:]], z[f"{name}/hf_target_logp"],
                                z[f"{name}/llama_target_logp"], _kl_top(z, name, lp, "hf"))
    out = {}
    for group, names in {**groups, "all": tuple(per_chunk)}.items():
        agree, llama_agree, nll, nll_hf, nll_llama, kl = (np.concatenate([per_chunk[n][i] for n in names])
                                                          for i in range(6))
        out[group] = {"positions": len(agree), "agree": agree.mean(), "llama_agree": llama_agree.mean(),
                      "ppl": float(np.exp(-nll.mean())), "ppl_hf": float(np.exp(-nll_hf.mean())),
                      "ppl_llama": float(np.exp(-nll_llama.mean())), "kl": kl.mean()}
    return out


def pieces_sha256(tok):
    """SHA-256 of every token's bytes (length-prefixed), as the tokenizer fixtures store llama.cpp's."""
    digest = hashlib.sha256()
    for t in range(tok.n_vocab):
        piece = tok.token_bytes(t)
        digest.update(len(piece).to_bytes(4, "little") + piece)
    return digest.hexdigest()
