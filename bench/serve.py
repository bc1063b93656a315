"""`minigpt serve` under concurrent streaming clients, against llama-cpp-python's server; and a soak test.

    python bench/serve.py                                    # 1 and 4 streams at 2 threads, 3 rounds, both servers
    python bench/serve.py --streams 1,4 --max-tokens 32 --rounds 2 --engines minigpt
    python bench/serve.py --soak                             # 200 requests from 8 clients, a third dropped
    python bench/serve.py --engines minigpt --speculate none,ngram --prompts code   # speculation on and off
    python bench/serve.py --engines minigpt,scheduler      # the server, and its scheduler without HTTP

Throughput: each server is started once (minigpt: `-m minigpt serve --parallel <largest --streams> -t T
--precision P --speculate S`, one server per --speculate mode;
llama.cpp: `$MINIGPT_LLAMA_PYTHON -m llama_cpp.server --n_threads T`, which answers one request at a time,
with --interrupt_requests False so that a new request waits instead of cutting the one streaming), warmed up
by one request, then each round runs, for every stream count C and every server in a fixed order, C
concurrent streamed chat requests (greedy, the same prompts and --max-tokens for both). Per burst: the
aggregate decode tok/s, the tokens each stream generated after its first token, summed, over the wall time
from the earliest first token to the last stream's end; and every stream's time to first token (TTFT),
from sending the request. Tokens are the server's usage when it streams one (minigpt), else the content
chunks (llama-cpp-python: one per token). Also per burst, the tok/s while every stream decodes (steady():
from the last stream's first token to the first stream's last, as llama.cpp's batched-bench measures
generation with every prompt read): the aggregate's window also holds the prompts of the streams that
started later, read while the first ones decode. Printed: median [min, max] over rounds of the aggregate tok/s,
TTFT p50 / p95 over all streams of all rounds, and the ratios C streams / 1 stream and minigpt / llama.cpp
(and speculation on / off); C streams / 1 stream also per round, each C-stream burst over the 1-stream
burst that ran seconds before it (a shared machine's speed drifts more between rounds than within one).
The `scheduler` row runs minigpt serve's scheduler (minigpt/serve/scheduler.py: its slots and engine thread,
as the server builds them) in this process and reads the replies from its jobs: the server without its
HTTP side (its event loop's work and the clients' reading, which take CPU from the engine's cores).
--prompts: free text (stories, explanations: few repeats to draft from), or
code (bench/speculate.py's rewrite of a given function, one change per stream: a reply that copies).

Soak (--soak): minigpt alone, --requests from --clients clients (each sends its next request when the
last one ends), a random third of them (seeded) dropped after a few content chunks. Checks: no 5xx; every
request not dropped well-formed (role chunk first, one finish_reason, usage, [DONE]); the server's RSS
(VmRSS of /proc/PID/status, read with every slot idle) after the soak within 10% of its RSS after a
warm-up of --clients requests; no traceback on the server's stderr. Exits 1 when a check fails.
The clients run in this process, on the cores the servers use, so they read the streams with a bare
HTTP/1.1 client (_post, on uvloop's event loop when installed) that costs a token a third of httpx's CPU;
both servers are read by the same one. Needs httpx (in minigpt's test extra) for the other requests;
the servers run in their own processes.
"""

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

try:   # the clients' event loop: uvloop's (minigpt's serve extra installs it) takes less CPU per chunk
    from uvloop import run
except ImportError:
    from asyncio import run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import CACHE, LLAMA_PY, ROOT, _empty_dir, _env, _spread, machine  # noqa: E402

MGPT = CACHE / "models" / "smollm2-135m-instruct.mgpt"
GGUF = CACHE / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT = 300   # seconds for a server to load and listen
TIMEOUT = 600         # seconds for any one request
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a walk through a busy market in a large city on a summer morning.",
    "Write a long letter to a friend about learning to play the piano as an adult.",
    "Explain how bread is made, from the wheat field to the bakery shelf.",
    "Tell the history of the bicycle, from its invention to the present day.",
    "Describe the life cycle of a star, from a cloud of gas to its end.",
    "Write a detailed guide to planting and caring for a vegetable garden.",
]


# --- the servers

class Server:
    """A server process on 127.0.0.1, ready once `ready(proc)` has returned its base URL."""

    def __init__(self, name, cmd, env=None, cwd=None, port=None):
        self.name, self.port = name, port
        self.stderr = tempfile.TemporaryFile("w+")   # a file: a pipe no one reads could fill up
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        try:
            self.url = self._ready()
        except Exception:
            self.stop()
            raise

    def _ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        if self.port is None:   # minigpt serve: its first line on stdout says where it listens
            line = self.proc.stdout.readline()
            if not line.startswith("minigpt serve: http://"):
                raise SystemExit(f"{self.name} did not start: {self.errors()[-2000:]}")
            return line.split()[2]
        url = f"http://127.0.0.1:{self.port}"
        while time.monotonic() < deadline:   # llama_cpp.server prints nothing useful: ask until it answers
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited: {self.errors()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} not ready after {START_TIMEOUT} s")

    async def stream(self, prompt, max_tokens):
        return await stream(self.url, prompt, max_tokens)

    def errors(self):
        self.stderr.seek(0)
        return self.stderr.read()

    def rss_mib(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024

    def wait_idle(self):
        """Until minigpt's /health shows every slot free (a dropped stream is freed within a step)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            h = httpx.get(self.url + "/health", timeout=TIMEOUT).json()
            if h["slots_busy"] == 0 and h["waiting"] == 0:
                return
            time.sleep(0.1)
        raise SystemExit(f"{self.name}: slots still busy a minute after the last request")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class InProcess:
    """minigpt serve's scheduler in this process (the `scheduler` row), as the server builds it from
    the same options; its replies are read from its jobs, with no HTTP in between."""

    def __init__(self, a, parallel, speculate):
        sys.path.insert(0, str(ROOT))   # this repository's minigpt, as the servers' processes get it
        import minigpt
        from minigpt.chat import encode_prompt
        from minigpt.sampling import SamplerSettings
        from minigpt.serve import scheduler

        self.model = m = minigpt.load(str(a.mgpt), threads=a.threads, n_ctx=a.ctx, precision=a.precision)
        self.scheduler = scheduler.Scheduler(m, parallel, speculate=None if speculate == "none" else speculate)
        self.scheduler.start()
        self.job = lambda prompt, max_tokens: scheduler.Job(   # a greedy chat request, as the server makes it
            encode_prompt(m.tokenizer, m.template.render([{"role": "user", "content": prompt}],
                                                         add_generation_prompt=True)),
            SamplerSettings().with_(temperature=0), max_tokens, m.template.stop)

    async def stream(self, prompt, max_tokens):
        """stream()'s answer, without HTTP."""
        r = {"ttft": None, "first": None, "end": None, "tokens": 0, "times": [], "problem": None}
        t0 = time.perf_counter()
        async for event in self.scheduler.submit(self.job(prompt, max_tokens)).events():
            if event.error:
                r["problem"] = event.error
                return r
            if event.text:
                r["times"].append(time.perf_counter())
                if r["first"] is None:
                    r["first"] = r["times"][0]
                    r["ttft"] = r["first"] - t0
            if event.finish:
                r["tokens"] = event.usage["completion_tokens"]
        r["end"] = time.perf_counter()
        return r

    def stop(self):
        self.scheduler.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def code_prompts():
    """bench/speculate.py's code task, a different number of retries asked for in each."""
    from speculate import TASKS

    message = TASKS["code"][0]
    return [message.replace("retries is 5", f"retries is {n}") for n in range(5, 13)]


def labels(engines, modes):
    """[(label, engine, speculate mode)]: a minigpt server per --speculate mode (its label names the
    mode when there are several), then llama.cpp."""
    out = []
    for e in engines:
        if e in ("minigpt", "scheduler"):
            out += [(e if len(modes) == 1 else f"{e}/{m}", e, m) for m in modes]
        else:
            out.append((e, e, None))
    return out


def start(engine, a, parallel, speculate=None):
    if engine == "scheduler":
        return InProcess(a, parallel, speculate)
    if engine == "minigpt":
        env, cwd = _env()
        cmd = [sys.executable, "-m", "minigpt", "serve", "-m", str(a.mgpt), "--port", "0",
               "--parallel", str(parallel), "-t", str(a.threads), "--ctx", str(a.ctx), "--precision", a.precision,
               "--speculate", speculate]
        return Server("minigpt", cmd, env, cwd or _empty_dir().name)
    if not a.llama_python:
        raise SystemExit("llama.cpp: set MINIGPT_LLAMA_PYTHON or --llama-python (a venv with llama-cpp-python "
                         "and its server's packages), or leave it out of --engines")
    port = free_port()
    cmd = [a.llama_python, "-m", "llama_cpp.server", "--model", str(a.gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
           "--n_ctx", str(a.ctx), "--interrupt_requests", "False", "--verbose", "False"]
    return Server("llama.cpp", cmd, cwd=_empty_dir().name, port=port)


# --- one streamed request

async def _post(url, path, body):
    """POST body (JSON) to url + path on a connection of its own: (status, the lines of the answer as they
    come, the connection's writer: closing it drops the connection). A bare HTTP/1.1 client on asyncio's
    streams: the clients share the 2 cores with the server they measure, and httpx's machinery took
    ~285 us of CPU per streamed token (a seventh of a core at 4 streams); this one ~160 us on asyncio's
    loop, ~100 us on uvloop's."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":   # a stream
        return status, _chunked_lines(reader), writer
    n = int(headers.get("content-length", -1))            # an error, most likely
    return status, _lines_of(await reader.readexactly(n) if n >= 0 else await reader.read()), writer


async def _chunked_lines(reader):
    pending = b""
    while size := int((await reader.readline()).split(b";")[0], 16):
        pending += (await reader.readexactly(size + 2))[:-2]   # the chunk, and its CRLF
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode()
    if pending:
        yield pending.decode()


async def _lines_of(data):
    for line in data.decode("utf-8", "replace").splitlines():
        yield line


async def stream(url, prompt, max_tokens, drop_after=None):
    """One streamed greedy chat request: {status, ttft, first, end, tokens, dropped, problem}.
    drop_after: close the connection after that many content chunks. problem: why the stream was not
    well-formed (None when it was, or when it was dropped before its end)."""
    body = {"messages": [{"role": "user", "content": prompt}], "stream": True, "temperature": 0,
            "max_tokens": max_tokens, "stream_options": {"include_usage": True}}
    r = {"status": None, "ttft": None, "first": None, "end": None, "tokens": 0, "times": [], "dropped": False,
         "problem": None}
    chunks, finishes, usage, done, role = 0, [], None, False, None
    t0 = time.perf_counter()
    r["status"], lines, writer = await _post(url, "/v1/chat/completions", body)
    try:
        if r["status"] != 200:
            text = "\n".join([line async for line in lines])
            r["problem"] = f"HTTP {r['status']}: {text[:200]}"
            return r
        async for line in lines:
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if not chunk.get("choices"):
                continue
            choice = chunk["choices"][0]
            role = role or choice["delta"].get("role")
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
            if choice["delta"].get("content"):
                chunks += 1
                r["times"].append(time.perf_counter())
                if r["first"] is None:
                    r["first"] = r["times"][0]
                    r["ttft"] = r["first"] - t0
                if drop_after is not None and chunks >= drop_after:
                    r["dropped"] = True
                    return r   # closing the connection (below) drops the stream
    finally:
        writer.close()
    r["end"] = time.perf_counter()
    r["tokens"] = usage["completion_tokens"] if usage else chunks
    if not done or len(finishes) != 1 or finishes[0] not in ("stop", "length") or role != "assistant":
        r["problem"] = f"malformed stream: done={done} finish_reasons={finishes} role={role!r}"
    elif chunks == 0 or r["tokens"] > max_tokens:
        r["problem"] = f"{chunks} content chunks, {r['tokens']} tokens for max_tokens {max_tokens}"
    return r


async def burst(server, n, max_tokens, prompts=PROMPTS):
    """n concurrent streams, prompts 0..n-1."""
    return await asyncio.gather(*(asyncio.wait_for(server.stream(prompts[i % len(prompts)], max_tokens), TIMEOUT)
                                  for i in range(n)))


def aggregate(runs):
    """Decode tok/s of a burst: tokens after each stream's first token over the wall time of the decoding."""
    bad = [r["problem"] for r in runs if r["problem"]]
    if bad:
        raise SystemExit(f"a stream went wrong: {bad[0]}")
    wall = max(r["end"] for r in runs) - min(r["first"] for r in runs)
    return sum(r["tokens"] - 1 for r in runs) / max(wall, 1e-9)   # one token each: no decode, 0 tok/s


def steady(runs):
    """Decode tok/s while every stream of a burst decodes: the tokens that arrived between the last stream's
    first token and the first stream's last, over that time (a stream's content chunks there, times its
    tokens per chunk: 1 unless a step sent several at once). aggregate()'s window also holds the others'
    prompts, read while the first streams already decode, and the ends of the streams that started late;
    this one is llama.cpp's batched-bench S_TG, which reads every prompt first. None if no such time."""
    start, end = max(r["times"][0] for r in runs), min(r["times"][-1] for r in runs)
    if end <= start:
        return None
    return sum(sum(start < t <= end for t in r["times"]) * r["tokens"] / len(r["times"]) for r in runs) / (end - start)


def pct(xs, q):
    """The q-th percentile, nearest rank."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


# --- throughput

def throughput(a, engines, counts):
    servers, prompts = {}, code_prompts() if a.prompts == "code" else PROMPTS
    try:
        for e, engine, mode in engines:
            servers[e] = start(engine, a, max(counts), mode)
            run(burst(servers[e], 1, 8))   # warm-up: the first request's one-time costs
        tok_s, ttft, all_in = {}, {}, {}
        for rnd in range(a.rounds):
            for c in counts:
                for e, _, _ in engines:   # A B A B: a machine that slows down touches every server alike
                    runs = run(burst(servers[e], c, a.max_tokens, prompts))
                    tok_s.setdefault((e, c), []).append(aggregate(runs))
                    all_in.setdefault((e, c), []).append(steady(runs))
                    ttft.setdefault((e, c), []).extend(r["ttft"] for r in runs)
                    print(f"round {rnd + 1}/{a.rounds}  {e:<9} {c} stream{'s' * (c > 1)}  "
                          f"{tok_s[e, c][-1]:6.1f} tok/s  tokens {[r['tokens'] for r in runs]}",
                          file=sys.stderr, flush=True)
    finally:
        for s in servers.values():
            s.stop()
    return tok_s, ttft, all_in


def report(a, engines, counts, tok_s, ttft, all_in):
    print("\naggregate decode tok/s: median [min, max] over rounds; TTFT over all streams of all rounds; "
          "all decoding: while every stream of a burst decodes (steady())")
    rows = [["server", "streams", "decode tok/s", "TTFT p50 ms", "TTFT p95 ms", f"/ {counts[0]} stream",
             "all decoding", f"/ {counts[0]} stream"]]
    engines = [e for e, _, _ in engines]
    for e in engines:
        for c in counts:
            xs, ts = tok_s[e, c], ttft[e, c]
            ys, ys1 = [y for y in all_in[e, c] if y], [y for y in all_in[e, counts[0]] if y]
            rows.append([e, str(c), _spread(xs, "{:.1f}"), f"{pct(ts, 50) * 1e3:.0f}", f"{pct(ts, 95) * 1e3:.0f}",
                         f"{statistics.median(xs) / statistics.median(tok_s[e, counts[0]]):.2f}x",
                         f"{statistics.median(ys):.1f}" if ys else "-",
                         f"{statistics.median(ys) / statistics.median(ys1):.2f}x" if ys and ys1 else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    for e in engines:   # each round's bursts run minutes apart from the other rounds' and seconds from each other
        for c in counts[1:]:
            print(f"per round, {e} {c} streams / {counts[0]}: "
                  f"{_spread([x / y for x, y in zip(tok_s[e, c], tok_s[e, counts[0]])], '{:.2f}x')}")
            per = [x / y for x, y in zip(all_in[e, c], all_in[e, counts[0]]) if x and y]
            if per:
                print(f"per round, all decoding, {e} {c} streams / {counts[0]}: {_spread(per, '{:.2f}x')}")
    servers = [e for e in engines if e.split("/")[0] == "minigpt"]   # one per --speculate mode
    if "llama.cpp" in engines:
        for e in servers:
            for c in counts:
                ratio = statistics.median(tok_s[e, c]) / statistics.median(tok_s["llama.cpp", c])
                print(f"{e} / llama.cpp at {c} stream{'s' * (c > 1)}: {ratio:.2f}x")
    if "scheduler" in engines and "minigpt" in engines:
        for c in counts:
            ratio = statistics.median(tok_s["minigpt", c]) / statistics.median(tok_s["scheduler", c])
            print(f"minigpt (through HTTP) / scheduler (in-process) at {c} stream{'s' * (c > 1)}: {ratio:.2f}x")
    if "minigpt/none" in engines:
        for e in (e for e in engines if e.startswith("minigpt/") and e != "minigpt/none"):
            print(", ".join(f"{e} / minigpt/none at {c} stream{'s' * (c > 1)}: "
                            f"{statistics.median(tok_s[e, c]) / statistics.median(tok_s['minigpt/none', c]):.2f}x"
                            for c in counts))
    # issue #15's targets, at 2 threads: 4 streams >= 2.5x one stream, and >= 3x llama.cpp's server with 4 clients
    if 1 not in counts or 4 not in counts:
        return
    med = {k: statistics.median(v) for k, v in tok_s.items()}
    for e in servers:
        print(f"targets: {e} 4 streams / 1 stream {med[e, 4] / med[e, 1]:.2f}x (>= 2.5x)" +
              (f", {e} / llama.cpp at 4 streams {med[e, 4] / med['llama.cpp', 4]:.2f}x (>= 3x)"
               if "llama.cpp" in engines else "") + f"; threads {a.threads}")
        ys = {c: [y for y in all_in[e, c] if y] for c in (1, 4)}
        if ys[1] and ys[4]:
            print(f"while every stream decodes (steady()): {e} 4 streams / 1 stream "
                  f"{statistics.median(ys[4]) / statistics.median(ys[1]):.2f}x")


# --- soak

async def soak_run(url, plan, clients, max_tokens):
    """Run plan ([(prompt, drop_after or None)]) from `clients` concurrent clients; the results in plan order."""
    results, todo = [None] * len(plan), iter(range(len(plan)))

    async def client_loop():
        for i in todo:   # one shared iterator: each client takes the next request when its last one ends
            prompt, drop = plan[i]
            try:
                results[i] = await asyncio.wait_for(stream(url, prompt, max_tokens, drop), TIMEOUT)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                results[i] = {"status": None, "dropped": False, "problem": f"{type(e).__name__}: {e}"}

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return results


def soak(a):
    rng = random.Random(a.seed)

    def plan(n):
        return [(rng.choice(PROMPTS), rng.randint(1, max(1, a.max_tokens // 2)) if rng.random() < 1 / 3 else None)
                for _ in range(n)]

    server = start("minigpt", a, a.parallel, a.speculate.split(",")[0])
    try:
        t0 = time.perf_counter()
        warm = run(soak_run(server.url, plan(a.clients), a.clients, a.max_tokens))
        server.wait_idle()
        rss0 = server.rss_mib()
        results = run(soak_run(server.url, plan(a.requests), a.clients, a.max_tokens))
        server.wait_idle()
        rss1 = server.rss_mib()
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    errors = server.errors()
    statuses = [r["status"] for r in warm + results]
    dropped = sum(r["dropped"] for r in results)
    problems = [r["problem"] for r in warm + results if r["problem"]]
    growth = rss1 / rss0 - 1
    checks = {
        "no 5xx": not any(s is not None and s >= 500 for s in statuses),
        "every request not dropped well-formed": not problems,
        "RSS growth < 10%": growth < 0.10,
        "no traceback on the server's stderr": "Traceback" not in errors,
    }
    print(f"soak: {a.requests} requests (+{a.clients} warm-up) from {a.clients} clients, {a.parallel} slots, "
          f"threads {a.threads}, max_tokens {a.max_tokens}; {dropped} dropped mid-stream; {wall:.0f} s")
    print(f"statuses: {dict(sorted((str(s), statuses.count(s)) for s in set(statuses)))}")
    print(f"RSS after warm-up {rss0:.1f} MiB, after the soak {rss1:.1f} MiB: {growth * 100:+.1f}%")
    for p in problems[:5]:
        print(f"problem: {p}")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return all(checks.values())


# ---

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mgpt", type=Path, default=MGPT)
    ap.add_argument("--gguf", type=Path, default=GGUF, help="What llama.cpp serves (the same weights).")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,4", help="Comma-separated numbers of concurrent streams.")
    ap.add_argument("-n", "--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=2048, help="Context of each slot (each server).")
    ap.add_argument("--precision", default="balanced", choices=["exact", "balanced", "fast"],
                    help="minigpt's activations (minigpt serve --precision).")
    ap.add_argument("--engines", default="minigpt,llama.cpp",
                    help="Comma-separated: minigpt, scheduler (the server's scheduler in-process, no HTTP), llama.cpp.")
    ap.add_argument("--speculate", default="ngram", help="Comma-separated minigpt serve --speculate modes "
                    "(ngram, none): a minigpt server for each (the soak: the first).")
    ap.add_argument("--prompts", default="free", choices=["free", "code"],
                    help="free: stories and explanations; code: a function to rewrite with one change.")
    ap.add_argument("--llama-python", default=LLAMA_PY)
    ap.add_argument("--soak", action="store_true", help="Run the soak test instead (minigpt only).")
    ap.add_argument("--requests", type=int, default=200, help="Soak: requests after the warm-up.")
    ap.add_argument("--clients", type=int, default=8, help="Soak: concurrent clients.")
    ap.add_argument("--parallel", type=int, default=4, help="Soak: the server's slots.")
    ap.add_argument("--seed", type=int, default=0, help="Soak: which requests are dropped, and when.")
    a = ap.parse_args()
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if set(engines) - {"minigpt", "scheduler", "llama.cpp"} or not engines:
        raise SystemExit(f"--engines {a.engines!r}: known are minigpt, scheduler, llama.cpp")
    counts = [int(c) for c in a.streams.split(",")]
    for f, needed in ((a.mgpt, {"minigpt", "scheduler"} & set(engines) or a.soak), (a.gguf, "llama.cpp" in engines and not a.soak)):
        if needed and not f.is_file():
            raise SystemExit(f"{f} not found")

    modes = [m.strip() for m in a.speculate.split(",") if m.strip()]
    if not modes or set(modes) - {"ngram", "none"}:
        raise SystemExit(f"--speculate {a.speculate!r}: known are ngram, none")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine({}).items()))
    print("load average before: " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)")
    if a.soak:
        sys.exit(0 if soak(a) else 1)
    print(f"model: {a.mgpt}" + (f" / {a.gguf}" if "llama.cpp" in engines else "") +
          f"; minigpt precision {a.precision}, speculate {','.join(modes)}; threads {a.threads}; max_tokens "
          f"{a.max_tokens}; {a.prompts} prompts; greedy; {a.rounds} rounds")
    servers = labels(engines, modes)
    report(a, servers, counts, *throughput(a, servers, counts))


if __name__ == "__main__":
    main()
