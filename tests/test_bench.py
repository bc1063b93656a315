"""`minigpt bench` on a tiny synthetic model: the report's fields and shapes, never its timings."""

import json

import pytest

from minigpt import bench, kernels
from minigpt.convert import convert

from synthetic import tiny_llama
from subproc import run_minigpt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    tiny_llama(d / "tiny.gguf", wtype="Q4_1")
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


def test_bench_json(tiny):
    r = run_minigpt("bench", "-m", tiny, "-p", "8", "-n", "4", "-t", "1", "-r", "2", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["backend"] == kernels.get_backend().name and d["threads"] == 1
    assert (d["n_prompt"], d["n_gen"], d["reps"]) == (8, 4, 2)
    assert d["model"]["name"] == "tiny-llama" and d["model"]["arch"] == "llama"
    assert d["model"]["file_size"] == tiny.stat().st_size and d["model"]["n_params"] > 0
    assert d["model"]["tensor_types"]["q4_1"] > 0
    for key in ("prefill_tok_s", "decode_tok_s"):
        s = d[key]
        assert len(s["samples"]) == 2 and s["min"] <= s["median"] <= s["max"] and s["min"] > 0
    assert d["load_s"] > 0 and d["peak_rss_mib"] > 0
    assert set(d["versions"]) >= {"minigpt", "python", "numpy"}
    assert "isa" in d


@pytest.mark.parametrize("backend", kernels.available_backends())
def test_bench_every_backend_and_table(tiny, backend):
    d = bench.run(str(tiny), n_prompt=5, n_gen=0, threads=1, reps=1, backend=backend)
    assert d["backend"] == backend and d["decode_tok_s"] is None and d["prefill_tok_s"]["median"] > 0
    text = bench.format_table(d)
    assert "tiny-llama" in text and "pp5" in text and "tg0" not in text and "peak RSS" in text


def test_bench_bad_sizes_are_one_line_errors(tiny):
    r = run_minigpt("bench", "-m", tiny, "-p", "0", "-n", "0", timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: bad bench sizes")


def test_prompt_ids_are_ordinary_tokens():
    ids = bench.prompt_ids(300, 400)
    assert len(ids) == 300 and min(ids) >= 100 and max(ids) < 400 and len(set(ids)) > 200
