"""The command line on tiny synthetic models: outputs, and one-line errors for every kind of bad input."""

import json
import re

import numpy as np
import pytest

from minigpt.format import MgptFile

from synthetic import tiny_llama
from subproc import run_minigpt, run_python


def run(*args, input=None):
    return run_minigpt(*args, timeout=300, input=input)


def assert_one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert lines and "rror" in lines[-1], r.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    src = d / "tiny.gguf"
    tiny_llama(src, wtype="Q4_1")
    out = d / "tiny.mgpt"
    r = run("convert", src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "parameters" in r.stderr and "bits/weight" in r.stderr
    return src, out


def test_info_tokenize_generate(tiny):
    _, out = tiny
    r = run("info", out, "--verify")
    assert r.returncode == 0 and "llama" in r.stdout and "q4_1" in r.stdout and "checksums   ok" in r.stdout
    d = json.loads(run("info", out, "--json").stdout)
    assert d["config"]["n_layers"] == 2 and d["tokenizer"]["pre"] == "smollm"
    ids = json.loads(run("tokenize", "-m", out, "the he").stdout)
    assert ids and all(isinstance(i, int) for i in ids)
    assert json.loads(run("tokenize", "-m", out, "--special", "<|im_start|>").stdout) == [1]
    assert len(json.loads(run("tokenize", "-m", out, "<|im_start|>").stdout)) > 1
    g = run("generate", "-m", out, "-p", "the", "-n", "8", "--temperature", "0")
    assert g.returncode == 0, g.stderr
    assert g.stdout == run("generate", "-m", out, "-p", "the", "-n", "8", "--temperature", "0").stdout
    p = run("generate", "-m", out, "-p", "the", "-n", "8", "--temperature", "0", "--show-probs")
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) >= 9, p.stderr
    assert all("%" in line and "|" in line for line in lines[:8])     # one line per token, then the text
    assert "\n".join(lines[8:]) == g.stdout.rstrip("\n")


# `python -c NO_CORE ARGS` is `minigpt ARGS` as if the compiled extension had not been built
NO_CORE = """
import sys
class NoCore:
    def find_spec(self, name, path=None, target=None):
        if name == "minigpt.kernels._core":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoCore())
sys.argv[0] = "minigpt"
from minigpt.cli import main
main()
"""


def run_without_core(*args):
    r = run_python("-c", NO_CORE, *args, env={"MINIGPT_BACKEND": None}, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_missing_compiled_kernels_are_said_once(tiny):
    _, out = tiny
    info, generate = run_without_core("info", out), run_without_core("generate", "-m", out, "-p", "the", "-n", "4")
    for r in info, generate:
        said = [line for line in r.stderr.splitlines() if "compiled kernels" in line]
        assert len(said) == 1, r.stderr
        assert said[0].startswith("minigpt: the compiled kernels are not available (not built in ")
        assert "slow numpy backend" in said[0] and "pip install ." in said[0]
    assert re.search(r"^backend     numpy \(compiled kernels missing: not built in .+\)$", info.stdout, re.M)
    assert json.loads(run_without_core("info", out, "--json").stdout)["compiled_missing"].startswith("not built in ")
    r = run_without_core("generate", "-m", out, "-p", "the", "-n", "4", "--backend", "numpy")
    assert "compiled kernels" not in r.stderr, r.stderr                 # numpy asked for by name: no surprise


# `python -c NO_SERVE ARGS` is `minigpt ARGS` as if minigpt[serve] had not been installed
NO_SERVE = """
import sys
sys.modules["uvicorn"] = None
sys.argv[0] = "minigpt"
from minigpt.cli import main
main()
"""


def test_serve_without_its_extra_says_what_to_install():
    r = run_python("-c", NO_SERVE, "serve", "-m", "no-such-model")   # said before any model is looked for
    assert r.returncode == 1 and r.stderr == 'error: minigpt serve needs: pip install "minigpt[serve]"\n', r.stderr


def test_serve_replicas_without_ray_says_what_to_install():
    no_ray = NO_SERVE.replace('"uvicorn"', '"ray"')
    r = run_python("-c", no_ray, "serve", "-m", "no-such-model", "--replicas", "2")
    assert r.returncode == 1 and r.stderr == 'error: minigpt serve --replicas needs: pip install "minigpt[ray]"\n', \
        r.stderr
    r = run_python("-c", no_ray, "serve", "-m", "no-such-model", "--ray-address", "auto")
    assert r.returncode == 1 and r.stderr == "error: --ray-address goes with --replicas N\n", r.stderr


def test_error_lines_show_untrusted_text_escaped_and_cut():
    # a model name (or a name inside a file) with newlines and terminal escapes, 60 KB long
    name = "x\x1b[31mred\n" * 5000
    r = run("info", name)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr, r.stderr[:300]
    assert r.stderr.startswith("error: ") and len(r.stderr) < 1000 and "\\x1b[31mred\\n" in r.stderr


def test_bad_inputs_are_one_line_errors(tiny, tmp_path):
    src, out = tiny
    data, mg = src.read_bytes(), out.read_bytes()
    files = {
        "empty.gguf": b"", "random.gguf": np.random.default_rng(1).bytes(4096),
        "trunc.gguf": data[: len(data) * 2 // 3],
        "absurd.gguf": b"GGUF" + (3).to_bytes(4, "little") + (2**40).to_bytes(8, "little") + (5).to_bytes(8, "little"),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        dest = tmp_path / (name + ".mgpt")
        msg = assert_one_line_error(run("convert", tmp_path / name, "-o", dest))
        assert not dest.exists(), name
        assert name in msg or "GGUF" in msg or "truncated" in msg
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    (tmp_path / "trunc.mgpt").write_bytes(mg[:-100])
    flipped = bytearray(mg)
    flipped[30] ^= 1
    (tmp_path / "flip-header.mgpt").write_bytes(bytes(flipped))
    flipped = bytearray(mg)
    flipped[MgptFile(out).tensors["layers.0.wq"].offset + 3] ^= 1
    (tmp_path / "flip-data.mgpt").write_bytes(bytes(flipped))
    for name in ("trunc.mgpt", "flip-header.mgpt"):
        assert_one_line_error(run("generate", "-m", tmp_path / name, "-p", "x", "-n", "1"))
        assert_one_line_error(run("info", tmp_path / name))
    assert "checksum" in assert_one_line_error(run("info", "--verify", tmp_path / "flip-data.mgpt"))

    assert "no such" in assert_one_line_error(run("generate", "-m", tmp_path / "nope.mgpt", "-p", "x"))
    assert_one_line_error(run("convert", tmp_path / "nope.gguf", "-o", tmp_path / "o.mgpt"))
    assert_one_line_error(run("convert", src, "-o", tmp_path / "o.mgpt", "--quant", "q3_x"))
    assert not (tmp_path / "o.mgpt").exists()
    assert_one_line_error(run("convert", src, "-o", tmp_path / "no-such-dir" / "o.mgpt"))
    assert_one_line_error(run("generate", "-m", tmp_path / "random.gguf", "-p", "x"))   # neither GGUF nor .mgpt
    assert_one_line_error(run("generate", "-m", out, "-p", "x", "--top-p", "7"))


def test_bad_options_are_one_error_line(tiny, tmp_path):
    # click's usage errors were a usage block and exit 2, which is also what a bug exits with (issue #12)
    _, out = tiny
    for args, said in [(["generate", "-m", out, "-p", "x", "-t", "300"], "'-t' / '--threads': 300 is not in the range"),
                       (["generate", "-m", out], "Missing option '-p'"), (["info", "--bogus"], "No such option"),
                       (["nope"], "No such command 'nope'")]:
        r = run(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("error: ") and said in r.stderr and "--help`)" in r.stderr, r.stderr
    r = run()
    assert "Commands:" in r.stdout + r.stderr and "error" not in r.stderr   # no command: the help
    (tmp_path / "latin1.jinja").write_bytes("{{ 'é' }}".encode("latin-1"))
    r = run("chat", "-m", out, "--chat-template", tmp_path / "latin1.jinja", input="hi\n")
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / 'latin1.jinja'}: not UTF-8 text (bad byte at offset 4)\n"


def test_kv_type_on_every_command_that_runs_a_model(tiny, tmp_path):
    import minigpt
    from minigpt.engine import DEFAULT_KV_TYPE, KV_TYPES

    src, out = tiny
    for cmd in ("generate", "chat", "bench", "perplexity", "convert", "serve"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "--kv-type [f32|f16|q8_0]" in r.stdout, (cmd, r.stdout)
        assert f"default: {DEFAULT_KV_TYPE}" in " ".join(r.stdout.split()), cmd
    msg = assert_one_line_error(run("generate", "-m", out, "-p", "x", "--kv-type", "f8"))
    assert "'--kv-type': 'f8' is not one of 'f32', 'f16', 'q8_0'" in msg
    assert "apply to --check only" in assert_one_line_error(run("convert", src, "-o", tmp_path / "o.mgpt",
                                                                 "--kv-type", "f16"))
    g = run("generate", "-m", out, "-p", "the", "-n", "4", "--temperature", "0", "--kv-type", "f32", "--stats")
    assert g.returncode == 0 and "f32 KV cache" in g.stderr, g.stderr
    # a resumed chat keeps its saved cache type unless --kv-type says otherwise (no forward pass: /show, /quit)
    m = minigpt.load(str(out), kv_type="f32")
    for t in KV_TYPES[:2]:   # q8_0 needs a head_dim multiple of 32; this model's is 16
        m.chat(kv_type=t).save(tmp_path / f"{t}.mgchat")
        r = run("chat", "-m", out, "--resume", tmp_path / f"{t}.mgchat", input="/show\n/quit\n")
        assert r.returncode == 0 and f"precision, {t} KV cache" in r.stdout, r.stdout + r.stderr
    r = run("chat", "-m", out, "--resume", tmp_path / "f16.mgchat", "--kv-type", "f32", input="/show\n/quit\n")
    assert r.returncode == 0 and "precision, f32 KV cache" in r.stdout, r.stdout + r.stderr
