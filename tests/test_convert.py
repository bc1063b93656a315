import hashlib

import numpy as np
import pytest

import minigpt
from minigpt import quant
from minigpt.convert import convert
from minigpt.convert.gguf import GGUFFile
from minigpt.errors import ConvertError, FormatError, MinigptError, TokenizerError
from minigpt.format import MgptFile

from synthetic import random_blocks, tiny_bpe_fields, tiny_llama, tiny_spm_fields, write_gguf


@pytest.fixture
def tiny_q41(tmp_path):
    p = tmp_path / "tiny-q4_1.gguf"
    tiny_llama(p, wtype="Q4_1")
    return p


def test_gguf_reader(tiny_q41):
    g = GGUFFile(tiny_q41)
    assert g.metadata["general.architecture"] == "llama"
    t = g.tensors["blk.0.attn_q.weight"]
    assert t.type_name == "Q4_1" and t.shape == (64, 64) and t.data.shape == (64, 2 * 20)
    assert g.tensors["output_norm.weight"].shape == (64,)


def test_same_type_is_bit_exact_and_source_untouched(tiny_q41, tmp_path):
    before = hashlib.sha256(tiny_q41.read_bytes()).hexdigest()
    out = tmp_path / "o.mgpt"
    s = convert(tiny_q41, out)          # default: the dominant type, q4_1
    assert hashlib.sha256(tiny_q41.read_bytes()).hexdigest() == before
    g, f = GGUFFile(tiny_q41), MgptFile(out)
    assert np.array_equal(f.tensor("layers.1.w_down"), g.tensors["blk.1.ffn_down.weight"].data)
    assert f.tensors["layers.0.wq"].qtype == "q4_1"
    assert f.tensors["tok_embd"].qtype == "q4_1"   # a 4-bit source head stays as it is
    assert s["requantized"] == [] and s["n_params"] > 0
    f.verify()


def test_requantize_and_head_policy(tmp_path):
    src = tmp_path / "f32.gguf"
    tiny_llama(src, wtype="F32")
    out = tmp_path / "o.mgpt"
    s = convert(src, out, "q4_0")
    f, g = MgptFile(out), GGUFFile(src)
    x = g.tensors["blk.0.ffn_up.weight"].data.view(np.float32).reshape(96, 64)
    assert np.array_equal(f.tensor("layers.0.w_up"), quant.quantize(x, "q4_0"))
    assert f.tensors["tok_embd"].qtype == "q8_0"     # tied output head kept at 8 bits
    assert f.tensors["layers.0.attn_norm"].qtype == "f32"
    assert "layers.0.w_up" in s["requantized"]


@pytest.mark.parametrize("wtype", ["Q5_0", "Q5_1"])
def test_q5_sources_are_stored_natively(tmp_path, wtype):
    # no --quant: Q5 weights keep their type, copied byte for byte, and the file runs
    src, out = tmp_path / "s.gguf", tmp_path / "o.mgpt"
    tiny_llama(src, wtype=wtype)
    s = convert(src, out)
    g, f = GGUFFile(src), MgptFile(out)
    assert s["quant"] == wtype.lower() and s["requantized"] == []
    assert np.array_equal(f.tensor("tok_embd"), g.tensors["token_embd.weight"].data)   # the tied head too
    assert np.array_equal(f.tensor("layers.1.w_down"), g.tensors["blk.1.ffn_down.weight"].data)
    assert {i.qtype for i in f.tensors.values()} == {"f32", wtype.lower()}
    f.verify()
    logits = minigpt.load(out, backend="numpy").logits([1, 5, 9])
    assert np.isfinite(logits).all()


def test_mixed_source_keeps_each_native_type(tmp_path):
    # Q5_0 with Q4_K, Q6_K and Q8_0 tensors, as llama.cpp's Q4_K_M files mix them, and a Q5_K one: with no
    # --quant, Q5_0, Q4_K, Q6_K and Q8_0 are copied byte for byte; only Q5_K (not stored) is decoded and
    # requantized, to q6_k (its GGUF_TYPES row)
    base, src, out = tmp_path / "b.gguf", tmp_path / "s.gguf", tmp_path / "o.mgpt"
    tiny_llama(base, dim=256, n_heads=4, n_kv_heads=2, hidden=256, n_layers=1, wtype="Q5_0")
    g = GGUFFile(base)
    rng = np.random.default_rng(3)
    tensors = {name: (t.type_name, np.array(t.data), t.shape) for name, t in g.tensors.items()}
    tensors["blk.0.ffn_up.weight"] = ("Q5_K", random_blocks(rng, "Q5_K", 256, scale=0.01).reshape(256, -1), (256, 256))
    x = rng.standard_normal((256, 256)).astype(np.float32) / 16
    tensors["blk.0.ffn_gate.weight"] = ("Q8_0", quant.quantize(x, "q8_0"), (256, 256))
    tensors["blk.0.ffn_down.weight"] = ("Q4_K", random_blocks(rng, "Q4_K", 256, scale=0.01).reshape(256, -1), (256, 256))
    tensors["blk.0.attn_v.weight"] = ("Q6_K", random_blocks(rng, "Q6_K", 128, scale=0.01).reshape(128, -1),
                                      g.tensors["blk.0.attn_v.weight"].shape)
    write_gguf(src, g.metadata, tensors)
    s = convert(src, out)
    f = MgptFile(out)
    assert s["quant"] == "q5_0"
    assert s["requantized"] == ["layers.0.w_up"] and s["requantized_types"] == {"q5_k -> q6_k": 1}
    assert f.tensors["layers.0.w_up"].qtype == "q6_k"
    from minigpt.convert.convert import decode_tensor
    want = quant.quantize(decode_tensor(GGUFFile(src).tensors["blk.0.ffn_up.weight"]), "q6_k")
    assert np.array_equal(f.tensor("layers.0.w_up"), want)
    for gname, name, qtype in [("blk.0.ffn_gate.weight", "layers.0.w_gate", "q8_0"),
                               ("blk.0.ffn_down.weight", "layers.0.w_down", "q4_k"),
                               ("blk.0.attn_v.weight", "layers.0.wv", "q6_k")]:
        assert f.tensors[name].qtype == qtype
        assert np.array_equal(f.tensor(name), tensors[gname][1])
    assert f.tensors["layers.0.wq"].qtype == "q5_0"
    assert np.array_equal(f.tensor("layers.0.wq"), tensors["blk.0.attn_q.weight"][1])
    assert np.array_equal(f.tensor("tok_embd"), tensors["token_embd.weight"][1])


def test_policy_table():
    from minigpt.convert.convert import GGUF_TYPES, NATIVE
    natives = {k: q for k, (q, native) in GGUF_TYPES.items() if native is NATIVE}
    assert natives == {"F32": "f32", "F16": "f16", "Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1",
                       "Q5_0": "q5_0", "Q5_1": "q5_1", "Q4_K": "q4_k", "Q6_K": "q6_k"}
    assert all(q in quant.QTYPES for q, _ in GGUF_TYPES.values())
    # the K-quants minigpt does not store go to the smallest stored K-quant with at least their bits
    assert {k: GGUF_TYPES[k][0] for k in ("Q2_K", "Q3_K", "Q5_K")} == {"Q2_K": "q4_k", "Q3_K": "q4_k", "Q5_K": "q6_k"}


@pytest.mark.parametrize("target", ["q5_0", "q5_1"])
def test_quant_q5(tmp_path, target):
    src, out = tmp_path / "f32.gguf", tmp_path / "o.mgpt"
    tiny_llama(src, wtype="F32")
    s = convert(src, out, target)
    f, g = MgptFile(out), GGUFFile(src)
    x = g.tensors["blk.0.ffn_up.weight"].data.view(np.float32).reshape(96, 64)
    assert np.array_equal(f.tensor("layers.0.w_up"), quant.quantize(x, target))
    assert f.tensors["tok_embd"].qtype == target      # 5 bits: the head is not lifted to q8_0
    assert s["quant"] == target and "layers.0.w_up" in s["requantized"]


@pytest.mark.parametrize("wtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q5_1"])
def test_decodes_source_types(tmp_path, wtype):
    src = tmp_path / "s.gguf"
    tiny_llama(src, wtype=wtype)
    convert(src, tmp_path / "o.mgpt", "f32")
    f = MgptFile(tmp_path / "o.mgpt")
    g = GGUFFile(src)
    from minigpt.convert.convert import decode_tensor
    assert np.array_equal(f.tensor("layers.0.wk"), decode_tensor(g.tensors["blk.0.attn_k.weight"]))


def bad_inputs(tmp_path, good):
    data = good.read_bytes()
    cases = {"empty": b"", "random": np.random.default_rng(0).bytes(5000), "truncated": data[:len(data) // 2],
             "header-only": data[:200], "absurd-counts": b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") * 2}
    for name, raw in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(raw)
        yield name, p


def test_malformed_gguf_is_a_clear_error_and_leaves_nothing(tiny_q41, tmp_path):
    for name, p in bad_inputs(tmp_path, tiny_q41):
        out = tmp_path / f"{name}.mgpt"
        with pytest.raises(FormatError):
            convert(p, out)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_unsupported_inputs(tmp_path, tiny_q41):
    with pytest.raises(ConvertError, match="quant"):
        convert(tiny_q41, tmp_path / "o.mgpt", "q3_x")
    with pytest.raises(ConvertError, match="no such file"):
        convert(tmp_path / "nope.gguf", tmp_path / "o.mgpt")
    meta = tiny_llama(tmp_path / "t.gguf")
    g = GGUFFile(tmp_path / "t.gguf")
    tensors = {t.name: (t.type_name, t.data, t.shape) for t in g.tensors.values()}
    for key, value, err in [("general.architecture", "mamba", ConvertError),
                            ("tokenizer.ggml.pre", "klingon", TokenizerError)]:
        m = dict(meta, **{key: value})
        p = tmp_path / f"{value}.gguf"
        write_gguf(p, m, tensors)
        with pytest.raises(err, match=value):
            convert(p, tmp_path / "o.mgpt")
        assert not (tmp_path / "o.mgpt").exists()
    del tensors["blk.1.ffn_up.weight"]
    write_gguf(tmp_path / "missing.gguf", meta, tensors)
    with pytest.raises(ConvertError, match="missing"):
        convert(tmp_path / "missing.gguf", tmp_path / "o.mgpt")
    assert issubclass(ConvertError, MinigptError)


def test_non_finite_weights_and_long_names_are_one_clear_error(tmp_path):
    # a NaN that a block type cannot hold names its tensor (it was a ValueError escaping as a bug);
    # a 100 KB tensor name is cut in the message, not the message after it (issue #12)
    src = tmp_path / "nan.gguf"
    tiny_llama(src, wtype="F32")
    with open(src, "r+b") as f:
        f.seek(GGUFFile(src).tensors["blk.0.attn_q.weight"].offset + 20)
        f.write(np.float32("nan").tobytes())
    for q in ("q4_0", "q4_1", "q8_0"):
        with pytest.raises(ConvertError, match=f"tensor layers.0.wq: cannot quantize non-finite value nan to {q}"):
            convert(src, tmp_path / "o.mgpt", q)
        assert not (tmp_path / "o.mgpt").exists()
    meta = tiny_llama(tmp_path / "t.gguf")
    write_gguf(tmp_path / "long.gguf", meta, {"n" * 100_000: ("F32", np.zeros(32, np.float32), (32,))})
    with pytest.raises(ConvertError, match="for architecture llama$") as e:
        convert(tmp_path / "long.gguf", tmp_path / "o.mgpt")
    assert len(str(e.value)) < 400
def test_hostile_gguf_metadata_is_bounded(tmp_path, monkeypatch):
    # long values are clipped in errors, metadata arrays are bounded in all, a tensor's size does not
    # wrap around in int64 (found by tests/test_fuzz.py, or next to what it found)
    from minigpt.convert import gguf
    meta = tiny_llama(tmp_path / "t.gguf")
    g = GGUFFile(tmp_path / "t.gguf")
    tensors = {t.name: (t.type_name, t.data, t.shape) for t in g.tensors.values()}
    cases = {"align": (dict(meta, **{"general.alignment": "x" * 100_000}), tensors),
             "name": (meta, {**tensors, "y" * 100_000: ("F32", np.zeros(1, np.float32), (1, 1, 1, 1, 1))}),
             "wrap": (meta, {**tensors, "z": ("F32", np.zeros(32, np.float32), (2**40, 2**40, 2**40, 32))})}
    for name, (m, t) in cases.items():
        write_gguf(tmp_path / f"{name}.gguf", m, t)
        with pytest.raises(FormatError) as e:
            GGUFFile(tmp_path / f"{name}.gguf")
        assert len(str(e.value)) < 400, name
    monkeypatch.setattr(gguf, "MAX_ARRAY_ITEMS", 500)   # the tiny vocabulary's arrays hold 539 in all
    with pytest.raises(FormatError, match="metadata arrays of more than 500"):
        GGUFFile(tmp_path / "t.gguf")


def test_a_template_that_is_not_text_is_refused_before_writing(tmp_path):
    # found by tests/test_fuzz.py: convert wrote a file whose header load then refused
    meta = tiny_llama(tmp_path / "t.gguf")
    g = GGUFFile(tmp_path / "t.gguf")
    tensors = {t.name: (t.type_name, t.data, t.shape) for t in g.tensors.values()}
    write_gguf(tmp_path / "bad.gguf", dict(meta, **{"tokenizer.chat_template": 33}), tensors)
    with pytest.raises(FormatError, match="chat template must be a string"):
        convert(tmp_path / "bad.gguf", tmp_path / "out.mgpt")
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".gguf"]


def test_a_llama3_style_gguf_converts(tmp_path):
    # Llama 3.x GGUFs are arch "llama": the llama-bpe pre-tokenizer, a BOS the tokenizer adds, <|eot_id|>
    # ending a turn, rope_freqs (its RoPE scaling), an untied head; no file carries a template here,
    # so the built-in Llama 3 one is picked by the vocabulary's <|start_header_id|>
    fields = tiny_bpe_fields(pre="llama-bpe", add_bos_token=True, bos_token_id=0, eos_token_id=1)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    fields["tokens"] = specials + fields["tokens"][3:]
    fields["token_type"] = [3] * len(specials) + fields["token_type"][3:]
    src = tmp_path / "llama3.gguf"
    tiny_llama(src, tokenizer=fields, rope_freqs=True, tied=False, chat_template=None, wtype="Q8_0")
    assert convert(src, tmp_path / "l3.mgpt")["requantized"] == []
    m = minigpt.load(tmp_path / "l3.mgpt", backend="numpy")
    assert m.config.arch == "llama" and not m.config.tied_embeddings
    assert np.array_equal(MgptFile(tmp_path / "l3.mgpt").tensor("rope_freqs"),
                          GGUFFile(src).tensors["rope_freqs.weight"].data.view(np.float32).ravel())
    tok = m.tokenizer
    assert tok.add_bos and tok.encode("IT'S 1234567", add_bos=True)[0] == 0
    assert tok.decode(tok.encode("IT'S 1234567 a\n\n  b")) == "IT'S 1234567 a\n\n  b"
    assert {1, 2} <= tok.eog_ids
    assert m.template.name == "llama3"
    assert m.template.render([{"role": "user", "content": "hi"}]).startswith("<|begin_of_text|><|start_header_id|>user")
    assert np.isfinite(m.logits(tok.encode("the cat", add_bos=True))).all()


MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
                    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}")


def test_a_mistral_style_gguf_converts(tmp_path):
    # Mistral 7B GGUFs are arch "llama" too: a SentencePiece vocabulary with a BOS, grouped-query attention
    # (4 query heads per KV head), RoPE base 1e6 (v0.2+), an untied head, and an [INST] template of its own
    src = tmp_path / "mistral.gguf"
    tiny_llama(src, tokenizer=tiny_spm_fields(), n_heads=8, n_kv_heads=2, tied=False, wtype="Q4_0",
               chat_template=MISTRAL_TEMPLATE, metadata={"llama.rope.freq_base": 1e6})
    assert convert(src, tmp_path / "m.mgpt")["requantized"] == []
    m = minigpt.load(tmp_path / "m.mgpt", backend="numpy")
    c = m.config
    assert (c.arch, c.n_heads, c.n_kv_heads, c.rope_theta, c.tied_embeddings) == ("llama", 8, 2, 1e6, False)
    tok = m.tokenizer
    assert tok.add_bos and tok.encode("hello", add_bos=True) == [1, tok.encode("hello")[0]]
    assert m.template.render([{"role": "user", "content": "hello"}]) == "<s>[INST] hello [/INST]"
    ids = tok.encode("[INST] hello", add_bos=True)
    assert np.isfinite(m.logits(ids)).all()
    assert np.allclose(m.logits(ids), minigpt.load(tmp_path / "m.mgpt").logits(ids), atol=2e-2)
