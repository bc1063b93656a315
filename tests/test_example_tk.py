"""examples/tk_chat.py on a virtual X server (Xvfb): the window built in this process and driven through
its widgets (what the transcript says is read from the Text widget), and the real script run as a
program and driven from outside with xdotool (what it shows is read from screenshots).

Needs Xvfb and tkinter (and xdotool and xwd for the script run); without them these tests skip.
"""

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.convert import convert

from subproc import python_env
from synthetic import tiny_llama

tk = pytest.importorskip("tkinter", reason="tkinter is not available (on Debian: apt-get install python3-tk)")
if not shutil.which("Xvfb"):
    pytest.skip("Xvfb is not installed (on Debian: apt-get install xvfb)", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tk_chat.py"
SLOW_TOKEN = 0.02   # seconds added to each decoded token, so that Stop lands mid-reply


@pytest.fixture(scope="module")
def display():
    """A virtual X server on a display it picks itself (-displayfd), as $DISPLAY while the tests run."""
    r, w = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                              pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()   # written once the server takes connections; "" if it died
    if not number:
        server.kill()
        pytest.skip("Xvfb did not start")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", f":{number}")
        yield f":{number}"
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def tk_chat():
    """The example, imported from its file (examples/ is not a package)."""
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} is not here (tests run outside the source tree)")
    spec = importlib.util.spec_from_file_location("tk_chat", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tk")
    tiny_llama(d / "tiny.gguf", wtype="Q8_0", ctx=256)
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


def pump(app, until, what, timeout=120):
    """Run the window's event loop until until() holds."""
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        app.root.update()
        time.sleep(0.005)


@pytest.fixture
def open_app(display, tk_chat):
    """open_app(model, **chat_options): the example's window, once the model has loaded (or failed to);
    closed at the end as a user would close it."""
    apps = []

    def open_app(model, **chat_options):
        app = tk_chat.App(tk.Tk(), str(model), **chat_options)
        apps.append(app)
        pump(app, lambda: app.state != "loading", "the model to load")
        return app

    yield open_app
    for app in apps:
        app.quit()


def slow_down(app, monkeypatch):
    """Make each decoded token take SLOW_TOKEN longer (the tiny model is otherwise done in a blink)."""
    decode = app.model.engine.decode_step

    def slow(*args, **kw):
        time.sleep(SLOW_TOKEN)
        return decode(*args, **kw)

    monkeypatch.setattr(app.model.engine, "decode_step", slow)


def focus_entry(app):
    """Give the input box the keyboard focus, and wait until the X server has: key events go to the focus."""
    app.entry.focus_force()
    pump(app, lambda: app.root.focus_get() is app.entry, "the keyboard focus")


def type_and_send(app, text):
    assert app.state == "idle", app.status.get()
    focus_entry(app)
    app.entry.insert("end", text)
    app.entry.event_generate("<Return>")


def transcript(app):
    return app.transcript.get("1.0", "end-1c")


def enabled(button):
    return not button.instate(["disabled"])


# --- the window, in this process

def test_stop_mid_reply_keeps_what_was_written(open_app, tiny, monkeypatch):
    app = open_app(tiny, seed=1, temperature=0.9)
    slow_down(app, monkeypatch)
    assert "context 0/256" in app.status.get()
    assert enabled(app.send_button) and not enabled(app.stop_button)

    type_and_send(app, "tell me everything")
    assert app.state == "replying" and app.entry.get("1.0", "end-1c") == ""
    assert enabled(app.stop_button) and not enabled(app.send_button) and not enabled(app.new_button)
    head = "You: tell me everything\nAssistant: "
    pump(app, lambda: len(transcript(app)) > len(head) + 5, "the reply to stream")
    app.stop_button.invoke()
    pump(app, lambda: app.state == "idle", "the reply to stop")

    chat = app.chat
    reply = chat.history[-1]["content"]
    assert chat.last.stop == "cancelled" and 0 < chat.last.reply_tokens < 100
    assert transcript(app) == head + reply + " [stopped]\n\n"      # the window shows what the history kept
    assert enabled(app.send_button) and not enabled(app.stop_button)
    assert f"context {chat.n_past}/256" in app.status.get() and "tok/s" in app.status.get()

    monkeypatch.undo()                                              # full speed again
    type_and_send(app, "and again")                                 # the session goes on after a stop
    pump(app, lambda: app.state == "idle", "the second reply")
    assert transcript(app).count("You: ") == 2

    app.new_button.invoke()
    assert transcript(app) == "" and chat.history == [] and chat.n_past == 0


def test_stop_before_the_reply_starts(open_app, tk_chat, tiny, monkeypatch):
    # Stop pressed before the worker thread has begun to read the reply: it must still stop the reply,
    # before its first token
    app = open_app(tiny, seed=1, temperature=0.9)
    slow_down(app, monkeypatch)
    reply = tk_chat.reply_worker

    def late_reply(*args, **kw):
        time.sleep(0.2)   # a worker thread slow to get going
        return reply(*args, **kw)

    monkeypatch.setattr(tk_chat, "reply_worker", late_reply)
    type_and_send(app, "hello")
    app.stop_button.invoke()
    pump(app, lambda: app.state == "idle", "the reply to stop")
    assert app.chat.last.stop == "cancelled" and app.chat.last.reply_tokens == 0


def test_stop_while_reading_a_long_message(open_app, tiny, monkeypatch):
    # the session drops a turn stopped before its message was read: the window says so
    app = open_app(tiny, seed=1)
    prefill = app.model.engine.prefill

    def slow(*args, **kw):
        time.sleep(0.3)
        return prefill(*args, **kw)

    monkeypatch.setattr(app.model.engine, "prefill", slow)
    type_and_send(app, "word " * 30)   # more than one prefill step (minigpt.chat.PREFILL_STEP tokens)
    app.stop_button.invoke()
    pump(app, lambda: app.state == "idle", "the reading to stop")
    assert app.chat.last.stop == "cancelled" and app.chat.history == []
    assert transcript(app).endswith("Assistant: [stopped: the message was not read, the model will not see it]\n\n")


def test_enter_sends_and_shift_enter_adds_a_line(open_app, tiny):
    app = open_app(tiny, seed=1, max_tokens=3)
    focus_entry(app)
    app.entry.insert("end", "one")
    app.entry.event_generate("<Shift-Return>")
    app.entry.insert("end", "two")
    assert app.state == "idle" and app.entry.get("1.0", "end-1c") == "one\ntwo"
    app.entry.event_generate("<Return>")
    pump(app, lambda: app.state == "idle", "the reply")
    assert app.chat.history[0] == {"role": "user", "content": "one\ntwo"}
    assert app.chat.last.stop == "length"


def test_a_model_that_does_not_load(open_app, tmp_path):
    app = open_app(tmp_path / "missing.mgpt")
    assert app.state == "failed" and "could not load" in app.status.get()
    assert not enabled(app.send_button) and not enabled(app.new_button)


def test_chinese_with_the_real_model(open_app, smollm2_mgpt):
    app = open_app(smollm2_mgpt, seed=0, max_tokens=24)
    type_and_send(app, "你好！")
    seen = set()   # transcript lengths while replying: more than one means the reply streamed in pieces

    def done():
        seen.add(len(transcript(app)))
        return app.state == "idle"

    pump(app, done, "the reply")
    head = "You: 你好！\nAssistant: "
    reply = app.chat.history[-1]["content"]
    assert app.chat.last.stop in ("eos", "length") and reply.strip()
    assert transcript(app) == head + reply + "\n\n"
    assert len(seen) > 2
    assert "tok/s" in app.status.get()


# --- the real script, driven from outside

def xdotool(*args):
    return subprocess.run(["xdotool", *map(str, args)], capture_output=True, text=True, timeout=60,
                          check=True).stdout.split()


def screenshot(window):
    """The window's pixels, [height, width, 3] uint8 RGB, from `xwd` (a header, a colormap, then rows)."""
    data = subprocess.run(["xwd", "-silent", "-id", str(window)], capture_output=True, timeout=60,
                          check=True).stdout
    h = struct.unpack(">25I", data[:100])
    size, width, height, lsb_first, bits, row_bytes, n_colors = h[0], h[4], h[5], h[7] == 0, h[11], h[12], h[19]
    assert bits == 32, f"expected a 24-bit screen, xwd says {bits} bits per pixel"
    rows = np.frombuffer(data, np.uint8, row_bytes * height, size + 12 * n_colors).reshape(height, row_bytes)
    pixels = rows[:, :4 * width].reshape(height, width, 4)
    return pixels[:, :, 2::-1] if lsb_first else pixels[:, :, 1:]


def wait_for(condition, what, timeout=120):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(not (shutil.which("xdotool") and shutil.which("xwd")), reason="needs xdotool and xwd")
def test_the_script_under_xvfb(display, smollm2_mgpt, tmp_path):
    app = subprocess.Popen([sys.executable, str(EXAMPLE), "-m", str(smollm2_mgpt)], env=python_env(), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def text_lines():
        """Lines of dark text in the transcript (the window's top 400 rows, left of the scrollbar)."""
        dark = (screenshot(window)[:400, 12:680] < 96).all(axis=2).any(axis=1)
        return int(np.sum(dark[1:] & ~dark[:-1]))

    def idle_again():
        """The status line is long again: it tells the last reply's speed, no longer "replying…"."""
        dark = (screenshot(window)[-16:] < 96).all(axis=2).any(axis=0)
        return np.flatnonzero(dark).max(initial=0) > 300

    def send():
        assert app.poll() is None, "the program ended"
        xdotool("key", "Return")   # does nothing until the model is loaded: pressed until the message shows
        return text_lines() > 0

    try:
        window = xdotool("search", "--sync", "--onlyvisible", "--name", "minigpt chat")[0]
        xdotool("windowfocus", "--sync", window)
        assert text_lines() == 0
        xdotool("type", "--delay", 10, "Tell me a long story about a dragon.")
        wait_for(send, "the message to be sent")
        wait_for(lambda: text_lines() >= 4 or idle_again(), "the reply to stream")
        xdotool("key", "Escape")   # Stop, most likely mid-reply
        wait_for(idle_again, "the reply to stop")
        assert text_lines() >= 3   # the message and what was written of the reply stay
        xdotool("key", "ctrl+q")
        app.wait(60)
    finally:
        if app.poll() is None:
            app.kill()
        out, err = app.communicate()
        print(err, file=sys.stderr)   # shown by pytest if the test fails
    assert app.returncode == 0 and err == "" and out == ""
