"""`minigpt bench` and bench/chat_ttft.py on tiny synthetic models: the reports' fields and shapes, never timings."""

import json
import sys
from pathlib import Path

import pytest

from minigpt import bench, kernels
from minigpt.convert import convert
from minigpt.engine import DEFAULT_KV_TYPE
from minigpt.format import MgptFile

from serving import tiny_model   # a long context: the tiny model never ends its turn
from synthetic import tiny_llama
from subproc import run_minigpt, run_python

BENCH = Path(__file__).resolve().parent.parent / "bench"


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
    assert d["load_s"] > 0 and d["peak_rss_mib"] > 0 and d["kv_type"] == DEFAULT_KV_TYPE
    assert 0 < d["load_rss_mib"] <= d["peak_rss_mib"]   # Linux: /proc/self/status
    # the memory floor: every weight but the (untied) embedding table, once per token
    f = MgptFile(tiny)
    want = sum(t.nbytes for n, t in f.tensors.items() if n != "tok_embd" or f.config.tied_embeddings)
    assert d["decode_bytes_per_token"] == want and d["read_gb_s"] > 0
    assert d["floor_tok_s"] == pytest.approx(d["read_gb_s"] * 1e9 / want)
    assert set(d["versions"]) >= {"minigpt", "python", "numpy"}
    assert "isa" in d


@pytest.mark.parametrize("backend", kernels.available_backends())
def test_bench_every_backend_and_table(tiny, backend):
    d = bench.run(str(tiny), n_prompt=5, n_gen=0, threads=1, reps=1, backend=backend)
    assert d["backend"] == backend and d["decode_tok_s"] is None and d["prefill_tok_s"]["median"] > 0
    text = bench.format_table(d)
    assert "tiny-llama" in text and "pp5" in text and "tg0" not in text and "peak RSS" in text
    assert f"{d['kv_type']} KV cache" in text and "load RSS" in text


def test_bench_kv_type(tiny):
    r = run_minigpt("bench", "-m", tiny, "-p", "4", "-n", "0", "-r", "1", "--kv-type", "f32", "--json", timeout=300)
    assert r.returncode == 0 and json.loads(r.stdout)["kv_type"] == "f32", r.stderr


def test_bench_bad_sizes_are_one_line_errors(tiny):
    r = run_minigpt("bench", "-m", tiny, "-p", "0", "-n", "0", timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: bad bench sizes")


def test_prompt_ids_are_ordinary_tokens():
    ids = bench.prompt_ids(300, 400)
    assert len(ids) == 300 and min(ids) >= 100 and max(ids) < 400 and len(set(ids)) > 200


# --- bench/chat_ttft.py

@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_ttft")
    tiny_llama(d / "tiny.gguf", wtype="Q8_0", ctx=512)
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


def test_chat_ttft_json(tiny_chat, tmp_path):
    out = tmp_path / "ttft.json"
    r = run_python(BENCH / "chat_ttft.py", "-m", tiny_chat, "-n", "3", "-r", "1", "--max-tokens", "4",
                   "--pairs", "3", "--json", "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d == json.loads(out.read_text())
    assert d["model"]["name"] == "tiny-llama" and d["threads"] == 1
    assert d["settings"]["turns"] == 3 and d["settings"]["reps"] == 1 and d["settings"]["contrast"] == "all"
    assert len(d["messages"]) == 3 and d["message_tokens"] == [48, 48, 48]
    assert [t["turn"] for t in d["turns"]] == [1, 2, 3]
    n_past = 0
    for t in d["turns"]:
        (run,) = t["runs"]
        assert run["n_past_before"] == n_past and run["prompt_tokens"] > 48 and run["dropped_turns"] == 0
        assert run["n_past"] == n_past + run["prompt_tokens"] + run["reply_tokens"]   # only the new tokens prefilled
        assert 0 <= run["reply_tokens"] <= 4 and run["stop"] in ("eos", "length", "stop")
        assert 0 < run["prefill_s"] <= run["ttft_s"] and run["first_piece_tokens"] <= run["reply_tokens"]
        nr = run["no_reuse"]
        assert nr["prompt_tokens"] >= run["prompt_tokens"] and 0 < nr["prefill_s"] <= nr["ttft_s"]
        n_past = run["n_past"]
    s = d["summary"]
    for key in ("ttft_last_over_first", "ttft_last_over_second", "no_reuse_over_reuse_last"):
        assert len(s[key]["samples"]) == 1 and s[key]["median"] > 0
    assert s["ttft_last_over_first_fastest"] > 0 and s["ttft_last_over_second_fastest"] > 0
    p = d["interleaved"]
    assert len(p["ratio"]["samples"]) == 3 and len(p["first_s"]["samples"]) == 3
    assert p["n_past_before_last"] == d["turns"][1]["runs"][0]["n_past"]   # turn 3 after turns 1 and 2


def test_chat_ttft_table(tiny_chat):
    r = run_python(BENCH / "chat_ttft.py", "-m", tiny_chat, "-n", "3", "-r", "2", "--max-tokens", "3",
                   "--lang", "zh", "--msg-tokens", "30", "--contrast", "last", timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "tiny-llama" in lines[0] and "messages: zh, " in r.stdout
    head = next(i for i, l in enumerate(lines) if l.startswith("turn "))
    assert lines[head].split()[:2] == ["turn", "prefilled"] and "no reuse" in lines[head]
    assert [l.split()[0] for l in lines[head + 1:head + 4]] == ["1", "2", "3"]
    assert "TTFT turn 3 / turn 1:" in r.stdout and "turn 3 without cache reuse:" in r.stdout
    assert "interleaved, 20 pairs A B A B" in r.stdout


# --- bench/attention.py

def test_attention_ab_against_itself():
    # the installed _core timed against its own file, loaded a second time: the same floats
    from minigpt.kernels import _core
    r = run_python(BENCH / "attention.py", "-n", "20", "-T", "100", "--heads", "4", "--kv-heads", "2",
                   "--head-dim", "32", "-r", "2", "--baseline", _core.__file__, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "this build / baseline" in r.stdout and "outputs equal" in r.stdout


# --- bench/matmul.py

def test_matmul_ab_against_itself():
    # the installed _core timed against its own file, loaded a second time: the same floats
    from minigpt.kernels import _core
    if not _core.x8_supported("q4_1"):
        pytest.skip("no x8 kernels on this CPU")
    r = run_python(BENCH / "matmul.py", "--rows", "64", "--cols", "64", "--copies", "2", "-r", "2", "-t", "1",
                   "--bits", "16", "--baseline", _core.__file__, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "64 x 64 q4_1, 4 inputs of int16, 2 copies" in r.stdout
    assert "this build / baseline" in r.stdout and "outputs equal" in r.stdout
    r = run_python(BENCH / "matmul.py", "--qtype", "f16")
    assert r.returncode != 0 and "no x8 kernels for f16" in r.stderr and "Traceback" not in r.stderr


# --- bench/arena.py

def test_arena_ab_table(tiny):
    r = run_python(BENCH / "arena.py", str(tiny), "--seqs", "1,2", "-n", "3", "-p", "4", "--rounds", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines()[3:]]
    assert "ratio per round" in r.stdout and rows == ["1", "2"], r.stdout


# --- bench/batch.py

def test_batch_table_with_a_screened_head(tiny):
    r = run_python(BENCH / "batch.py", str(tiny), "--seqs", "1,2", "-t", "1", "-n", "3", "-p", "4", "--rounds", "1",
                   "--top", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "head: the best 1" in r.stdout
    rows = [line.split()[0] for line in r.stdout.split("same threads\n", 1)[1].splitlines()[1:]]
    assert rows == ["1", "2"], r.stdout


def test_batch_llama_rows_say_in_one_line_what_is_missing(tiny):
    r = run_python(BENCH / "batch.py", str(tiny), "--seqs", "1", "-t", "1", "-n", "2", "-p", "4", "--rounds", "1",
                   "--llama", env={"MINIGPT_LLAMA_PYTHON": None}, timeout=300)
    assert r.returncode != 0 and "set MINIGPT_LLAMA_PYTHON" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # a python without llama-cpp-python: the worker's own last line
    r = run_python(BENCH / "batch.py", str(tiny), "--seqs", "1", "-t", "1", "-n", "2", "-p", "4", "--rounds", "1",
                   "--llama", "--llama-python", sys.executable, "--gguf", str(tiny), timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("llama.cpp's worker failed: ModuleNotFoundError"), r.stderr


# --- bench/ab.py

def test_ab_of_the_installed_build_against_itself(tiny, tmp_path):
    import minigpt
    installed = Path(minigpt.__file__).resolve().parent.parent   # the folder holding the package
    r = run_python(BENCH / "ab.py", str(installed), str(tiny), "--seqs", "1,2", "-t", "1", "-n", "3", "-p", "4",
                   "--rounds", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    builds = [line.split(": ", 1)[1] for line in r.stdout.splitlines()[:2]]
    assert builds == [str(installed / "minigpt" / "__init__.py")] * 2, r.stdout
    rows = [line.split()[0] for line in r.stdout.split("B / A per turn\n", 1)[1].splitlines()[:2]]
    assert rows == ["1", "2"] and "B: 2 sequences / 1, per round:" in r.stdout, r.stdout
    r = run_python(BENCH / "ab.py", str(tmp_path), str(tiny))
    assert r.returncode != 0 and "holds no minigpt package" in r.stderr and "Traceback" not in r.stderr


# --- bench/serve.py: the real server on the tiny model, a few short requests

@pytest.fixture(scope="module")
def tiny_served(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("bench-serve"))


def test_serve_throughput_table(tiny_served):
    r = run_python(BENCH / "serve.py", "--mgpt", tiny_served, "--engines", "minigpt,scheduler", "--streams", "1,2",
                   "--rounds", "1", "--max-tokens", "4", "-t", "1", "--ctx", "512", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {tuple(l.split()[:2]): l.split() for l in r.stdout.splitlines()
            if l.startswith(("minigpt ", "scheduler ")) and l.split()[1].isdigit()}
    assert set(rows) == {("minigpt", "1"), ("minigpt", "2"), ("scheduler", "1"), ("scheduler", "2")}
    for e in ("minigpt", "scheduler"):   # the server, and its scheduler read in-process
        assert rows[e, "1"][-1] == rows[e, "1"][-3] == "1.00x" and float(rows[e, "2"][2]) > 0
        assert float(rows[e, "1"][-2]) > 0   # tok/s while every stream decodes: one stream's whole reply
        assert f"round 1/1  {e:<9} 2 streams" in r.stderr
    assert r.stderr.count("tokens [4, 4]") == 2 and "load average before:" in r.stdout
    assert "per round, minigpt 2 streams / 1: " in r.stdout and "per round, scheduler 2 streams / 1: " in r.stdout
    assert "minigpt (through HTTP) / scheduler (in-process) at 2 streams: " in r.stdout


def test_serve_targets_for_each_speculation_mode(tiny_served):
    r = run_python(BENCH / "serve.py", "--mgpt", tiny_served, "--engines", "minigpt", "--speculate", "none,ngram",
                   "--streams", "1,4", "--rounds", "1", "--max-tokens", "4", "-t", "1", "--ctx", "512", timeout=300)
    assert r.returncode == 0, r.stderr
    for mode in ("none", "ngram"):
        assert f"targets: minigpt/{mode} 4 streams / 1 stream " in r.stdout, r.stdout
    assert "minigpt/ngram / minigpt/none at 1 stream: " in r.stdout


def test_serve_soak(tiny_served):
    r = run_python(BENCH / "serve.py", "--mgpt", tiny_served, "--soak", "--requests", "9", "--clients", "3",
                   "--parallel", "2", "--max-tokens", "6", "-t", "1", "--ctx", "512", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "soak: 9 requests (+3 warm-up) from 3 clients, 2 slots" in r.stdout
    assert r.stdout.count("ok   ") == 4 and "FAIL" not in r.stdout


# --- bench/speculate.py

@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory):   # the function to rewrite is ~1,500 of the tiny vocabulary's tokens
    d = tmp_path_factory.mktemp("speculate")
    tiny_llama(d / "tiny.gguf", wtype="Q8_0", ctx=4096)
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


def test_speculate_json(tiny_long):
    r = run_python(BENCH / "speculate.py", "-m", tiny_long, "-r", "2", "--max-tokens", "12", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "tiny-llama" and d["threads"] == 1 and d["reps"] == 2
    assert set(d["tasks"]) == {"code", "story"}
    for t in d["tasks"].values():
        assert t["same_text"] and t["max_tokens"] == 12 and 0 < t["tokens"] <= 12
        assert set(t["runs"]) == {"plain", "ngram"} and all(len(rs) == 2 for rs in t["runs"].values())
        assert all(r["drafted"] == 0 for r in t["runs"]["plain"]) and 0 <= t["accepted"] <= 1
        for key in ("plain_tok_s", "ngram_tok_s"):
            s = t[key]
            assert len(s["samples"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"]
        assert t["ratio"] == t["ngram_tok_s"]["median"] / t["plain_tok_s"]["median"]


def test_speculate_table(tiny_long):
    r = run_python(BENCH / "speculate.py", "-m", tiny_long, "-r", "1", "--max-tokens", "6", "--tasks", "story",
                   timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "tiny-llama" in lines[0] and "interleaved A B A B" in lines[0] and len(lines) == 2
    assert lines[1].startswith("story") and "same text: yes" in lines[1]
    bad = run_python(BENCH / "speculate.py", "-m", tiny_long, "--tasks", "poem")
    assert bad.returncode != 0 and "unknown task poem" in bad.stderr
