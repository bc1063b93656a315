"""Gemma 3 on every backend, on tiny synthetic checkpoints: the GGUF's reading, the forward passes
against each other, and the sliding-window layers' ring cache against a cache that keeps everything."""

import numpy as np
import pytest

import minigpt
from minigpt import engine
from minigpt.convert import convert
from minigpt.engine import KVCache

from synthetic import tiny_llama

IDS = [5, 40, 72, 101, 108, 108, 111, 262, 44, 3, 100, 200, 250, 45, 7, 9, 33, 60, 61, 62, 63, 64, 65]
WINDOW = 4


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma3")
    src, out = d / "g.gguf", d / "g.mgpt"
    tiny_llama(src, arch="gemma3", n_layers=7, n_heads=4, n_kv_heads=2, head_dim=24, window=WINDOW, ctx=4096)
    convert(src, out, "f32")
    return out


def test_the_gguf_is_read_as_llama_cpp_reads_it(gemma_path):
    cfg = minigpt.load(gemma_path, backend="numpy").config
    assert cfg.arch == "gemma3" and cfg.head_dim == 24 and cfg.dim == 64
    assert cfg.local_layers == (0, 1, 2, 3, 4, 6)         # every 6th layer is global
    assert cfg.sliding_window == WINDOW and cfg.rope_theta == 1e6 and cfg.rope_theta_local == 10000.0
    assert cfg.query_scale == pytest.approx(24 ** -0.5) and cfg.tied_embeddings


def test_every_backend_gives_the_reference_logits(gemma_path):
    ref = minigpt.load(gemma_path, backend="numpy").logits(IDS)
    scale = np.abs(ref).max()
    for backend in ("c", "numba"):
        got = minigpt.load(gemma_path, backend=backend, precision="exact").logits(IDS)
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * scale, err_msg=backend)
        fast = minigpt.load(gemma_path, backend=backend, precision="fast").logits(IDS)
        assert np.mean(fast.argmax(-1) == ref.argmax(-1)) > 0.9, backend


def test_the_window_matters(gemma_path, monkeypatch):
    # past the window, a local layer no longer sees the first keys: the logits change
    m = minigpt.load(gemma_path, backend="numpy")
    windowed = m.logits(IDS)
    cfg = m.config
    monkeypatch.setattr(m.engine, "cfg", type(cfg)(**(cfg.to_dict() | {"sliding_window": 0, "local_layers": []})))
    full = m.engine.prefill(IDS, all_logits=True, cache=KVCache(m.engine.cfg, len(IDS)))
    np.testing.assert_allclose(full[:WINDOW], windowed[:WINDOW], rtol=0, atol=1e-5)
    assert np.abs(full[WINDOW + 1:] - windowed[WINDOW + 1:]).max() > 1e-3


@pytest.mark.parametrize("backend", ["c", "numpy", "numba"])
def test_a_ring_gives_what_a_full_cache_gives(gemma_path, backend, monkeypatch):
    # local layers keep window + slack slots; a long prompt in chunks, then decoding, wraps them many times
    monkeypatch.setattr(engine, "RING_SLACK", 7)
    m = minigpt.load(gemma_path, backend=backend, precision="exact")
    ids = [int(i) for i in np.random.default_rng(0).integers(4, 250, 90)]
    ring = KVCache(m.config, 200)
    assert ring.ring == WINDOW + 7 and ring.chunk == 8
    assert [k.shape[1] for k in ring.k] == [11, 11, 11, 11, 11, 200, 11]
    full = KVCache(m.config, 200, slack=1000)
    assert full.ring == 200
    got = m.engine.prefill(ids[:60], all_logits=True, cache=ring)
    want = m.engine.prefill(ids[:60], all_logits=True, cache=full)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    for tok in ids[60:]:
        np.testing.assert_allclose(m.engine.decode_step(tok, ring), m.engine.decode_step(tok, full),
                                   rtol=0, atol=1e-4 * np.abs(want).max())


def test_truncate_keeps_what_the_ring_still_holds(gemma_path, monkeypatch):
    monkeypatch.setattr(engine, "RING_SLACK", 7)
    m = minigpt.load(gemma_path, backend="c", precision="exact")
    ids = [int(i) for i in np.random.default_rng(1).integers(4, 250, 40)]
    cache = KVCache(m.config, 100)                 # ring of 11: positions 29..39 are in it
    m.engine.prefill(ids, cache=cache)
    assert cache.truncate(37) == 37                # needs keys 34..36: still there
    assert cache.pos == 37
    again = m.engine.prefill(ids[37:40], cache=cache)
    want = m.engine.prefill(ids[:40], cache=KVCache(m.config, 100, slack=1000))
    np.testing.assert_allclose(again, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert cache.truncate(30) == 0                 # needs keys from 27: overwritten, so start afresh
    assert cache.pos == 0 and cache.truncate(0) == 0


def test_chat_with_a_ring_undoes_and_saves(gemma_path, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "RING_SLACK", 20)
    m = minigpt.load(gemma_path, backend="c")
    m.set_chat_template("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant:{% endif %}")
    chat = m.chat(max_tokens=12, seed=1, n_ctx=400, temperature=0)
    for text in ("hello there", "the quick brown fox", "jumps over the lazy dog"):
        "".join(chat.send(text))
    assert chat.cache.pos > chat.cache.ring          # the rings have wrapped
    first = chat.history[-1]["content"]
    assert "".join(chat.regenerate()) == first        # going back one reply: within the slack
    path = tmp_path / "c.mgchat"
    chat.save(path)
    again = minigpt.ChatSession.load(path, m)
    assert again.cache.ring == chat.cache.ring
    for a, b in zip(again.cache.k + again.cache.v, chat.cache.k + chat.cache.v):
        n = min(chat.cache.pos, a.shape[1])
        np.testing.assert_array_equal(a[:, :n], b[:, :n])
    assert "".join(again.send("one more")) == "".join(chat.send("one more"))
