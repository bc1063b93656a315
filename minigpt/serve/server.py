"""Run the server: listen, start uvicorn over the app, say where once ready, shut down gracefully.

SIGTERM or Ctrl-C: uvicorn stops accepting connections and waits for the requests in flight (streams
included) to end; then the app's lifespan stops the engine thread, and the process exits 0. A second
Ctrl-C stops it without waiting.

uvicorn runs on uvloop and parses HTTP with httptools when they are installed (the serve extra installs
them; uvloop is not for Windows), else on asyncio and h11: the event loop then takes about half again as
much CPU per streamed token, CPU the engine's threads share (docs/performance.md, "Several streams:
longer shares and prefetching").
"""

import signal
import socket
import sys

import uvicorn

from ..errors import MinigptError
from . import app
from .scheduler import Scheduler


class _Server(uvicorn.Server):
    """uvicorn's server that prints one line once it accepts connections."""

    def __init__(self, config, ready_line):
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            print(self.ready_line, flush=True)


def listen(host, port):
    """A listening socket on host:port (port 0: any free one), or a one-line error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, UnicodeError) as e:
        raise MinigptError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None


def url(host, port):
    """The server's address as a client writes it (an IPv6 host in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(model, host="127.0.0.1", port=8080, parallel=1, queue=16, api_key=None, speculate=None):
    """Serve `model` (an api.Model) until SIGTERM / Ctrl-C; speculate: the scheduler's ('ngram' or None)."""
    model.template   # a broken or hostile chat template stops here, before the first request
    model_id = app.model_id(model.path)
    sock = listen(host, port)
    config = uvicorn.Config(app.create_app(model, Scheduler(model, parallel, queue, speculate), model_id, api_key),
                            log_level="warning", access_log=False, timeout_graceful_shutdown=None)
    ready = (f"minigpt serve: {url(*sock.getsockname()[:2])} (model {model_id}, {parallel} slot"
             f"{'s' * (parallel > 1)}, context {model.n_ctx})")
    server = _Server(config, ready)
    # SIGTERM (a service manager) and Ctrl-C are how a server is asked to stop: once uvicorn has shut
    # down gracefully it raises the signal again for the handler it found, this one, so a stop exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    server.run(sockets=[sock])
    if not server.started:   # uvicorn logged why
        sys.exit(1)
