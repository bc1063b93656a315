"""Chunked perplexity (minigpt.perplexity, `minigpt perplexity`): against a direct NumPy computation on a
tiny synthetic model, its errors, and on SmolLM2 against llama.cpp's number for the same text."""

import math
import re

import numpy as np
import pytest

from minigpt import perplexity as P
from minigpt.api import Model
from minigpt.check import TEXT_PATH
from minigpt.convert import convert
from minigpt.errors import MinigptError

from subproc import run_minigpt
from synthetic import tiny_llama
from test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppl")
    tiny_llama(d / "tiny.gguf", wtype="F32")
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


def direct(model, ids, n_ctx, bos=None):
    """llama.cpp's procedure written out plainly: whole chunks, full logits, second half scored."""
    nll = []
    for i in range(len(ids) // n_ctx):
        chunk = list(ids[i * n_ctx:(i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        logits = model.logits(chunk).astype(np.float64)                       # [n_ctx, vocab]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        first = n_ctx // 2
        nll += [-logp[j, chunk[j + 1]] for j in range(first, n_ctx - 1)]
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    return ppl, ppl * math.sqrt(nll.var() / (len(nll) - 1)), len(nll)


@pytest.mark.parametrize("add_bos", [False, True])
def test_matches_direct_computation(tiny, add_bos):
    m = Model(tiny, backend="numpy")
    m.tokenizer.add_bos = add_bos          # the tiny vocabulary adds no BOS; pretend it does
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, 100).tolist()
    seen = []
    r = P.perplexity_of_ids(m, ids, n_ctx=24, on_chunk=lambda *a: seen.append(a))
    ppl, err, count = direct(m, ids, 24, bos=1 if add_bos else None)
    assert r.n_chunks == 4 and r.count == count == 4 * 11 and r.n_tokens == 100
    assert r.ppl == pytest.approx(ppl, rel=1e-5) and r.err == pytest.approx(err, rel=1e-4)
    assert [s[:2] for s in seen] == [(i, 4) for i in range(1, 5)] and r.running[-1] == r.ppl
    assert [s[2] for s in seen] == r.running
    # one chunk only, and no chunk limit beyond the text
    assert P.perplexity_of_ids(m, ids, n_ctx=24, max_chunks=1).running == r.running[:1]
    assert P.perplexity_of_ids(m, ids, n_ctx=24, max_chunks=99).ppl == r.ppl


def test_logits_in_blocks_equal_one_pass(tiny, monkeypatch):
    m = Model(tiny, backend="numpy")
    ids = np.random.default_rng(1).integers(3, m.config.vocab_size, 64).tolist()
    whole = P.perplexity_of_ids(m, ids, n_ctx=64)
    monkeypatch.setattr(P, "BLOCK_FLOATS", 1)      # 8 positions per block
    assert len(list(P.logit_blocks(m, ids, start=20))) == 6
    assert math.log(P.perplexity_of_ids(m, ids, n_ctx=64).ppl) == pytest.approx(math.log(whole.ppl), rel=1e-6)


def test_chunks():
    ids = list(range(10, 21))                  # 11 tokens
    assert P.chunks(ids, 4) == [[10, 11, 12, 13], [14, 15, 16, 17]]
    assert P.chunks(ids, 4, bos_id=1) == [[1, 11, 12, 13], [1, 15, 16, 17]]
    assert P.chunks(ids, 4, max_chunks=1) == [[10, 11, 12, 13]]
    assert P.chunks(ids, 12) == []


def test_text_is_tokenized_like_llama_cpp(tiny):
    m = Model(tiny, backend="numpy")
    text = "the <|im_start|> " * 30                # control-token text stays text
    ids = m.tokenize(text, add_bos=False, special=False)
    assert 1 not in ids
    assert P.perplexity(m, text, n_ctx=32).ppl == P.perplexity_of_ids(m, ids, n_ctx=32).ppl


def test_errors(tiny, tmp_path):
    m = Model(tiny, backend="numpy")
    ids = list(range(3, 40))
    with pytest.raises(MinigptError, match="37 tokens long, too short for one chunk of 64"):
        P.perplexity_of_ids(m, ids, n_ctx=64)
    with pytest.raises(MinigptError, match="too small"):
        P.perplexity_of_ids(m, ids, n_ctx=2)
    with pytest.raises(MinigptError, match="more than the model's context"):
        P.perplexity_of_ids(m, ids * 10, n_ctx=256)
    with pytest.raises(MinigptError, match="no such file"):
        P.read_text(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_bytes(b"abc\xff")
    with pytest.raises(MinigptError, match="not UTF-8"):
        P.read_text(tmp_path / "bad.txt")


def test_cli(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat, and then the hen ran in. " * 12, encoding="utf-8")
    r = run_minigpt("perplexity", "-m", tiny, "-f", text, "--ctx", "32", "--chunks", "3", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"Final estimate: PPL = \d+\.\d{4} \+/- \d+\.\d{5}\n", r.stdout), r.stdout
    assert re.search(r"\[1\][\d.]+,\[2\][\d.]+,\[3\][\d.]+,", r.stderr) and "3 chunks of 32" in r.stderr
    ppl = Model(tiny, backend="numpy")
    expect = P.perplexity(ppl, text.read_text(), n_ctx=32, max_chunks=3)
    assert r.stdout == f"Final estimate: PPL = {expect.ppl:.4f} +/- {expect.err:.5f}\n"

    (tmp_path / "short.txt").write_text("the cat", encoding="utf-8")
    for args, words in [(["-f", tmp_path / "missing.txt"], "no such file"),
                        (["-f", text, "--ctx", "100000"], "100000"),
                        (["-f", tmp_path / "short.txt"], "too short for one chunk of 128"),   # the model's context
                        (["-f", tmp_path], "is a directory")]:
        assert words in assert_one_line_error(run_minigpt("perplexity", "-m", tiny, *args))


# --- the real model

# tools/llama_perplexity.py -m SmolLM2-135M-Instruct.Q4_1.gguf -f minigpt/data/check_text.txt --ctx 128
# (llama-cpp-python 0.3.36): 1,196 tokens, 9 chunks, PPL = 13.9432 +/- 1.36823
LLAMA_CPP_SMOLLM2_CHECK_TEXT_128 = 13.9432


def test_smollm2_agrees_with_llama_cpp(smollm2_mgpt):
    r = run_minigpt("perplexity", "-m", smollm2_mgpt, "-f", TEXT_PATH, "--ctx", "128", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "1,196 tokens, 9 chunks of 128" in r.stderr
    ppl = float(re.search(r"PPL = ([\d.]+) \+/- ", r.stdout).group(1))
    print(f"\nperplexity on the built-in text, ctx 128: minigpt {ppl:.4f}, llama.cpp {LLAMA_CPP_SMOLLM2_CHECK_TEXT_128}")
    assert ppl == pytest.approx(LLAMA_CPP_SMOLLM2_CHECK_TEXT_128, rel=0.02)
