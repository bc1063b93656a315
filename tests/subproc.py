"""Run Python in a subprocess that imports the same minigpt as the tests: the installed package in CI
(`pip install . && pytest tests`), the source tree with its in-place build during development.

A plain `python -m ...` from the repository root would put the root first on sys.path and import
the uninstalled source tree instead, without its compiled extension.
"""

import os
import subprocess
import sys
import tempfile

import minigpt

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(minigpt.__file__)))


def run_python(*args, env=None, timeout=600, input=None):
    """`python *args` with the tests' minigpt first on the path, from a neutral working directory."""
    e = {**os.environ, **(env or {})}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, e.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *args], env=e, cwd=tempfile.gettempdir(), capture_output=True,
                          text=True, timeout=timeout, input=input)


def run_minigpt(*args, **kw):
    """The `minigpt` command line, as `python -m minigpt ARGS`."""
    return run_python("-m", "minigpt", *map(str, args), **kw)
