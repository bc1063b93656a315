"""The arena that holds the weights a decode step streams (minigpt/engine/arena.py): copies with the
same bytes, each on a cache line, chunks on huge-page boundaries; and what the compiled engine puts there."""

import mmap

import numpy as np
import pytest

import minigpt
from minigpt import kernels
from minigpt.convert import convert
from minigpt.engine import arena

from synthetic import tiny_llama


def test_keep_copies_each_array_aligned_across_chunks(monkeypatch):
    monkeypatch.setattr(arena, "CHUNK", 1 << 16)   # a few arrays per chunk, and one bigger than a chunk
    a, rng = arena.Arena(), np.random.default_rng(0)
    arrays = [rng.integers(0, 255, n, dtype=np.uint8) for n in (1000, 30000, 7, 40000, 200000, 3)]
    arrays += [rng.standard_normal((17, 5)).astype(np.float32), np.arange(12, dtype=np.float16).reshape(3, 4)]
    kept = [a.keep(x) for x in arrays]
    for x, k in zip(arrays, kept):
        assert k.dtype == x.dtype and k.shape == x.shape and np.array_equal(k, x)
        assert k.ctypes.data % arena.ALIGN == 0 and not np.may_share_memory(k, x)
    spans = sorted((k.ctypes.data, k.ctypes.data + k.nbytes) for k in kept)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))   # no two overlap



def test_keep_reports_each_step_it_copied(monkeypatch):
    """copied() after each STEP bytes: a caller gives its source's pages back as the copy goes."""
    monkeypatch.setattr(arena, "STEP", 4096)
    x, calls = np.arange(10000, dtype=np.float32), []
    k = arena.Arena().keep(x, copied=lambda: calls.append(1))
    assert np.array_equal(k, x) and len(calls) == -(-x.nbytes // 4096)   # 40,000 bytes: 10 steps

@pytest.mark.skipif(not hasattr(mmap, "MAP_PRIVATE"), reason="private anonymous mappings (POSIX)")
def test_chunks_start_on_a_huge_page():
    for n in (1, arena.HUGE - 1, 3 * arena.HUGE + 5):
        c = arena._chunk(n)
        assert len(c) == n and c.ctypes.data % arena.HUGE == 0
        c[:] = 1   # writable, private


@pytest.mark.skipif("c" not in kernels.available_backends(), reason="the compiled backend")
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("precision", ["balanced", "fast"])
def test_the_compiled_engine_streams_copies_with_the_files_bytes(tmp_path, tied, precision):
    tiny_llama(tmp_path / "m.gguf", dim=256, hidden=1024, n_heads=4, n_kv_heads=2, wtype="Q8_0", tied=tied)
    convert(tmp_path / "m.gguf", tmp_path / "m.mgpt")
    c = minigpt.load(str(tmp_path / "m.mgpt"), backend="c", precision=precision, kv_type="f32")
    ref = minigpt.load(str(tmp_path / "m.mgpt"), backend="numpy", precision=precision, kv_type="f32")
    stored = {n: w.data for n, w in c.weights.items()}
    for name, w in c.engine.weights.items():
        if w.data.nbytes >= 4096 and (name == "output" or w.qtype.endswith("x8")):   # the head, the packed
            assert not any(np.may_share_memory(w.data, s) for s in stored.values()), name
    head = c.engine.weights["output"]
    if not head.qtype.endswith("x8"):   # the head read as stored: a copy of the file's bytes
        assert np.array_equal(head.data, stored["tok_embd" if tied else "output"])
        assert (c.engine.weights["tok_embd"].data is head.data) == tied
    ids = [5, 60, 7, 200, 31]
    assert np.array_equal(c.logits(ids), c.logits(ids))
    np.testing.assert_allclose(c.logits(ids), ref.logits(ids), rtol=0, atol=2e-3)
