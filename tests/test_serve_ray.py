"""`minigpt serve --replicas 2` on a local Ray: two replicas behind Ray Serve's proxy, the real `openai`
client, and a stop that leaves no Ray process behind. Then docs/serve.md's two-machine setup, on two
hosts in network namespaces (tests/netns.py; needs root, as CI has).

Needs Ray Serve (pip install "minigpt[ray]"; skipped without it). Timeouts are generous and nothing
is timed: Ray takes a while to start on a busy machine.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve", reason='needs Ray Serve: pip install "minigpt[ray]"')

from minigpt.convert import convert

from netns import Hosts, hosts_available
from subproc import python_env, run_minigpt
from synthetic import tiny_llama
from serving import TIMEOUT, Server, chat, stream_chat

START_TIMEOUT = 600   # seconds for Ray, its Serve and two replicas to start
NODE_TIMEOUT = 180    # seconds for a Ray node to join its cluster
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


# --- two machines

# what a client on a host checks: both addresses answer chat, and which replica each /health reaches
CLIENT = """
import collections, json, sys, httpx, openai
out = {}
for url in sys.argv[1:]:
    seen = collections.Counter(httpx.get(url + "/health", timeout=120).json()["replica"] for _ in range(8))
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=120, max_retries=0)
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=0,
                                  max_tokens=6)
    out[url] = {"replicas": sorted(seen), "reply": r.choices[0].message.content}
print(json.dumps(out))
"""


@pytest.mark.skipif(bool(hosts_available()), reason=hosts_available() or "")
def test_two_machines(model_path):
    # docs/serve.md, "Two machines": a Ray head on machine-a, a node on machine-b joining it, and
    # `minigpt serve --replicas 2 --ray-address` on machine-a; one replica per machine (1 CPU each).
    # Ray >= 2.60 authenticates with a token: every process gets the same one, as the docs say.
    ray = Path(sys.executable).with_name("ray")
    env = python_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    temp = tempfile.mkdtemp(prefix="mgray", dir="/tmp")   # short: Ray's sockets live there (108-byte paths)
    hosts = Hosts(temp)
    server = None
    try:
        a, b = hosts.ip["a"], hosts.ip["b"]
        common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
        hosts.run("a", [ray, "start", "--head", "--port", "6379", "--node-ip-address", a, "--include-dashboard",
                        "false", "--temp-dir", temp, *common], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_nodes(hosts, ray, env, 1)
        hosts.run("b", [ray, "start", "--address", f"{a}:6379", "--node-ip-address", b, *common], env,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_nodes(hosts, ray, env, 2)
        server = Server(model_path, "--replicas", "2", "-t", "1", "--ray-address", f"{a}:6379", "--host", "0.0.0.0",
                        start_timeout=START_TIMEOUT, env=env, launch=lambda cmd, **kw: hosts.run("a", cmd, **kw))
        urls = [f"http://{a}:{server.url.rsplit(':', 1)[1]}", f"http://{b}:{server.url.rsplit(':', 1)[1]}"]
        client = hosts.run("b", [sys.executable, "-c", CLIENT, *urls], env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        out, err = client.communicate(timeout=START_TIMEOUT)
        assert client.returncode == 0, err
        seen = json.loads(out)
        # each machine's proxy answers, and the two /health's name a replica on each machine
        hosts_seen = {r.split(":")[0] for url in urls for r in seen[url]["replicas"]}
        assert hosts_seen == {"machine-a", "machine-b"}, seen
        assert seen[urls[0]]["reply"] == seen[urls[1]]["reply"] != "", seen   # one model, greedy
        assert server.stop(STOP_TIMEOUT) == 0
    finally:
        if server is not None and server.proc.poll() is None:
            server.proc.kill()
        hosts.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(hosts, ray, env, n):
    """Until the cluster has n nodes alive (`ray status` on machine-a)."""
    deadline = time.monotonic() + NODE_TIMEOUT
    while time.monotonic() < deadline:
        p = hosts.run("a", [ray, "status", "--address", f"{hosts.ip['a']}:6379"], env, stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True)
        out = p.communicate(timeout=START_TIMEOUT)[0]
        if p.returncode == 0 and out.split("Active:", 1)[-1].split("Pending:", 1)[0].count("node_") >= n:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster did not reach {n} nodes")


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
