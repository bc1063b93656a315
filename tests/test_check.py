"""`minigpt convert --check` (minigpt.check): the numbers on tiny synthetic models whose answer is known,
the built-in text, the CLI, and SmolLM2's real conversion."""

import re

import numpy as np
import pytest

from minigpt import check
from minigpt.api import Model
from minigpt.convert import convert

from subproc import run_minigpt
from synthetic import tiny_llama
from test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    src = tmp_path_factory.mktemp("check") / "tiny-f32.gguf"
    tiny_llama(src, wtype="F32")
    return src


def test_builtin_text_is_multilingual_and_shipped():
    assert check.TEXT_PATH.is_file()           # in CI this is the installed package: the wheel carries it
    pieces = dict(check.builtin_text())
    assert {"english", "chinese", "python", "french", "german", "japanese", "russian"} <= set(pieces)
    assert all(text and text == text.strip("\n") for text in pieces.values())
    assert 2000 < sum(len(t.encode()) for t in pieces.values()) < 4096
    assert "春天" in pieces["chinese"] and "def " in pieces["python"] and "@@" not in "".join(pieces.values())


@pytest.mark.parametrize("backend, precision", [("numpy", "balanced"), ("c", "exact")])
def test_f32_conversion_costs_nothing(tiny_f32, tmp_path, backend, precision):
    out = tmp_path / "o.mgpt"
    convert(tiny_f32, out, "f32")
    seen = []
    r = check.check_conversion(tiny_f32, out, backend=backend, precision=precision, kv_type="f32",
                               progress=lambda n, total, stage: seen.append((stage, n, total)))
    assert r.agreement == 1.0 and abs(r.kl) < 1e-9
    assert r.ppl_converted == pytest.approx(r.ppl_source, rel=1e-6)
    assert set(r.pieces) == {name for name, _ in check.builtin_text()}
    assert r.positions == sum(p.positions for p in r.pieces.values()) > 7 * 60
    assert all(p.positions <= 127 for p in r.pieces.values())       # pieces cut to the 128-token context
    assert [s for s, *_ in seen if s == "checking"] and sum(n for s, n, _ in seen if s == "checking") == r.positions
    assert {s for s, *_ in seen} == {"dequantizing", "checking"}
    assert [p.name for p in tmp_path.iterdir()] == ["o.mgpt"]         # the f32 copy is gone
    assert "top-1 agreement 100.0%" in r.line() and "+0.0%" in r.line()


def test_q4_conversion_costs_something(tiny_f32, tmp_path):
    out = tmp_path / "o.mgpt"
    convert(tiny_f32, out, "q4_0")
    r = check.check_conversion(tiny_f32, out, backend="numpy")
    assert r.kl > 1e-4 and r.ppl_converted != r.ppl_source and 0.5 < r.agreement <= 1.0


def test_compare_by_hand(tiny_f32, tmp_path):
    """The pooled numbers of compare() written out for one piece."""
    convert(tiny_f32, tmp_path / "a.mgpt", "f32")
    convert(tiny_f32, tmp_path / "b.mgpt", "q8_0")
    a, b = Model(tmp_path / "a.mgpt", backend="numpy"), Model(tmp_path / "b.mgpt", backend="numpy")
    text = "the hen and the cat in the inn"
    r = check.compare(a, b, [("x", text)])
    ids = b.tokenize(text)
    la, lb = (m.logits(ids)[:-1].astype(np.float64) for m in (a, b))
    lp = la - np.log(np.exp(la).sum(-1, keepdims=True))
    lq = lb - np.log(np.exp(lb).sum(-1, keepdims=True))
    t = np.array(ids[1:])
    assert r.positions == len(ids) - 1
    assert r.agreement == np.mean(lp.argmax(-1) == lq.argmax(-1))
    assert r.kl == pytest.approx((np.exp(lp) * (lp - lq)).sum(-1).mean(), rel=1e-3)   # float32 logits of two passes
    assert r.ppl_source == pytest.approx(np.exp(-lp[np.arange(len(t)), t].mean()), rel=1e-5)
    assert r.ppl_converted == pytest.approx(np.exp(-lq[np.arange(len(t)), t].mean()), rel=1e-5)


def test_cli(tiny_f32, tmp_path):
    out = tmp_path / "o.mgpt"
    r = run_minigpt("convert", tiny_f32, "-o", out, "--quant", "q8_0", "--check", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr and "checking" in r.stderr
    assert re.fullmatch(r"check: [\d,]+ positions of built-in text: top-1 agreement [\d.]+%, mean KL [\d.e-]+, "
                        r"perplexity [\d.e+]+ \(source f32\) vs [\d.e+]+ \(converted\), [+-][\d.]+%\n", r.stdout), r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mgpt"]
    msg = assert_one_line_error(run_minigpt("convert", tiny_f32, "-o", tmp_path / "p.mgpt", "--precision", "exact"))
    assert "--check" in msg


def test_smollm2_conversion_check(smollm2_gguf, tmp_path):
    r = run_minigpt("convert", smollm2_gguf, "-o", tmp_path / "s.mgpt", "--check", timeout=1800)
    assert r.returncode == 0, r.stderr
    print("\n" + r.stdout.strip())
    m = re.search(r"([\d,]+) positions .* agreement ([\d.]+)%, mean KL ([\d.e-]+), perplexity ([\d.]+) \(source f32\) "
                  r"vs ([\d.]+)", r.stdout)
    positions, agreement, kl, p_src, p_conv = m.groups()
    assert int(positions.replace(",", "")) > 1000
    assert float(agreement) >= 95 and float(kl) < 0.01
    assert float(p_conv) == pytest.approx(float(p_src), rel=0.02)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mgpt"]
