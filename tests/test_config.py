"""Config: every field typed and ranged once, when it is made from an untrusted source (issue #12)."""

import tracemalloc

import numpy as np
import pytest

import minigpt
from minigpt.api import DEFAULT_N_CTX
from minigpt.config import Config
from minigpt.convert import convert
from minigpt.errors import FormatError
from minigpt.format import Writer

from subproc import run_minigpt
from synthetic import mgpt_with_header, tiny_llama

BASE = dict(arch="llama", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=300,
            context_length=64)

# (field, value, what the error must name): values the fuzz campaign of issue #12 and its own cases found
BAD = [
    ("norm_eps", "x", "norm_eps"), ("norm_eps", float("nan"), "norm_eps"), ("norm_eps", 0, "norm_eps"),
    ("norm_eps", True, "norm_eps"), ("rope_theta", -1.0, "rope_theta"), ("rope_theta", float("inf"), "rope_theta"),
    ("rope_scaling", "linear", "rope_scaling"), ("rope_scaling", {"type": "yarn", "factor": 4}, "rope_scaling"),
    ("rope_scaling", {"type": "linear", "factor": "2"}, "rope_scaling"), ("rope_dim", -2, "rope_dim"),
    ("rope_dim", 3, "rope_dim"), ("sliding_window", 2.5, "sliding_window"), ("n_heads", 0, "n_heads"),
    ("n_kv_heads", 3, "heads"), ("n_layers", 1 << 22, "n_layers"), ("vocab_size", 1 << 22, "vocab_size"),
    ("dim", "64", "dim"), ("dim", 2, "room"), ("head_dim", 4096, "head_dim"), ("hidden_dim", -1, "hidden_dim"),
    ("context_length", 1 << 30, "context_length"), ("tied_embeddings", 1, "tied_embeddings"),
    ("qkv_bias", "yes", "qkv_bias"), ("name", 5, "name"), ("local_layers", [True], "local_layers"),
    ("local_layers", [0, 9], "local_layers"), ("local_layers", 5, "local_layers"), ("arch", ["llama"], "architecture"),
    ("arch", "x" * 100_000, "architecture"), ("query_scale", -0.5, "query_scale"),
]


@pytest.mark.parametrize("key, value, named", BAD, ids=[f"{k}={str(v)[:12]}" for k, v, _ in BAD])
def test_bad_fields_are_one_clear_error(key, value, named):
    with pytest.raises(FormatError, match=named) as e:
        Config(**{**BASE, key: value})
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_good_fields_are_normalized():
    c = Config(**{**BASE, "norm_eps": 1, "rope_theta": 500000, "rope_scaling": {"type": "linear", "factor": 2},
                  "name": "n" * 10_000, "sliding_window": 8, "local_layers": [1, 0, 1]})
    assert c.norm_eps == 1.0 and isinstance(c.norm_eps, float) and isinstance(c.rope_theta, float)
    assert c.rope_scaling == {"type": "linear", "factor": 2.0} and len(c.name) == 200
    assert c.local_layers == (0, 1) and c.windows == (8, 8)
    assert Config.from_dict(c.to_dict()) == c


def test_a_bad_header_field_is_one_line_from_the_cli(tmp_path):
    # a file whose header says norm_eps "x", with its checksum recomputed: `info` says so in one line
    path = tmp_path / "m.mgpt"
    cfg = Config(**{**BASE, "n_layers": 1})
    with Writer(path, cfg, {"model": "gpt2", "tokens": ["a"]}, "", [("norm", "f32", (64,))]) as w:
        w.write("norm", np.ones(64, np.float32))
    mgpt_with_header(path, path, lambda meta: meta["config"].update(norm_eps="x"))
    r = run_minigpt("info", path, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "norm_eps" in lines[0], r.stderr


def test_a_huge_claimed_context_costs_only_the_default(tmp_path):
    # a file claiming 4 M positions: the default context is DEFAULT_N_CTX, and the RoPE tables and cache
    # are sized by it, not by the claim (which used to build 3 GB of tables first)
    tiny_llama(tmp_path / "t.gguf", ctx=1 << 22)
    convert(tmp_path / "t.gguf", tmp_path / "t.mgpt")
    tracemalloc.start()
    m = minigpt.load(str(tmp_path / "t.mgpt"), backend="numpy")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert m.config.context_length == 1 << 22 and m.n_ctx == DEFAULT_N_CTX and peak < 64 << 20
    assert minigpt.load(str(tmp_path / "t.mgpt"), n_ctx=DEFAULT_N_CTX * 2).n_ctx == DEFAULT_N_CTX * 2
