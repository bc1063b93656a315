"""Names people can read (minigpt.naming), and what they tell about a model, on the metadata of the three
known models' GGUFs and on tiny synthetic ones: the banner, `minigpt info`, and the base-model warning."""

import pytest

from minigpt import naming
from minigpt.convert import convert
from minigpt.format import MgptFile

from subproc import run_minigpt
from synthetic import tiny_llama

# general.* of the known models' GGUFs, as they are
QWEN = {"general.name": "Qwen2.5 Coder 0.5B Instruct AWQ", "general.finetune": "Instruct-AWQ",
        "general.basename": "Qwen2.5-Coder", "general.size_label": "0.5B"}
GEMMA = {"general.name": "Gemma 3 270m", "general.basename": "gemma-3", "general.size_label": "270M"}
SMOL = {"general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2", "general.finetune": "8k-lc100k-mix1-ep2",
        "general.basename": "smollm2", "general.size_label": "135M"}


@pytest.mark.parametrize("general, name", [
    (QWEN, "Qwen2.5 Coder 0.5B Instruct"), (GEMMA, "Gemma 3 270M"), (SMOL, "Smollm2 135M"),
    ({**GEMMA, "general.basename": "gemma-3", "general.finetune": "it"}, "Gemma 3 270M IT"),
    ({"general.name": "My Model"}, "My Model"),                          # no basename: general.name
    ({}, ""), ({"general.name": 5, "general.basename": ["x"]}, ""),     # nothing usable: the caller's fallback
    ({"general.name": "a\x1b[2J\nb" + "c" * 200}, "a [2J b" + "c" * 72 + "…"),   # one short line
])
def test_names_from_gguf_metadata(general, name):
    assert naming.from_gguf(general) == name


def test_names_from_folders():
    assert naming.from_folder("SmolLM2-135M-Instruct") == "SmolLM2 135M Instruct"
    assert naming.from_folder("Qwen2.5-0.5B-Instruct-AWQ") == "Qwen2.5 0.5B Instruct"
    assert naming.from_folder("gemma-3-270m") == "Gemma 3 270m"


def test_instruct_markers():
    assert naming.says_instruct("Qwen2.5 Coder 0.5B Instruct AWQ")
    assert naming.says_instruct("", "gemma-3-270m-it-0123456789ab.mgpt")
    assert not naming.says_instruct("Gemma 3 270M", "gemma-3-270m.mgpt", "Smollm2 135M 8k Lc100K Mix1 Ep2")
    assert not naming.says_instruct("Italian Poet")   # a word, not a part of one


def test_a_converted_gguf_carries_a_readable_name(tmp_path):
    tiny_llama(tmp_path / "q.gguf", metadata=QWEN)
    convert(tmp_path / "q.gguf", tmp_path / "q.mgpt")
    assert MgptFile(tmp_path / "q.mgpt").config.name == "Qwen2.5 Coder 0.5B Instruct"
    r = run_minigpt("info", tmp_path / "q.mgpt", timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(f"model       Qwen2.5 Coder 0.5B Instruct  ({tmp_path / 'q.mgpt'})")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny model with no chat template and no instruct word in its name: a base model."""
    d = tmp_path_factory.mktemp("base")
    tiny_llama(d / "b.gguf", chat_template=None, metadata=GEMMA)
    convert(d / "b.gguf", d / "b.mgpt")
    return d / "b.mgpt"


def test_chat_with_a_base_model_warns_and_goes_on(base, tmp_path):
    r = run_minigpt("chat", "-m", base, "--max-tokens", "4", "--seed", "1", input="hello\n", timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("minigpt chat · Gemma 3 270M · ")
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: Gemma 3 270M is a base model: it continues text rather than answering; "
                        f"`minigpt generate -m {base} -p TEXT` continues a text of yours"]
    assert ">>> " in r.stdout.split(warnings[0], 1)[1]                   # and the chat started
    # a template of one's own: the user knows what the model is
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    r = run_minigpt("chat", "-m", base, "--chat-template", tmp_path / "t.jinja", "--max-tokens", "2",
                    input="hello\n", timeout=120)
    assert r.returncode == 0 and "warning" not in r.stdout


def test_chat_models_get_no_warning(tmp_path):
    tiny_llama(tmp_path / "c.gguf", metadata=SMOL)                       # no instruct word, but a template
    tiny_llama(tmp_path / "i.gguf", chat_template=None, metadata=QWEN)   # no template, but "Instruct"
    for name in ("c", "i"):
        convert(tmp_path / f"{name}.gguf", tmp_path / f"{name}.mgpt")
        r = run_minigpt("chat", "-m", tmp_path / f"{name}.mgpt", "--max-tokens", "2", input="hello\n", timeout=120)
        assert r.returncode == 0 and "warning" not in r.stdout, r.stdout + r.stderr


def test_the_api_tells_base_models(base, tmp_path):
    import minigpt

    m = minigpt.load(base)
    assert m.name == "Gemma 3 270M" and m.is_base
    tiny_llama(tmp_path / "c.gguf", metadata=QWEN)
    m = minigpt.load(str(tmp_path / "c.gguf"))
    assert m.name == "Qwen2.5 Coder 0.5B Instruct" and not m.is_base
