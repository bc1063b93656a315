"""Run Python in a subprocess that imports the same minigpt as the tests: the installed package in CI
(`pip install . && pytest tests`), the source tree with its in-place build during development.

A plain `python -m ...` from the repository root would put the root first on sys.path and import
the uninstalled source tree instead, without its compiled extension. So every subprocess gets
python_env() (the tests' minigpt first on PYTHONPATH) and runs in NEUTRAL_CWD (an empty folder, so that
nothing in the working directory can be imported in its place).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import minigpt

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(minigpt.__file__)))
NEUTRAL_CWD = tempfile.mkdtemp(prefix="minigpt-tests-cwd-")
atexit.register(shutil.rmtree, NEUTRAL_CWD, ignore_errors=True)


def python_env(env=None):
    """os.environ updated with `env` (a None value removes the variable), the tests' minigpt first on the path."""
    e = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, e.get("PYTHONPATH")) if p)
    return e


def run_python(*args, env=None, timeout=600, input=None):
    """`python *args` with the tests' minigpt first on the path, from a neutral working directory."""
    return subprocess.run([sys.executable, *map(str, args)], env=python_env(env), cwd=NEUTRAL_CWD,
                          capture_output=True, text=True, timeout=timeout, input=input)


def run_minigpt(*args, **kw):
    """The `minigpt` command line, as `python -m minigpt ARGS`."""
    return run_python("-m", "minigpt", *map(str, args), **kw)
