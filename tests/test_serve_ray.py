"""`minigpt serve --replicas 2` on a local Ray: two replicas behind Ray Serve's proxy, the real `openai`
client, and a stop that leaves no Ray process behind.

Needs Ray Serve (pip install "minigpt[ray]"; skipped without it). Timeouts are generous and nothing
is timed: Ray takes a while to start on a busy machine.
"""

import os
import socket
import time

import httpx
import pytest

pytest.importorskip("ray.serve", reason='needs Ray Serve: pip install "minigpt[ray]"')

from minigpt.convert import convert

from subproc import run_minigpt
from synthetic import tiny_llama
from serving import TIMEOUT, Server, chat, stream_chat

START_TIMEOUT = 600   # seconds for Ray, its Serve and two replicas to start
STOP_TIMEOUT = 300    # Serve stops its replicas gracefully, then the local Ray stops


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_ray")
    tiny_llama(d / "tiny.gguf", wtype="Q8_0", ctx=4096)
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


@pytest.fixture(scope="module")
def server(model_path):
    # two replicas of one thread each: a 2-core machine holds them
    s = Server(model_path, "--replicas", "2", "-t", "1", "--precision", "fast", start_timeout=START_TIMEOUT)
    yield s
    s.stop(STOP_TIMEOUT)


def test_a_port_in_use_is_one_line_before_ray_starts(model_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = run_minigpt("serve", "-m", model_path, "--replicas", "2", "--port", port, timeout=TIMEOUT)
    assert r.returncode == 1 and r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_ready_line_and_health_name_both_replicas(server):
    assert server.proc.poll() is None
    seen = set()
    for _ in range(20):
        h = server.health()
        assert h["status"] == "ok" and h["model"] == "tiny" and h["slots"] == 1 and h["precision"] == "fast"
        seen.add(h["replica"])
    # each replica is a process of its own, not the command's: Ray Serve spread the requests over both
    assert len(seen) == 2, seen
    assert not any(r.endswith(f":{server.proc.pid}") for r in seen), seen


def test_chat_through_the_proxy_whole_and_streamed(server):
    client = server.client(key="none")
    whole = chat(client, "Tell me about the mountains.", temperature=0, max_tokens=12)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    # either replica may answer: the same model at temperature 0 writes the same reply
    streamed, chunks = stream_chat(client, "Tell me about the mountains.", temperature=0, max_tokens=12)
    assert streamed == whole.choices[0].message.content
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason == "length"
    r = httpx.get(server.url + "/no-such-page", timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"   # the app's errors, not Ray's


def test_sigterm_stops_serve_and_ray_and_exits_0(server):
    ray_procs = _descendants(server.proc.pid)   # the local Ray: GCS, raylet, Serve's actors, the replicas
    assert len(ray_procs) >= 3, ray_procs
    assert server.stop(STOP_TIMEOUT) == 0
    deadline = time.monotonic() + STOP_TIMEOUT
    while (left := [p for p in ray_procs if _alive(*p)]) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, [_cmdline(pid) for pid, _ in left]


# --- processes, from /proc

def _stat(pid):
    """(ppid, start time, state) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()   # after the command's name, which may hold spaces
    except OSError:
        return None
    return int(fields[1]), int(fields[19]), fields[0]


def _descendants(root):
    """[(pid, start time)] of every process under root."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))):
            children.setdefault(st[0], []).append((int(name), st[1]))
    found, todo = [], [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            found.append((pid, start))
            todo.append(pid)
    return found


def _alive(pid, start):
    st = _stat(pid)
    return st is not None and st[1] == start and st[2] != "Z"   # the same process (a pid is reused), not a zombie


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")[:200]
    except OSError:
        return f"{pid} (gone)"
