"""llama.cpp's chunked perplexity of a text file, computed with llama-cpp-python (which ships no
llama-perplexity binary), to compare with `minigpt perplexity`. Does not import minigpt.

    $MINIGPT_LLAMA_VENV/bin/python tools/llama_perplexity.py -m MODEL.gguf -f TEXT [--ctx 512] [--chunks N]

The same procedure as llama.cpp's tools/perplexity/perplexity.cpp (`perplexity()`, no --ppl-stride):
tokenize the whole file (BOS if the vocabulary adds it, control-token texts as plain text); cut it
into n_ctx-token chunks, dropping the partial tail; evaluate each chunk from an empty cache in one
batch, its first token replaced by BOS when the vocabulary adds BOS; score the logits at positions
n_ctx/2 .. n_ctx-2 against the next token; print the running perplexity per chunk ([1]x,[2]y,...)
and `Final estimate: PPL = X +/- Y` with llama.cpp's uncertainty ppl * sqrt(var(nll) / (count - 1)).
Log-softmax is taken in float64 (llama.cpp: float with a double sum; the difference is ~1e-6).
"""

import argparse
import math
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    ap.add_argument("--ctx", type=int, default=512, help="chunk length (llama.cpp's default: 512)")
    ap.add_argument("--chunks", type=int, default=None, help="evaluate at most this many chunks")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp

    n_ctx = args.ctx
    llm = llama_cpp.Llama(model_path=args.model, logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos = llama_cpp.llama_vocab_bos(vocab)
    with open(args.file, "rb") as f:
        text = f.read()
    tokens = llm.tokenize(text, add_bos=add_bos, special=False)
    n_chunk = len(tokens) // n_ctx
    if args.chunks is not None:
        n_chunk = min(n_chunk, args.chunks)
    if n_chunk < 1:
        sys.exit(f"error: {len(tokens)} tokens, too short for one chunk of {n_ctx}")
    print(f"llama.cpp {llama_cpp.__version__}: {len(tokens)} tokens, {n_chunk} chunks of {n_ctx}, "
          f"add_bos {add_bos}", file=sys.stderr)

    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    for i in range(n_chunk):
        t0 = time.perf_counter()
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float64)    # [n_ctx - 1 - first, vocab]
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        v = -logp[np.arange(len(logp)), chunk[first + 1:]]
        nll += v.sum()
        nll2 += (v * v).sum()
        count += len(v)
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end="", file=sys.stderr, flush=True)
        if i == 0:
            print(f" ({time.perf_counter() - t0:.2f} s per chunk) ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else float("nan")
    print(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")


if __name__ == "__main__":
    main()
