"""`minigpt serve --replicas N`: N copies of the server under Ray Serve, behind one address.

Each replica is a Ray actor (a process of its own, on any machine of the cluster) that loads the model
once and runs the same Starlette app as `minigpt serve` (app.py), with its own scheduler and slots.
Ray Serve's proxy listens on --host/--port and gives each request to one of the replicas, the less
busy of two it picks at random. /health names the replica that answered (host:pid).

Without --ray-address a local Ray starts for the server and stops with it; with one, the server joins
that cluster and, when it stops, shuts down Ray Serve there (the cluster keeps running).
"""

import logging
import os
import signal
import threading

from .. import hub
from ..api import context_length, default_threads
from ..engine import DEFAULT_KV_TYPE
from ..errors import MinigptError, one_line
from ..format import MgptFile
from .app import model_id

APP = "minigpt"   # the Ray Serve application's name
# requests Ray Serve lets a replica hold beyond its slots and wait queue: the replica's own 503 (in
# OpenAI's shape) answers an excess rather than Ray's router holding it, and /health gets through a busy one
SPARE_REQUESTS = 8


class ReplicaApp:
    """An ASGI app that builds the server's app on its first call (the lifespan's startup), inside the
    replica: what crosses to the replica is the settings, and the model loads where it runs."""

    def __init__(self, **settings):
        self.settings, self.app = settings, None

    async def __call__(self, scope, receive, send):
        if self.app is None:
            self.app = build_app(**self.settings)
        await self.app(scope, receive, send)


def build_app(model, n_ctx, threads, kv_type, precision, parallel, queue, api_key, speculate=None):
    from ..api import Model
    from .app import create_app
    from .scheduler import Scheduler

    m = Model(hub.resolve(model), threads=threads, n_ctx=n_ctx, precision=precision, kv_type=kv_type)
    m.template   # a broken chat template fails the replica's start, not its first request
    return create_app(m, Scheduler(m, parallel, queue, speculate), model_id(m.path), api_key)


class Replica:
    """The deployment: Ray Serve runs ReplicaApp in each of its replicas (serve.ingress)."""


def run(model, path, replicas, address=None, host="127.0.0.1", port=8080, parallel=1, queue=16, n_ctx=None,
        threads=None, kv_type=DEFAULT_KV_TYPE, api_key=None, precision="balanced", speculate=None):
    """Serve the model `model` (a -m value; `path`: its .mgpt file here) from `replicas` replicas under
    Ray Serve until SIGTERM / Ctrl-C. Each replica resolves `model` itself: a path must hold the same
    file on every machine, a known name is fetched where it is missing."""
    import ray
    from ray import serve

    n_ctx = context_length(MgptFile(path).config, n_ctx)   # a bad file or --ctx fails here, before Ray starts
    threads = threads or max(1, default_threads() // replicas)
    model = model or hub.DEFAULT_MODEL
    if os.path.exists(os.path.expanduser(model)):
        model = os.path.abspath(os.path.expanduser(model))   # the replicas' working folder is not ours
    port = free_port(host, port)
    if address is None:   # "local": a new Ray of our own, even when one runs here already
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, replicas * threads), include_dashboard=False,
                 logging_level=logging.WARNING)
    else:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as e:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                    "; if the cluster uses token authentication (Ray's default since 2.60), set RAY_AUTH_MODE=token "
                    "and give this machine the head's token (~/.ray/auth_token, or RAY_AUTH_TOKEN)")
            raise MinigptError(f"{one_line(e)}{hint}") from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)   # its progress lines; the ready line says it
    stop = threading.Event()
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}   # the replicas' warnings still show here
        serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
        settings = dict(model=model, n_ctx=n_ctx, threads=threads, kv_type=kv_type, precision=precision,
                        parallel=parallel, queue=queue, api_key=api_key, speculate=speculate)
        deployment = serve.deployment(serve.ingress(ReplicaApp(**settings))(Replica), name=APP).options(
            num_replicas=replicas, ray_actor_options={"num_cpus": threads},
            max_ongoing_requests=parallel + queue + SPARE_REQUESTS)
        try:
            serve.run(deployment.bind(), name=APP, route_prefix="/", logging_config=quiet)
        except Exception as e:   # a replica that could not start: Ray shows its traceback above, in its log lines
            raise MinigptError(f"the replicas did not start (their errors are above): {one_line(e)}") from None
        from .server import url
        print(f"minigpt serve: {url(host, port)} (model {model_id(path)}, {replicas} replica"
              f"{'s' * (replicas > 1)} on Ray Serve, {parallel} slot{'s' * (parallel > 1)} and {threads} thread"
              f"{'s' * (threads > 1)} each, context {n_ctx})", flush=True)
        # SIGTERM (a service manager) and Ctrl-C ask the server to stop: the replicas finish the
        # requests in flight as Serve shuts down (its graceful timeout), then a local Ray stops
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):   # a second Ctrl-C must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        serve.shutdown()
        ray.shutdown()


def free_port(host, port):
    """`port` (0: any) if it is free on host now, for Ray Serve's proxy to listen on: one taken is a
    one-line error here rather than a traceback from inside Ray, and the proxy cannot pick one itself."""
    from .server import listen

    with listen(host, port) as sock:
        return sock.getsockname()[1]
