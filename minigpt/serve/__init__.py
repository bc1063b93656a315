"""`minigpt serve`: an OpenAI-compatible HTTP server (app.py: routes; protocol.py: requests checked;
scheduler.py: slots and the engine thread; server.py: uvicorn, the ready line, shutdown).

Starlette and uvicorn are an extra (pip install "minigpt[serve]"): nothing here imports them until a
server starts, so `minigpt` works without them and says what to install when serve is asked for. The same goes for
Ray Serve, which runs --replicas (replicas.py).
"""

import importlib.util

NEEDS = ("starlette", "uvicorn")
NEEDS_REPLICAS = NEEDS + ("ray",)   # --replicas: pip install "minigpt[ray]"


def missing(needs=NEEDS):
    """The packages of `needs` that are not installed."""
    return [name for name in needs if importlib.util.find_spec(name) is None]
