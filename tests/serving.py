"""What the tests of `minigpt serve` share: a tiny model to serve, the real server in a subprocess, and
chat helpers over the `openai` client.

Timeouts are generous and nothing is timed: a busy machine makes these tests slower, never wrong.
"""

import queue
import signal
import subprocess
import sys
import tempfile
import threading

import httpx     # the test extra has the client side and the server's stack (starlette, uvicorn)
import openai

from minigpt.convert import convert

from subproc import NEUTRAL_CWD, python_env
from synthetic import tiny_llama

KEY = "sekrit"
START_TIMEOUT = 120   # seconds for the server to load and listen on a busy machine
TIMEOUT = 120         # seconds for any one request
ENGLISH = "Tell me about the weather in the mountains."
CHINESE = "你好，请介绍一下你自己。天气怎么样？"


def tiny_model(folder, **kw):
    """Path of a tiny random Llama as .mgpt, written into `folder` (kw: tiny_llama's, e.g. chat_template).

    Its context is long enough that a reply left alone takes minutes to fill it (the tiny model writes
    newlines forever at temperature 0): only a cancel frees its slot quickly."""
    tiny_llama(folder / "tiny.gguf", wtype="Q8_0", ctx=131072, **kw)
    convert(folder / "tiny.gguf", folder / "tiny.mgpt")
    return folder / "tiny.mgpt"


class Server:
    """`python -m minigpt serve` on a free port, ready once it has printed its address."""

    def __init__(self, path, *extra, start_timeout=START_TIMEOUT, env=None, launch=subprocess.Popen):
        """launch(cmd, **popen_args) starts the command (another host's: tests/netns.py); env: python_env's."""
        self.stderr = tempfile.TemporaryFile("w+")   # a file, not a pipe: a pipe no one reads could fill up
        self.proc = launch(
            [sys.executable, "-m", "minigpt", "serve", "-m", str(path), "--port", "0", *extra],
            env=python_env(env), cwd=NEUTRAL_CWD, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            ready = lines.get(timeout=start_timeout)
        except queue.Empty:
            self.proc.kill()
            ready = ""
        assert ready.startswith("minigpt serve: http://"), (ready, self.errors())
        self.url = ready.split()[2]

    def errors(self):
        self.stderr.seek(0)
        return self.stderr.read()

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, timeout=TIMEOUT, max_retries=0)

    def health(self):
        return httpx.get(self.url + "/health", timeout=TIMEOUT).json()

    def stop(self, timeout=TIMEOUT):
        """SIGTERM, then the exit code once the server has stopped (again: the same code)."""
        if self.stderr.closed:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self.proc.stdout.close()
        assert "Traceback" not in self.errors(), self.errors()   # no bug showed on the server's side either
        self.stderr.close()
        return rc


def chat(client, content, **kw):
    """A reply to one user message, or to a whole conversation when `content` is a list of messages."""
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    return client.chat.completions.create(model="tiny", messages=messages, **kw)


def stream_chat(client, content, **kw):
    """(text, chunks) of a streamed chat reply."""
    chunks = list(chat(client, content, stream=True, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks
