"""Headless Chromium driven over the DevTools protocol, for tests of web pages; no dependency beyond Chromium.

Chromium started with --remote-debugging-pipe reads the protocol's JSON messages from its fd 3 and
writes its own to fd 4, each ended by a NUL byte: no port, no websocket library. One page (a target
attached in "flat" mode) takes commands through Browser.send(); replies are matched to commands by id,
events are dropped.
"""

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium():
    """Path of a Chromium (or Chrome) binary on PATH, or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


class Browser:
    """A headless Chromium with one page of width x height CSS pixels."""

    def __init__(self, binary, width=900, height=700, timeout=60):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="minigpt-chromium-")
        browser_in, self._out = os.pipe()
        self._in, browser_out = os.pipe()
        # moved above 4, so that placing them on 3 and 4 in the child cannot overwrite one with the other
        to_browser, from_browser = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in (browser_in, browser_out))
        os.close(browser_in)
        os.close(browser_out)

        def onto_3_and_4():   # in the child, before exec; dup2 leaves the copies inheritable
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        # --no-sandbox: Chromium's sandbox refuses to run as root (containers, CI)
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={width},{height}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=onto_3_and_4, close_fds=False)
        for fd in (to_browser, from_browser):
            os.close(fd)
        self._ids = itertools.count(1)
        self._replies = {}   # id -> queue of its one reply
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", session=self.session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self):
        buffer = b""
        with os.fdopen(self._in, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for m in messages:
                    msg = json.loads(m)
                    with self._lock:
                        q = self._replies.pop(msg.get("id"), None)
                    if q is not None:
                        q.put(msg)

    def send(self, method, session=None, **params):
        """The result of one command (raises RuntimeError on a protocol error)."""
        n, q = next(self._ids), queue.Queue()
        msg = {"id": n, "method": method, "params": params, **({"sessionId": session} if session else {})}
        with self._lock:
            self._replies[n] = q
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no reply to {method} in {self.timeout} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    # --- the page

    def page(self, method, **params):
        return self.send(method, session=self.session, **params)

    def goto(self, url):
        self.evaluate("window.leaving = true")   # gone once the new document is there
        self.page("Page.navigate", url=url)
        self.wait_for("!window.leaving && document.readyState === 'complete'")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression, timeout=None):
        """Poll until the expression is truthy in the page; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout or self.timeout} s: {expression}")
            time.sleep(0.05)
        return value

    def type_text(self, text):
        """Text into the focused element, as a keyboard (or an input method, for Chinese) would put it."""
        self.page("Input.insertText", text=text)

    def press(self, key, code, key_code):
        for kind in ("keyDown", "keyUp"):
            self.page("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=key_code,
                      **({"text": "\r"} if key == "Enter" and kind == "keyDown" else {}))

    def click(self, selector):
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self):
        """The page as PNG bytes."""
        return base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])

    def close(self):
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        shutil.rmtree(self.profile, ignore_errors=True)
