"""`minigpt chat` driven in a pseudo-terminal, as a person would, on the real default model (Qwen2.5-Coder
0.5B Instruct) and on SmolLM2, the small, fast English one."""

import json
import os
import re
import sys
import time

import pytest

from minigpt import hub, kernels
from minigpt.chatfile import read_header
from minigpt.convert import convert

from subproc import NEUTRAL_CWD, python_env, run_minigpt
from synthetic import tiny_llama

pexpect = pytest.importorskip("pexpect")

PROMPT = ">>> "
CJK = re.compile(r"[\u4e00-\u9fff]")


class Tape:
    """pexpect's logfile_read: every chunk read from the terminal, with the time it arrived."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append((time.monotonic(), data))

    def flush(self):
        pass


def spawn(*args, cache, ready=PROMPT):
    """`minigpt chat ARGS` in a terminal, on the tests' minigpt (as subproc.run_minigpt runs it)."""
    env = python_env({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MINIGPT_CACHE": str(cache), "NO_COLOR": "1",
                      "TERM": "xterm", "MINIGPT_DEBUG": None})
    p = pexpect.spawn(sys.executable, ["-m", "minigpt", "chat", *map(str, args)], env=env, cwd=NEUTRAL_CWD,
                      encoding="utf-8", timeout=120, dimensions=(40, 200))
    p.logfile_read = p.tape = Tape()
    p.expect_exact(ready)
    p.startup = p.before
    if ready != PROMPT:
        p.expect_exact(PROMPT)
    return p


def ask(p, text):
    """Send a message; the reply (what came before the next prompt), and when its chunks arrived."""
    p.sendline(text)
    p.expect_exact(text)          # the terminal's echo of the line
    start = len(p.tape.chunks)
    p.expect_exact(PROMPT)
    return p.before.strip("\r\n"), [t for t, _ in p.tape.chunks[start:]]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_the_default_model_answers_chinese_in_chinese(qwen2_mgpt, cache):
    """Issue #13's acceptance: `minigpt chat` with no -m, asked in Chinese, answers in Chinese, in whole
    characters (pexpect decodes what the terminal shows strictly: a broken UTF-8 sequence would raise)."""
    (cache / "models").mkdir(parents=True)
    (cache / "models" / f"{hub.DEFAULT_MODEL}.mgpt").symlink_to(qwen2_mgpt)   # the pulled default, found by name
    p = spawn("--temperature", "0", "--max-tokens", "60", cache=cache)
    assert p.startup.startswith("minigpt chat · Qwen2.5 Coder 0.5B Instruct · "), p.startup
    out, arrivals = ask(p, "中国的首都是哪里？")
    assert "北京" in out and "\ufffd" not in out, out
    assert len(arrivals) >= 2                                        # streamed, not printed at the end
    out, _ = ask(p, "用一句话介绍一下长城。")
    assert len(CJK.findall(out)) >= 5 and "\ufffd" not in out, out
    p.sendeof()
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0 and "Traceback" not in p.before


def test_english_and_chinese_stream(smollm2_mgpt, cache):
    p = spawn("-m", smollm2_mgpt, "--temperature", "0", "--max-tokens", "60", cache=cache)
    banner = re.search(r" · (\w+)(?: \(\w+\))?, \d+ threads?", p.startup)
    assert banner and banner.group(1) == kernels.get_backend().name, p.startup   # the tests' minigpt, not a copy
    out, arrivals = ask(p, "What is the capital of France?")
    assert "Paris" in out
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] > 0.02   # pieces came one by one, over time
    out, _ = ask(p, "Translate to Chinese: I love you.")
    assert CJK.search(out) and "\ufffd" not in out                   # whole characters, never broken bytes
    out, _ = ask(p, "你好！")
    assert out and "\ufffd" not in out
    p.sendline("/show")
    p.expect_exact("6 messages")
    p.expect_exact(PROMPT)
    p.sendeof()
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0
    assert "Traceback" not in p.before


def test_ctrl_c_stops_a_reply_and_quits_at_the_prompt(smollm2_mgpt, cache, tmp_path):
    p = spawn("-m", smollm2_mgpt, "--seed", "3", "--max-tokens", "0", cache=cache)
    message = "Write a very long story about a dragon who learns to cook."
    p.sendline(message)
    p.expect_exact(message)        # the echo
    p.expect(r"\w+ \w+ \w+ \w+")   # the reply has started
    p.sendintr()
    p.expect_exact("[stopped]")
    p.expect_exact(PROMPT)
    saved = tmp_path / "after-stop.mgchat"
    p.sendline(f"/save {saved}")
    p.expect_exact(PROMPT)
    header, _ = read_header(saved)
    assert [m["role"] for m in header["messages"]] == ["user", "assistant"]
    assert len(header["messages"][1]["content"].split()) >= 3          # what was written is kept
    p.sendline("Thanks!")          # and the chat goes on
    p.expect_exact(PROMPT)
    p.send("half typed")
    p.expect_exact("half typed")
    p.sendintr()                   # Ctrl-C on a half-typed line drops the line
    p.expect_exact(PROMPT)
    p.sendintr()                   # Ctrl-C at an empty prompt quits cleanly
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0 and "Traceback" not in p.before


def test_save_then_resume_gives_the_same_reply(smollm2_mgpt, cache, tmp_path):
    saved = tmp_path / "chat.mgchat"
    p = spawn("-m", smollm2_mgpt, "--seed", "42", "--temperature", "0.9", "--max-tokens", "40", cache=cache)
    ask(p, "Tell me something about cats.")
    p.sendline(f"/save {saved}")
    p.expect_exact("saved")
    p.expect_exact(PROMPT)
    first, _ = ask(p, "And about dogs?")
    p.sendline("/exit")
    p.expect(pexpect.EOF)

    p = spawn("--resume", saved, cache=cache, ready="resumed")     # the file names its model
    assert "Tell me something about cats." in p.startup
    again, _ = ask(p, "And about dogs?")
    p.sendline("/stats")
    p.expect(r"prompt (\d+) tokens")
    assert int(p.match.group(1)) < 30                      # only the new message was read
    p.sendline("/exit")
    p.expect(pexpect.EOF)
    assert again == first and len(first) > 20


def test_commands(smollm2_mgpt, cache, tmp_path):
    p = spawn("-m", smollm2_mgpt, "--temperature", "0", "--max-tokens", "30", cache=cache)
    first, _ = ask(p, "Name a fruit.")
    out, _ = ask(p, "/regen")
    assert out == first                                    # greedy: the same reply again
    out, _ = ask(p, "/undo")
    assert "took back: Name a fruit." in out
    out, _ = ask(p, "/stats")
    assert "context 0/" in out
    out, _ = ask(p, "/set temperature 0.5")
    assert "temperature = 0.5" in out
    out, _ = ask(p, "/set")
    assert re.search(r"temperature\s+0\.5", out) and re.search(r"max_tokens\s+30", out)
    out, _ = ask(p, "/set top_p 7")
    assert out.startswith("error:") and "top_p" in out
    out, _ = ask(p, "/set temperature 0")
    out, _ = ask(p, "/probs on")
    out, _ = ask(p, "What is 2+2?")
    lines = [l for l in out.splitlines() if "|" in l]
    assert len(lines) >= 2 and all("%" in l for l in lines)     # one line of candidates per token
    out, _ = ask(p, "/probs off")
    out, _ = ask(p, "/system You are a pirate.")
    out, _ = ask(p, "/system")
    assert "You are a pirate." in out
    out, _ = ask(p, "/show")
    assert "template" in out and "<|im_start|>" in out and "temperature 0.0" in out
    p.sendline('"""')
    p.expect_exact("... ")
    p.sendline("Repeat after me:")
    p.expect_exact("... ")
    ask(p, 'one two three"""')
    ask(p, f"/save {tmp_path / 'c.mgchat'}")
    header, _ = read_header(tmp_path / "c.mgchat")
    assert header["messages"][-2] == {"role": "user", "content": "Repeat after me:\none two three"}
    p.send("\x1b[200~Pasted:\nline one\nline two\x1b[201~\r")   # a bracketed paste is one message
    p.expect_exact(PROMPT)
    ask(p, f"/save {tmp_path / 'c.mgchat'}")
    header, _ = read_header(tmp_path / "c.mgchat")
    assert header["messages"][-2] == {"role": "user", "content": "Pasted:\nline one\nline two"}
    out, _ = ask(p, "/nonsense")
    assert "unknown command" in out
    out, _ = ask(p, "/help")
    assert "/regen" in out
    p.sendline("/exit")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0 and "Traceback" not in p.before


HOSTILE = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}"


def test_hostile_templates_are_refused(smollm2_mgpt, tmp_path):
    evil = tmp_path / "evil.jinja"
    evil.write_text(HOSTILE)
    r = run_minigpt("chat", "-m", smollm2_mgpt, "--chat-template", evil, input="hi\n", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: chat template (custom) refused")
    # the same template inside a model file
    tiny_llama(tmp_path / "evil.gguf", chat_template=HOSTILE)
    assert run_minigpt("convert", tmp_path / "evil.gguf", "-o", tmp_path / "evil.mgpt").returncode == 0
    r = run_minigpt("chat", "-m", tmp_path / "evil.mgpt", input="hi\n", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: chat template (file) refused" in r.stderr.strip().splitlines()[-1]


def test_resume_refuses_a_file_from_another_model(smollm2_mgpt, tmp_path):
    tiny_llama(tmp_path / "tiny.gguf")
    assert run_minigpt("convert", tmp_path / "tiny.gguf", "-o", tmp_path / "tiny.mgpt").returncode == 0
    saved = tmp_path / "tiny.mgchat"
    r = run_minigpt("chat", "-m", tmp_path / "tiny.mgpt", "--max-tokens", "3", input=f"hello\n/save {saved}\n")
    assert r.returncode == 0 and saved.exists(), r.stderr
    r = run_minigpt("chat", "-m", smollm2_mgpt, "--resume", saved, input="hi\n", timeout=120)
    assert r.returncode == 1 and "saved with another model" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(saved.read_bytes()[16:16 + int.from_bytes(saved.read_bytes()[12:16], "little")])["n_past"] > 0


def test_save_into_a_missing_folder_is_one_error_line(tmp_path):
    tiny_llama(tmp_path / "tiny.gguf")
    convert(tmp_path / "tiny.gguf", tmp_path / "tiny.mgpt")
    missing, saved = tmp_path / "no" / "such" / "x.mgchat", tmp_path / "x.mgchat"
    r = run_minigpt("chat", "-m", tmp_path / "tiny.mgpt", "--max-tokens", "3", timeout=120,
                    input=f"hello\n/save {missing}\n/save {saved}\n")
    assert r.returncode == 0 and "Traceback" not in r.stderr and "internal error" not in r.stdout, r.stderr
    assert f"error: cannot save to {missing}: folder {missing.parent} does not exist\n" in r.stdout
    assert saved.exists()                                  # and the chat went on


def test_readme_quick_start_chats(qwen2_mgpt):
    """The README's first command installs and starts this chat on the default model."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    block = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    install, _, command = block.partition(" && ")
    assert install.startswith("pip install") and command.split()[0] == "minigpt"
    r = run_minigpt(*command.split()[1:], "--temperature", "0", input="What is the capital of France?\n", timeout=300)
    assert r.returncode == 0 and "Paris" in r.stdout and "Traceback" not in r.stderr, r.stderr


def test_a_full_context_drops_the_oldest_turns(smollm2_mgpt, cache):
    p = spawn("-m", smollm2_mgpt, "--ctx", "160", "--max-tokens", "30", "--seed", "1", "--system", "Be brief.",
              "--stats", cache=cache)
    notes = []
    for i in range(6):
        out, _ = ask(p, f"Tell me fact number {i} about the sea.")
        notes.append("dropped the" in out)
        used, total = map(int, re.search(r"context (\d+)/(\d+)", out).groups())
        assert total == 160 and used <= 160
    assert any(notes)
    out, _ = ask(p, "/show")
    assert "system     Be brief." in out
    p.sendline("/exit")
    p.expect(pexpect.EOF)
    assert "Traceback" not in p.before
