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
        top_ids, top_lp = z[f"{name}/{ref}_top_ids"], z[f"{name}/{ref}_top_logp"].astype(np.float64)
        agree.append(lp.argmax(-1) == top_ids[:, 0])
        target.append(lp[np.arange(len(ids) - 1), ids[1:]])
        p = np.exp(top_lp)
        q_top = np.take_along_axis(lp, top_ids, axis=1)
        tail_p = np.clip(1 - p.sum(1), 1e-12, None)
        tail_q = np.clip(1 - np.exp(q_top).sum(1), 1e-12, None)
        kl.append((p * (top_lp - q_top)).sum(1) + tail_p * np.log(tail_p / tail_q))
    agree, target, kl = (np.concatenate(a) for a in (agree, target, kl))
    return agree.mean(), float(np.exp(-target.mean())), kl.mean(), len(agree)


def pieces_sha256(tok):
    """SHA-256 of every token's bytes (length-prefixed), as the tokenizer fixtures store llama.cpp's."""
    digest = hashlib.sha256()
    for t in range(tok.n_vocab):
        piece = tok.token_bytes(t)
        digest.update(len(piece).to_bytes(4, "little") + piece)
    return digest.hexdigest()
