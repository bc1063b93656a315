"""Fetch one pinned wheel with pip, reporting its bytes as they arrive.

pip does the fetching so that the user's index configuration (PIP_INDEX_URL, pip.conf, proxies,
certificates, credentials, pip's HTTP cache) applies exactly as it would to `pip install`.
pip's own progress bar cannot be read through a pipe, so we watch the file grow instead: pip
writes the wheel into its unpack directory under $TMPDIR, then copies it to `-d`, and we point
both into a private temporary directory.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import MinigptError

POLL_SECONDS = 0.1

# what pip says when the network is the problem, to give a short reason instead of its traceback
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_NETWORK = re.compile(r"Read timed out|Connection broken|certificate verify failed|ProxyError|Max retries exceeded")


class DownloadError(MinigptError):
    """pip could not fetch a requirement; the message is a short reason (no advice: the caller knows what to do)."""


def pip_download(requirement, dest, size=None, progress=None) -> Path:
    """Download the wheel of `requirement` (e.g. "pkg==1.0") into the existing directory `dest`; returns its path.

    progress(n_bytes, total) is called as bytes arrive; total is `size` (the expected wheel size) if given.
    """
    dest = Path(dest)
    tmp, out = dest / "pip-tmp", dest / "wheel"
    tmp.mkdir()
    out.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "-q", "-d", str(out), requirement]
    # TMPDIR: where pip's unpack directory goes, so we can watch it. PIP_REQUIRE_VIRTUALENV: a
    # download changes no environment, so a config that demands a virtualenv for installs is moot.
    env = {**os.environ, "TMPDIR": str(tmp), "PIP_REQUIRE_VIRTUALENV": "0"}
    with open(dest / "pip.log", "w+", encoding="utf-8", errors="replace") as log:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        except OSError as e:
            raise DownloadError(f"cannot run pip: {e.strerror or e}") from None
        seen = 0
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                now = _wheel_bytes(dest)
                if progress and now > seen:
                    progress(now - seen, size or now)
                seen = max(seen, now)
                if finished:
                    break
        finally:
            if proc.poll() is None:   # interrupted (Ctrl-C): don't leave pip writing into a deleted directory
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
    wheels = sorted(out.glob("*.whl"))
    if proc.returncode or not wheels:
        raise DownloadError(reason(output, proc.returncode))
    return wheels[0]


def _wheel_bytes(root):
    """Size of the largest (most complete) wheel under root: pip's unpack copy or its saved copy."""
    best = 0
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".whl"):
                try:
                    best = max(best, os.stat(os.path.join(d, f)).st_size)
                except OSError:   # pip removed it between the listing and the stat
                    pass
    return best


def reason(output, returncode=1) -> str:
    """A short reason for a failed `pip download`, from its combined output."""
    if "No module named pip" in output:
        return "pip is not installed in this Python (`python -m ensurepip` installs it)"
    for pattern in (_ERRNO, _NETWORK):   # errno texts first: "Connection refused" says more than "Max retries"
        m = pattern.search(output)
        if m:
            return f"cannot reach the package index ({m.group(m.lastindex or 0).strip()})"
    if "(from versions: none)" in output:
        # no index answered, or none has the project: with retries off, pip does not say which
        return "the package index could not be reached or does not have it"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line[len("ERROR:"):].strip() for line in lines if line.startswith("ERROR:")]
    errors = [e for e in errors if len(e) > len("Exception:")]   # pip's bare "ERROR: Exception:" says nothing
    text = errors[-1] if errors else lines[-1] if lines else f"pip exited with status {returncode}"
    return text if len(text) <= 200 else text[:199] + "…"
