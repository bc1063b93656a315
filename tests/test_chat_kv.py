"""A chat session's KV cache type (ChatSession(kv_type=)), and saved chats (.mgchat) in that type:
round trips, conversion between types, version-1 files, damage. Tiny synthetic models.

Tests that run the model are parametrized over KV_TYPES and skip a type the decoder cannot bind yet;
those that only move cache bytes run for every type."""

import json
import struct

import numpy as np
import pytest

import minigpt
from minigpt import chatfile
from minigpt.chat import ChatSession
from minigpt.convert import convert
from minigpt.engine import KV_TYPES, kv_decode, kv_encode
from minigpt.errors import ArgumentError, FormatError

from synthetic import mgchat_with_header, tiny_llama

SETTINGS = dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_kv")
    tiny_llama(d / "hd32.gguf", wtype="Q8_0", ctx=256, n_heads=2, n_kv_heads=1)     # head_dim 32: q8_0 fits
    tiny_llama(d / "hd16.gguf", wtype="Q8_0", ctx=256)                              # head_dim 16: it does not
    for name in ("hd32", "hd16"):
        convert(d / f"{name}.gguf", d / f"{name}.mgpt")
    return {"hd32": d / "hd32.mgpt", "hd16": d / "hd16.mgpt"}


@pytest.fixture(scope="module")
def model(paths):
    return minigpt.load(str(paths["hd32"]), kv_type="f32")


_runs = {}


def runnable(model, kv_type):
    """Skip unless the decoder runs on a cache of kv_type (f16 and q8_0 arrive with the C decoder's support)."""
    if kv_type not in _runs:
        try:
            model.engine.prefill([1], cache=model.new_cache(4, kv_type=kv_type))
            _runs[kv_type] = None
        except ValueError as e:
            _runs[kv_type] = str(e)
    if _runs[kv_type] is not None:
        pytest.skip(f"the decoder cannot run on a {kv_type} cache yet ({_runs[kv_type]})")


def reply(chat, text):
    return "".join(chat.send(text))


def fill(chat, n, seed=0):
    """Put n positions of random keys and values, stored as the session's cache stores them, in its cache
    (what a forward pass would leave there, without running one)."""
    rng = np.random.default_rng(seed)
    cache = chat.cache
    for store in (cache.k, cache.v):
        for layer in store:
            m = min(n, layer.shape[1])
            layer[:, :m] = kv_encode(rng.standard_normal(layer.shape[:2] + (cache.head_dim,), np.float32)[:, :m],
                                     cache.kv_type)
    cache.tokens[:] = [3 + i % 50 for i in range(n)]


def stored(chat):
    return [layer[:, :chat.n_past].copy() for store in (chat.cache.k, chat.cache.v) for layer in store]


# --- the session's cache type

def test_a_session_takes_the_models_kv_type_or_its_own(model):
    assert model.chat().kv_type == model.kv_type == "f32"
    for t in KV_TYPES:
        chat = model.chat(kv_type=t)
        assert chat.kv_type == t and chat.cache.kv_type == t
        assert chat.cache.k[0].dtype == {"f32": np.float32, "f16": np.float16, "q8_0": np.uint8}[t]
    assert model.chat(kv_type="q8_0").cache.k[0].shape[-1] == 32 + 4   # int8 q[32], then one float32 scale
    for bad in ("f8", 16, "F16"):
        with pytest.raises(ArgumentError, match=r"^kv_type must be one of f32, f16, q8_0, got ") as e:
            model.chat(kv_type=bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_a_chat_goes_on_after_save_and_load_in_its_kv_type(model, kv_type, tmp_path):
    runnable(model, kv_type)
    chat = model.chat(system="sys", max_tokens=6, seed=5, kv_type=kv_type, **SETTINGS)
    reply(chat, "hello")
    chat.save(tmp_path / "c.mgchat")
    expected = reply(chat, "again")
    loaded = ChatSession.load(tmp_path / "c.mgchat", model, kv_type=kv_type)
    assert loaded.kv_type == kv_type
    assert reply(loaded, "again") == expected
    assert loaded.last.prompt_tokens == chat.last.prompt_tokens   # nothing re-prefilled


# --- saved chats: bytes as stored, conversion

@pytest.mark.parametrize("saved", KV_TYPES)
def test_a_saved_cache_is_its_stored_bytes(model, saved, tmp_path):
    chat = model.chat(max_tokens=4, seed=1, kv_type=saved)
    fill(chat, 37)
    path = tmp_path / "c.mgchat"
    chat.save(path)
    h, offset = chatfile.read_header(path)
    assert h["kv_type"] == saved and path.read_bytes()[8:12] == struct.pack("<I", chatfile.VERSION)
    body = b"".join(np.ascontiguousarray(b).tobytes() for b in stored(chat))
    assert path.read_bytes()[offset:] == body        # f16: half of f32's bytes; q8_0: 36 per 32 values
    cfg = model.config
    per_value = {"f32": 4, "f16": 2, "q8_0": 36 / 32}[saved]
    assert len(body) == 2 * cfg.n_layers * cfg.n_kv_heads * 37 * cfg.head_dim * per_value


@pytest.mark.parametrize("saved", KV_TYPES)
@pytest.mark.parametrize("loaded", KV_TYPES)
def test_a_saved_cache_loads_into_a_session_of_any_kv_type(model, saved, loaded, tmp_path):
    chat = model.chat(max_tokens=4, seed=1, kv_type=saved)
    fill(chat, 37, seed=2)
    chat.save(tmp_path / "c.mgchat")
    other = ChatSession.load(tmp_path / "c.mgchat", model, kv_type=loaded)
    assert other.kv_type == loaded and other.n_past == 37 and other.cache.tokens == chat.cache.tokens
    hd = model.config.head_dim
    for was, now in zip(stored(chat), stored(other)):
        want = was if saved == loaded else kv_encode(kv_decode(was, saved, hd), loaded)
        assert now.dtype == want.dtype and np.array_equal(now, want)
    assert ChatSession.load(tmp_path / "c.mgchat", model).kv_type == model.kv_type   # None: the model's


def v1_file(src, dest):
    """The version-1 layout of the f32 chat saved at `src`: the same float32 body, a header without kv_type."""
    h, offset = chatfile.read_header(src)
    assert h.pop("kv_type") == "f32"
    raw = json.dumps(h).encode()
    head = struct.pack("<8sII", chatfile.MAGIC, 1, len(raw)) + raw
    dest.write_bytes(head + bytes(-len(head) % 64) + src.read_bytes()[offset:])
    return dest


def test_a_version_1_file_still_loads(model, tmp_path):
    chat = model.chat(system="sys", max_tokens=6, seed=5, kv_type="f32", **SETTINGS)
    reply(chat, "hello")
    chat.save(tmp_path / "v2.mgchat")
    before = stored(chat)
    old = v1_file(tmp_path / "v2.mgchat", tmp_path / "v1.mgchat")
    assert old.read_bytes()[8:12] == struct.pack("<I", 1)
    assert chatfile.read_header(old)[0]["kv_type"] == "f32"
    for t in KV_TYPES:   # float32 rows, converted for an f16 or q8_0 session
        loaded = ChatSession.load(old, model, kv_type=t)
        for was, now in zip(before, stored(loaded)):
            assert np.array_equal(now, kv_encode(was, t))
    expected = reply(chat, "again")
    assert reply(ChatSession.load(old, model), "again") == expected
    # a version-1 header cannot claim another type: its rows are float32 whatever it says
    h, offset = chatfile.read_header(old)
    raw = json.dumps({**h, "kv_type": "f16"}).encode()
    head = struct.pack("<8sII", chatfile.MAGIC, 1, len(raw)) + raw
    claims = tmp_path / "claims.mgchat"
    claims.write_bytes(head + bytes(-len(head) % 64) + old.read_bytes()[offset:])
    assert chatfile.read_header(claims)[0]["kv_type"] == "f32"
    assert all(np.array_equal(a, b) for a, b in zip(stored(ChatSession.load(claims, model)), before))


@pytest.mark.parametrize("saved", KV_TYPES)
def test_a_damaged_file_is_refused(model, paths, saved, tmp_path):
    chat = model.chat(max_tokens=4, seed=1, kv_type=saved)
    fill(chat, 20, seed=3)
    path = tmp_path / "c.mgchat"
    chat.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.mgchat"
    for i in (len(data) - 1, len(data) // 2 + 31):   # a byte of V; one of K (or a q8_0 scale)
        flipped = bytearray(data)
        flipped[i] ^= 4
        bad.write_bytes(bytes(flipped))
        for t in KV_TYPES:
            with pytest.raises(FormatError, match="damaged"):
                ChatSession.load(bad, model, kv_type=t)
    bad.write_bytes(data[:-10])
    with pytest.raises(FormatError, match="truncated"):
        ChatSession.load(bad, model)
    for claim in ("f8", None, ["f16"]):
        mgchat_with_header(path, bad, lambda h: h.update(kv_type=claim))
        with pytest.raises(FormatError, match="corrupt header"):
            ChatSession.load(bad, model)
    other = [t for t in KV_TYPES if t != saved][0]   # the header says another type: the size or checksum tells
    mgchat_with_header(path, bad, lambda h: h.update(kv_type=other))
    with pytest.raises(FormatError, match="truncated|damaged"):
        ChatSession.load(bad, model)


def test_a_q8_0_chat_on_a_model_whose_heads_cannot_hold_it_is_refused(paths, tmp_path):
    m = minigpt.load(str(paths["hd16"]), kv_type="f32")
    chat = m.chat(max_tokens=2, seed=1)
    chat.save(tmp_path / "c.mgchat")
    bad = mgchat_with_header(tmp_path / "c.mgchat", tmp_path / "q8.mgchat", lambda h: h.update(kv_type="q8_0"))
    with pytest.raises(FormatError, match="q8_0 cache needs head_dim a multiple of 32, got 16"):
        ChatSession.load(bad, m)
