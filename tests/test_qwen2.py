"""Qwen2 GGUFs: on tiny synthetic files, a qwen2 GGUF (q/k in halves order, with biases) converts into the
very model a llama GGUF of the same weights (pair order) is. Then the real Qwen2.5-Coder-0.5B-Instruct
against llama.cpp and transformers f32 (tests/fixtures/qwen2_tokens.json, qwen2_5_coder_0_5b_reference.*)."""

import json
from pathlib import Path

import numpy as np
import pytest

import minigpt
from fidelity import pieces_sha256, score, score_groups
from minigpt.convert import convert
from minigpt.convert.gguf import GGUFFile
from minigpt.errors import ConvertError
from minigpt.format import MgptFile
from minigpt.template import ChatTemplate
from minigpt.tokenizer import from_fields
from synthetic import tiny_llama, write_gguf

FIX = Path(__file__).parent / "fixtures"

# the reference's chunks by kind (tests/fixtures/fidelity_corpus*.json)
GROUPS = {"english": ("english_prose", "english_expository", "chat"),
          "chinese": ("chinese_prose", "chinese_qwen_essay", "chat_chatml_zh"),
          "code": ("python_code", "c_code", "javascript_code")}

IDS = [5, 40, 72, 101, 108, 108, 111, 262, 44, 3, 100, 200, 250, 45, 7, 9, 33, 60, 61, 62, 63, 64, 65]


def _pair(tmp_path, **kw):
    """The same tiny model written as a llama GGUF and as a qwen2 GGUF, both converted with defaults."""
    llama, qwen = tmp_path / "llama.gguf", tmp_path / "qwen2.gguf"
    tiny_llama(llama, qkv_bias=True, seed=3, metadata={"llama.rope.freq_base": 1e6}, **kw)
    tiny_llama(qwen, qkv_bias=True, seed=3, arch="qwen2", **kw)
    convert(llama, tmp_path / "llama.mgpt")
    summary = convert(qwen, tmp_path / "qwen2.mgpt")
    return tmp_path / "llama.mgpt", tmp_path / "qwen2.mgpt", summary


@pytest.mark.parametrize("wtype", ["F32", "Q8_0", "Q5_0"])
def test_a_qwen2_gguf_is_the_llama_gguf_of_the_same_weights(tmp_path, wtype):
    # every type here is stored natively: rows are carried bit for bit (permuted)
    a, b, summary = _pair(tmp_path, wtype=wtype, n_heads=4, n_kv_heads=2, tied=False)
    fa, fb = MgptFile(a), MgptFile(b)
    assert fb.config.arch == "llama" and fb.config.qkv_bias and fb.config.rope_theta == 1e6
    assert fb.config.to_dict() | {"name": ""} == fa.config.to_dict() | {"name": ""}
    assert fa.tensors.keys() == fb.tensors.keys()
    for name in fa.tensors:
        assert fa.tensors[name].qtype == fb.tensors[name].qtype, name
        assert np.array_equal(fa.tensor(name), fb.tensor(name)), name
    assert summary["requantized"] == [] and fb.tensors["layers.0.wq"].qtype == wtype.lower()
    for backend in ("numpy", "c"):
        la = minigpt.load(a, backend=backend).logits(IDS)
        lb = minigpt.load(b, backend=backend).logits(IDS)
        np.testing.assert_array_equal(la, lb, err_msg=backend)


def test_the_permutation_matters(tmp_path):
    # read as if it were a llama GGUF (pair order), a qwen2 file is another model
    qwen = tmp_path / "q.gguf"
    meta = tiny_llama(qwen, qkv_bias=True, seed=3, arch="qwen2")
    g = GGUFFile(qwen)
    as_llama = {k.replace("qwen2.", "llama.", 1) if k.startswith("qwen2.") else k: v for k, v in meta.items()}
    write_gguf(tmp_path / "l.gguf", dict(as_llama, **{"general.architecture": "llama"}),
               {t.name: (t.type_name, t.data, t.shape) for t in g.tensors.values()})
    convert(qwen, tmp_path / "q.mgpt")
    convert(tmp_path / "l.gguf", tmp_path / "l.mgpt")
    right = minigpt.load(tmp_path / "q.mgpt", backend="numpy").logits(IDS)
    wrong = minigpt.load(tmp_path / "l.mgpt", backend="numpy").logits(IDS)
    assert np.abs(right - wrong).max() > 1e-2


def test_qwen2_keys_llama_cpp_does_not_read_and_what_is_refused(tmp_path):
    # a window in a qwen2 GGUF is not used by llama.cpp: every layer sees the whole context
    tiny_llama(tmp_path / "w.gguf", qkv_bias=True, arch="qwen2", metadata={"qwen2.attention.sliding_window": 8})
    convert(tmp_path / "w.gguf", tmp_path / "w.mgpt")
    cfg = MgptFile(tmp_path / "w.mgpt").config
    assert cfg.sliding_window == 0 and cfg.local_layers == ()
    # YaRN (Qwen2.5's long-context setting) and a partial rotation are clear errors, nothing written
    for name, meta in {"yarn": {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0},
                       "partial": {"qwen2.rope.dimension_count": 8}}.items():
        tiny_llama(tmp_path / f"{name}.gguf", qkv_bias=True, arch="qwen2", metadata=meta)
        with pytest.raises(ConvertError, match="yarn" if name == "yarn" else "rope dims 8"):
            convert(tmp_path / f"{name}.gguf", tmp_path / f"{name}.mgpt")
        assert not (tmp_path / f"{name}.mgpt").exists()


# --- the real model: Qwen2.5-Coder-0.5B-Instruct (Q5_0 mostly), fetched once into the cache -----------------

@pytest.fixture(scope="module")
def qwen_tok(qwen2_gguf):
    from minigpt.convert.convert import tokenizer_fields
    g = GGUFFile(qwen2_gguf)
    return from_fields(tokenizer_fields(g)), g


def test_real_qwen2_tokenizer_gives_llama_cpp_ids(qwen_tok):
    """tests/fixtures/qwen2_tokens.json: llama.cpp's ids for English, Chinese, code, whitespace runs, emoji,
    ChatML and tool markup (tools/make_tokenizer_fixtures.py --model-name qwen2)."""
    tok, _ = qwen_tok
    ref = json.loads((FIX / "qwen2_tokens.json").read_text(encoding="utf-8"))
    assert len(ref["cases"]) >= 160
    for case in ref["cases"]:
        text = case["text"]
        assert tok.encode(text) == case["ids"], text
        assert tok.encode(text, special=True) == case["ids_special"], text
        assert tok.decode(case["ids"]) == case["detok"] == text           # every byte has a token
        assert tok.decode(case["ids_special"]) == case["detok_special"], text
    assert tok.n_vocab == ref["n_vocab"] == 151936
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (ref["bos_id"], ref["eos_id"], ref["add_bos"])
    assert sorted(tok.eog_ids) == ref["eog_ids"]      # <|im_end|>, <|endoftext|>, FIM pad/repo/sep, '</s>'
    assert pieces_sha256(tok) == ref["pieces_sha256"]


def test_real_qwen2_reads_as_llama_cpp_reads_it(qwen_tok):
    from minigpt.convert.convert import config_from_gguf
    tok, g = qwen_tok
    cfg = config_from_gguf(g)
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == ("llama", 24, 896, 14, 2, 64)
    assert cfg.qkv_bias and not cfg.tied_embeddings and cfg.rope_theta == 1e6 and cfg.norm_eps == pytest.approx(1e-6)
    assert cfg.local_layers == () and cfg.vocab_size == 151936
    # its ChatML template with the tools block renders without tools, with Qwen's default system prompt
    t = ChatTemplate.for_model(g.field("tokenizer.chat_template"), None, lambda s: True)
    assert t.render([{"role": "user", "content": "你好"}]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def qwen_ref():
    z = np.load(FIX / "qwen2_5_coder_0_5b_reference.npz")
    return z, json.loads((FIX / "qwen2_5_coder_0_5b_reference.json").read_text())


def test_real_qwen2_default_conversion_agrees_with_llama_cpp(qwen2_mgpt, qwen_ref):
    """The default conversion (every tensor at its own type) against llama.cpp on the same GGUF, teacher-forced
    over English, Chinese and code (tools/make_reference.py --model-name qwen2): measured 98.2 % top-1
    agreement over 1,988 positions, perplexity within 0.2 % (docs/fidelity.md)."""
    z, summary = qwen_ref
    m = minigpt.load(qwen2_mgpt)
    assert m.config.qkv_bias and m.config.arch == "llama"
    agree, ppl, kl, n = score(m, z, ref="llama")
    print(f"{m.kern.name} {m.engine.precision}: {n} positions, top-1 agreement with llama.cpp {agree:.4f}, "
          f"ppl {ppl:.4f} (llama.cpp {summary['ppl_llama']}), KL(llama.cpp || minigpt) {kl:.2e}")
    assert n >= 1900
    assert agree >= 0.97
    assert abs(ppl / summary["ppl_llama"] - 1) < 0.01
    assert kl < 0.002


def test_real_qwen2_default_conversion_is_as_faithful_to_transformers_as_llama_cpp(qwen2_mgpt, qwen_ref):
    """Against transformers f32 on the dequantized GGUF, per kind of text: the default conversion agrees on
    top-1 at least as often as llama.cpp does on each kind and over all 1,988 positions (measured 0.9925,
    0.9899, 0.9971 against 0.9799, 0.9818, 0.9943), and its perplexity is within 1.5 % of transformers'
    (docs/fidelity.md has the table)."""
    z, summary = qwen_ref
    groups = score_groups(minigpt.load(qwen2_mgpt), z, GROUPS)
    for name, g in groups.items():
        print(f"{name:8s} {g['positions']:5d} positions: top-1 agreement with transformers {g['agree']:.4f} "
              f"(llama.cpp {g['llama_agree']:.4f}), ppl {g['ppl']:.3f} (transformers {g['ppl_hf']:.3f}, "
              f"llama.cpp {g['ppl_llama']:.3f})")
    assert groups["all"]["positions"] >= 1900
    for g in groups.values():
        assert g["agree"] >= g["llama_agree"]
        assert abs(g["ppl"] / g["ppl_hf"] - 1) < 0.015


def test_real_qwen2_answers_in_chinese(qwen2_mgpt):
    m = minigpt.load(qwen2_mgpt)
    prompt = m.template.render([{"role": "user", "content": "北京是哪个国家的首都？"}])
    pieces = list(m.generate(prompt, max_tokens=24, temperature=0))
    text = "".join(pieces)
    assert "中华人民共和国" in text or "中国" in text, text
    assert all("\ufffd" not in p for p in pieces) and "<|im_end|>" not in text
