"""What a q8_0 KV cache does to a real model's keys and values, per layer (docs/fidelity.md, "KV cache types").

    PYTHONPATH=. python tools/kv_row_stats.py MODEL FIXTURE [CHUNK ...]
    e.g. PYTHONPATH=. python tools/kv_row_stats.py qwen2.5-coder-0.5b-instruct qwen2_5_coder_0_5b_reference

Prefills each chunk of tests/fixtures/FIXTURE.npz (default: all) from an empty f32 cache with
$MINIGPT_CACHE/models/MODEL.mgpt (default cache ~/.cache/minigpt), then per layer, over every head and
position, prints for K and V:
  max|x|   the largest magnitude stored;
  err      the q8_0 (or f16) round trip's error, ||decode(encode(x)) - x||, relative to the rows' spread
           around their per-channel mean over positions, ||x - mean_t x|| (a constant added to every key
           adds the same to every score, and softmax ignores it; the spread is what attention tells apart);
  small    the share of values q8_0 stores as |q| <= 2, i.e. under 2.5/127 (2 %) of their block's largest.
"""

import os
import sys

import numpy as np

import minigpt
from minigpt.quant import kv_decode, kv_encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("MINIGPT_CACHE") or os.path.expanduser("~/.cache/minigpt")


def stats(x):
    """x: float32 [heads, n, head_dim] -> max|x|, q8_0 err, f16 err, small (see the docstring's terms)."""
    hd = x.shape[-1]
    spread = np.sum((x - x.mean(1, keepdims=True)) ** 2)
    q8 = kv_decode(kv_encode(x, "q8_0"), "q8_0", hd)
    f16 = x.astype(np.float16).astype(np.float32)
    q = kv_encode(x, "q8_0")[..., :hd].view(np.int8)
    return (np.abs(x).max(), np.sum((q8 - x) ** 2), np.sum((f16 - x) ** 2), spread,
            np.count_nonzero(np.abs(q.astype(np.int16)) <= 2), x.size)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        raise SystemExit(__doc__)
    model, fixture, chunks = argv[0], argv[1], argv[2:]
    z = np.load(os.path.join(ROOT, "tests", "fixtures", fixture + ".npz"))
    chunks = chunks or [str(c) for c in z["chunk_names"]]
    m = minigpt.load(os.path.join(CACHE, "models", model + ".mgpt"), kv_type="f32")
    n_layers = m.config.n_layers
    acc = np.zeros((n_layers, 2, 6))                     # per layer, K and V: the sums stats() returns
    for chunk in chunks:
        ids = z[f"{chunk}/ids"].tolist()
        cache = m.new_cache(len(ids), kv_type="f32")
        m.engine.prefill(ids, all_logits=True, cache=cache)
        for layer in range(n_layers):
            for j, store in enumerate((cache.k, cache.v)):
                # n_ctx = len(ids): no ring wraps, slot t is position t
                s = stats(np.ascontiguousarray(store[layer][:, :len(ids), :]))
                acc[layer, j, 0] = max(acc[layer, j, 0], s[0])
                acc[layer, j, 1:] += s[1:]
    print(f"{model}: {len(chunks)} chunks of {fixture}, head_dim {m.config.head_dim}, f32 cache")
    print("layer   K max|x|  K err q8_0  K small  K err f16 |  V max|x|  V err q8_0  V small")
    for layer in range(n_layers):
        (kmax, k8, k16, kspread, ksmall, kn), (vmax, v8, _, vspread, vsmall, vn) = acc[layer]
        print(f"{layer:5d}  {kmax:8.1f}  {np.sqrt(k8 / kspread):9.2%}  {ksmall / kn:7.1%}  "
              f"{np.sqrt(k16 / kspread):9.3%} |  {vmax:8.1f}  {np.sqrt(v8 / vspread):9.2%}  {vsmall / vn:7.1%}")


if __name__ == "__main__":
    sys.exit(main())
