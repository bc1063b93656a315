"""The concrete hostile inputs of issue #12, each as a user meets it: a file or a value, the command (or
API call) that reads it, and what must happen. One list for tests/test_hostile.py (CI) and
tools/hostile.py (the table, with times and memory).

A case passes when, in a subprocess capped at MEMORY_CAP bytes of address space, it ends with exit 1 and
exactly one stderr line, `error: ...`, showing what `shows` names (an API call: a MinigptError, printed so
by API_WRAPPER), or, for a case that `works`, with exit 0; below MAX_MB of peak memory; with its error
line at most MAX_LINE characters; leaving nothing in the model cache or half-written beside it.
Reaching the memory cap (MemoryError, `out of memory`) is a failure: the cap stands in for the user's RAM.
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from subproc import NEUTRAL_CWD, python_env
from synthetic import mgchat_with_header, mgpt_with_header, tiny_llama, write_gguf

MEMORY_CAP = 1 << 30   # address space a case may reserve; a plain run reserves about 170 MB
MAX_MB = 300           # peak resident memory of a case that passes
MAX_LINE = 810         # characters of its error line: "error: " and at most 800 (errors.one_line)
HF_LLAMA = Path(__file__).parent / "fixtures" / "hf" / "llama"

NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
CENTER = '{{ "a"|center(3000000000) }}'
DOUBLING = ('{% set ns = namespace(x="a") %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}'
            "{{ ns.x }}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# runs an API snippet (sys.argv[1]) as a program would; a MinigptError becomes one `error:` line, exit 1,
# anything else a traceback
API_WRAPPER = """import sys
import minigpt
from minigpt.errors import MinigptError, one_line
try:
    exec(sys.argv[1])
except MinigptError as e:
    sys.exit(f"error: {type(e).__name__}: {one_line(e)}")
"""


class Workspace:
    """A folder of inputs, built on first use: tiny models, hostile copies, saved chats, templates."""

    def __init__(self, root):
        self.root = Path(root)
        self.cache = self.root / "cache"   # MINIGPT_CACHE of every case: it must stay empty
        self.cache.mkdir(parents=True, exist_ok=True)
        self._made = {}

    def path(self, name):
        return self.root / name

    def _once(self, name, make):
        """The path of workspace file `name`, made by make(path) the first time."""
        p = self.path(name)
        if name not in self._made:
            make(p)
            self._made[name] = p
        return p

    def gguf(self, name, **kw):
        """A tiny Llama GGUF (synthetic.tiny_llama keywords)."""
        return self._once(f"{name}.gguf", lambda p: tiny_llama(p, **{"wtype": "Q8_0", "ctx": 256, **kw}))

    def model(self, name, **kw):
        """A tiny Llama converted to .mgpt."""
        return self.converted(name, self.gguf(name, **kw))

    def converted(self, name, src):
        from minigpt.convert import convert

        return self._once(f"{name}.mgpt", lambda p: convert(src, p))

    @property
    def tiny(self):
        return self.model("tiny")

    def mgpt(self, name, change):
        """The tiny model with its header changed (synthetic.mgpt_with_header)."""
        return self._once(f"{name}.mgpt", lambda p: mgpt_with_header(self.tiny, p, change))

    def text(self, name, text):
        return self._once(name, lambda p: p.write_text(text, encoding="utf-8"))

    def binary(self, name, data):
        return self._once(name, lambda p: p.write_bytes(data))

    def fifo(self):
        return self._once("fifo", os.mkfifo)

    def hf(self, name, **config):
        """The tiny HF Llama folder of tests/fixtures with config.json keys changed."""
        import json

        def make(p):
            shutil.copytree(HF_LLAMA, p)
            c = json.loads((p / "config.json").read_text())
            (p / "config.json").write_text(json.dumps(c | config))
        return self._once(name, make)

    def saved_chat(self, name, model=None, first_message=True, change=None):
        """A chat on `model` (default: the tiny one) saved by the API after one turn (or before any), its
        header then changed by change(header dict)."""
        import minigpt

        def make(p):
            chat = minigpt.load(str(model or self.tiny), backend="numpy").chat(max_tokens=2, seed=0)
            if first_message:
                "".join(chat.send("hello"))
            chat.save(p)
            if change:
                mgchat_with_header(p, p, change)
        return self._once(f"{name}.mgchat", make)

    def gguf_with_nan(self, name, tensor="blk.0.attn_q.weight"):
        """The tiny Llama in f32 with a NaN in one weight."""
        from minigpt.convert.gguf import GGUFFile

        def make(p):
            tiny_llama(p, wtype="F32")
            offset = GGUFFile(p).tensors[tensor].offset
            with open(p, "r+b") as f:
                f.seek(offset + 4 * 5)
                f.write(np.float32("nan").tobytes())
        return self._once(f"{name}.gguf", make)

    def gguf_with_tensor(self, name, tensor_name):
        """The tiny Llama's metadata with one f32 tensor named `tensor_name`."""
        def make(p):
            meta = tiny_llama(self.path(f"{name}-meta.gguf"))
            write_gguf(p, meta, {tensor_name: ("F32", np.zeros(32, np.float32), (32,))})
        return self._once(f"{name}.gguf", make)

    def leftovers(self):
        """Files a case must not leave: anything in the cache, half-written files."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if (p.is_file() and self.cache in p.parents) or ".tmp" in p.name)


KINDS = {"hang": "hangs", "memory": "memory from small fields", "escape": "escapes (errors that were not one line)",
         "bug": "ordinary bugs"}


@dataclass
class Case:
    """One hostile input. build(workspace) -> the `minigpt` arguments (a list), or an API snippet (a str)
    run by API_WRAPPER. works: exit 0 is right. shows: texts the error line (a case that works: stdout)
    must hold. absent: files (workspace names) that must not exist afterwards (nothing converted)."""
    name: str
    kind: str                    # a key of KINDS
    build: object
    works: bool = False
    shows: tuple = ()
    input: object = None         # standard input: a str, or input(workspace) -> str
    absent: tuple = ()


@dataclass
class Result:
    command: list                # argv, as run
    display: str                 # the command, short, for a table
    returncode: int | None       # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    peak_mb: float
    leftovers: list = field(default_factory=list)

    @property
    def error_line(self):
        lines = self.stderr.splitlines()
        return lines[0] if lines else ""


def run(case, w, timeout=60):
    """Build case's input in the workspace w and run it in a subprocess: exit code, output, seconds, peak RSS."""
    what = case.build(w)
    if isinstance(what, str):   # an API snippet
        argv = [sys.executable, "-c", API_WRAPPER, what]
        display = "python -c " + _short("; ".join(filter(None, what.splitlines())), w, 100)
    else:
        argv = [sys.executable, "-m", "minigpt", *map(str, what)]
        display = "minigpt " + " ".join(_short(str(a), w) for a in what)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=NEUTRAL_CWD,
                             env=python_env({"MINIGPT_CACHE": str(w.cache)}), start_new_session=True)
        resource.prlimit(p.pid, resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
        try:
            p.stdin.write((case.input(w) if callable(case.input) else case.input or "").encode())
            p.stdin.close()
        except BrokenPipeError:
            pass
        status, peak_kb = _wait(p, t0 + timeout)
        seconds = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", "replace") for f in (out, err))
    return Result(argv, display, status, stdout, stderr, seconds, peak_kb / 1024, w.leftovers())


def _wait(p, deadline):
    """(exit code, or None if killed at the deadline; peak resident KiB of the child and its children).

    The peak is the sum of each process's VmHWM, read as they run (an upper bound: their peaks need not
    coincide); the child's children count too (the chat template renderer is one). A child's ru_maxrss
    (wait4) would also count what its parent (this process: pytest, with models loaded) held when it
    forked; it is used only when above that."""
    own, hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, {}
    while True:
        for pid in (p.pid, *_children(p.pid)):
            hwm[pid] = max(hwm.get(pid, 0), _vm_hwm(pid))
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        killed = not pid and time.monotonic() > deadline
        if killed:
            os.killpg(p.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(p.pid, 0)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            own_peak = max(hwm[p.pid], usage.ru_maxrss if usage.ru_maxrss > own else 0)
            peak = own_peak + sum(kb for pid, kb in hwm.items() if pid != p.pid)
            return (None if killed else p.returncode), peak
        time.sleep(0.01)


def _children(pid):
    """The pids of pid's children and their children (Linux /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            pass
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [c for c, parent in parents.items() if parent == pid]
        found += kids
        todo += kids
    return found


def _vm_hwm(pid):
    """Peak resident KiB of the running process pid (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def _short(text, w, n=48):
    """text for a table: workspace paths relative, control characters escaped, at most n characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.replace(str(w.root) + os.sep, ""))
    return text if len(text) <= n else f"{text[:n - 3]}..."


def problems(case, r, w, max_seconds=None):
    """What is wrong with result r of case (an empty list: it passes)."""
    bad = []
    if r.returncode is None:
        bad.append("killed at the timeout")
    elif case.works:
        if r.returncode != 0:
            bad.append(f"exit {r.returncode}, want 0: {r.error_line[:200]}")
    else:
        lines = r.stderr.splitlines()
        if r.returncode != 1:
            bad.append(f"exit {r.returncode}, want 1")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            bad.append(f"{len(lines)} stderr lines, want one `error:` line")
        if len(r.error_line) > MAX_LINE:
            bad.append(f"error line of {len(r.error_line)} characters")
    said = r.stdout if case.works else r.error_line
    bad += [f"does not show {s!r}" for s in case.shows if s not in said]
    if "MemoryError" in r.stderr or "out of memory" in r.stderr:
        bad.append("reached the memory cap")
    if r.peak_mb > MAX_MB:
        bad.append(f"peak {r.peak_mb:.0f} MB")
    if max_seconds is not None and r.seconds > max_seconds:
        bad.append(f"took {r.seconds:.1f} s")
    bad += [f"left {p}" for p in r.leftovers]
    bad += [f"wrote {name}" for name in case.absent if w.path(name).exists()]
    return bad


# --- the cases

def _chat(model, template=None, *more):
    """`minigpt chat` on model (with --chat-template template), a two-token reply to one message."""
    return ["chat", "-m", model, "--max-tokens", "2", "--seed", "0",
            *(["--chat-template", template] if template else []), *more]


def _generate(model):
    return ["generate", "-m", model, "-p", "hello", "-n", "2", "--seed", "0"]


def _api(w, code, **load):
    """An API snippet on the tiny model, loaded as m (the numpy backend: quick to start)."""
    opts = ", ".join(f"{k}={v!r}" for k, v in {"backend": "numpy", **load}.items())
    return f"m = minigpt.load({str(w.tiny)!r}, {opts})\n{code}"


def _config(name, key, value):
    """A case: the tiny model's .mgpt header says config[key] = value; `generate` reads it."""
    change = lambda m: m["config"].update({key: value})
    return Case(f"config {name}", "escape", lambda w: _generate(w.mgpt(f"config-{key}", change)),
                shows=(key, repr(value)))


def _tokenizer(name, change, shows):
    """A case: the tiny model's .mgpt header has its tokenizer fields changed by change(fields)."""
    return Case(f"tokenizer {name}", "escape",
                lambda w: _generate(w.mgpt(f"tok-{name.replace(' ', '-')}", lambda m: change(m["tokenizer"]))),
                shows=shows)


def _model_path(path):
    """change() for a saved chat: it names `path` as its model."""
    return lambda h: h["model"].update(path=str(path))


def _n_ctx(n):
    """change() for a saved chat: it claims a context (and cache) of n positions."""
    return lambda h: h.update(n_ctx=n, ring=n)


CASES = [
    # --- hangs: templates, and the model path a saved chat names
    Case("template nested range (--chat-template)", "hang",
         lambda w: _chat(w.tiny, w.text("nested.jinja", NESTED)), input="hi\n", shows=("chat template",)),
    Case("template nested range (in the model file)", "hang",
         lambda w: _chat(w.model("nested", chat_template=NESTED)), input="hi\n", shows=("chat template",)),
    Case("template center(3000000000)", "hang",
         lambda w: _chat(w.tiny, w.text("center.jinja", CENTER)), input="hi\n", shows=("chat template",)),
    Case("template doubling loop", "hang",
         lambda w: _chat(w.tiny, w.text("doubling.jinja", DOUBLING)), input="hi\n", shows=("chat template",)),
    Case("template file of 2 MB (not read whole)", "hang",
         lambda w: _chat(w.tiny, w.text("huge.jinja", "x" * (2 << 20))), input="hi\n", shows=("longer than",)),
    Case("--chat-template over a hostile file template", "hang",
         lambda w: _chat(w.model("nested", chat_template=NESTED), w.text("chatml.jinja", CHATML)),
         input="hi\n", works=True),
    Case("resume: saved model path is a FIFO", "hang",
         lambda w: ["chat", "--resume", w.saved_chat("fifo", change=_model_path(w.fifo()))],
         shows=("-m MODEL", "fifo")),
    Case("resume: saved model path is a GGUF", "hang",
         lambda w: ["chat", "--resume", w.saved_chat("gguf", change=_model_path(w.gguf("tiny")))],
         shows=("-m MODEL", "tiny.gguf")),
    Case("resume: saved model path is a known name", "hang",
         lambda w: ["chat", "--resume", w.saved_chat("known", change=_model_path("smollm2-135m-instruct"))],
         shows=("-m MODEL", "smollm2-135m-instruct")),
    Case("-m names a FIFO", "hang", lambda w: ["info", w.fifo()], shows=("fifo", "not a regular file")),
    Case("convert a FIFO", "hang", lambda w: ["convert", w.fifo(), "-o", w.path("fifo.mgpt")],
         shows=("fifo", "not a regular file"), absent=("fifo.mgpt",)),
    Case("--resume a FIFO", "hang", lambda w: ["chat", "--resume", w.fifo()], shows=("fifo", "not a regular file")),
    Case("REPL /load a FIFO (chat goes on)", "hang",
         lambda w: _chat(w.tiny), input=lambda w: f"/load {w.fifo()}\nhi\n", works=True, shows=("not a regular file",)),

    # --- memory from small fields
    Case("context_length 2^22, generate (works)", "memory",
         lambda w: _generate(w.model("ctx22", ctx=1 << 22)), works=True),
    Case("context_length 2^22, chat (works)", "memory",
         lambda w: _chat(w.model("ctx22", ctx=1 << 22)), input="hi\n", works=True),
    Case("resume: saved n_ctx 2^22", "memory",
         lambda w: ["chat", "--resume", w.saved_chat("ctx22", w.model("ctx22", ctx=1 << 22), change=_n_ctx(1 << 22))],
         input="hi\n", shows=("--ctx 4194304",)),
    Case("n_layers 2^22 (.mgpt header)", "memory",
         lambda w: _generate(w.mgpt("layers22", lambda m: m["config"].update(n_layers=1 << 22))),
         shows=("n_layers", str(1 << 22))),
    Case("n_layers 2^22 (GGUF block_count)", "memory",
         lambda w: ["convert", w.gguf("layers22", metadata={"llama.block_count": 1 << 22}), "-o", w.path("l22.mgpt")],
         shows=("n_layers", str(1 << 22)), absent=("l22.mgpt",)),
    Case("gemma3 block_count 2^32-1 (GGUF; the architecture's hook lists layers)", "memory",
         lambda w: ["convert", w.gguf("g3-layers32", arch="gemma3", window=16,
                                     metadata={"gemma3.block_count": (1 << 32) - 1}), "-o", w.path("g3.mgpt")],
         shows=("n_layers", str((1 << 32) - 1)), absent=("g3.mgpt",)),
    Case("HF vocab_size 2^22, 320-row embedding", "memory",
         lambda w: ["convert", w.hf("hf-vocab22", vocab_size=1 << 22), "-o", w.path("hf-vocab22.mgpt")],
         shows=("vocab_size", str(1 << 22)), absent=("hf-vocab22.mgpt",)),

    # --- escapes: config fields, tokenizer fields, headers, weights, options, API arguments
    _config("norm_eps string", "norm_eps", "1e-5"),
    _config("rope_theta negative", "rope_theta", -10000.0),
    _config("rope_scaling string", "rope_scaling", "linear"),
    _config("rope_dim negative", "rope_dim", -2),
    _config("sliding_window float", "sliding_window", 2.5),
    _config("heads 0", "n_heads", 0),
    _config("kv heads 0", "n_kv_heads", 0),
    _tokenizer("non-string tokens", lambda t: t.update(tokens=t["tokens"][:100] + [5] + t["tokens"][101:]),
               ("tokens", "5")),
    _tokenizer("merges 5", lambda t: t.update(merges=5), ("merges", "5")),
    _tokenizer("string token id", lambda t: t.update(eos_token_id="2"), ("eos_token_id", "2")),
    Case("deeply nested JSON header", "escape",
         lambda w: ["info", w.mgpt("nested-json", lambda m: b'{"a":' * 50_000 + b"1" + b"}" * 50_000)],
         shows=("malformed header",)),
    Case("NaN weight, convert --quant q4_0", "escape",
         lambda w: ["convert", w.gguf_with_nan("nan"), "-o", w.path("nan-q4.mgpt"), "--quant", "q4_0"],
         shows=("layers.0.wq", "nan"), absent=("nan-q4.mgpt",)),
    Case("NaN weight, convert --quant q8_0", "escape",
         lambda w: ["convert", w.gguf_with_nan("nan"), "-o", w.path("nan-q8.mgpt"), "--quant", "q8_0"],
         shows=("layers.0.wq", "nan"), absent=("nan-q8.mgpt",)),
    Case("NaN weight kept (f32), generate", "escape",
         lambda w: _generate(w.converted("nan-f32", w.gguf_with_nan("nan"))), shows=("non-finite",)),
    Case("info on an empty tensor table", "escape",
         lambda w: ["info", w.mgpt("no-tensors", lambda m: m.update(tensors=[]))], shows=("tensor table",)),
    Case("size check overflow (shape 2^62 x 2^62)", "escape",
         lambda w: ["info", w.mgpt("huge-shape", lambda m: m["tensors"][1].update(shape=[2 ** 62, 2 ** 62]))],
         shows=(str(2 ** 62),)),
    Case("-t 300", "escape", lambda w: _generate(w.tiny) + ["-t", "300"], shows=("threads", "300")),
    Case("--chat-template not UTF-8", "escape", lambda w: _chat(w.tiny, w.binary("latin1.jinja", b"{{ '\xe9' }}")),
         input="hi\n", shows=("latin1.jinja", "UTF-8")),
    Case("API eval([None])", "escape", lambda w: _api(w, "m.eval([None])"), shows=("ids[0]", "None")),
    Case("API logits() longer than n_ctx", "escape", lambda w: _api(w, "m.logits([1] * 17)", n_ctx=16),
         shows=("17", "16")),
    Case("API threads='2'", "escape", lambda w: _api(w, "", threads="2"), shows=("threads", "'2'")),
    Case("API top_k=1.5", "escape", lambda w: _api(w, "list(m.generate('hi', top_k=1.5))"), shows=("top_k", "1.5")),
    Case("API seed=-1", "escape", lambda w: _api(w, "list(m.generate('hi', seed=-1))"), shows=("seed", "-1")),
    Case("API stop=None (works: no stop strings)", "escape",
         lambda w: _api(w, "print(len(list(m.generate('hi', max_tokens=2, stop=None))))"), works=True),
    Case("API save a chat into a missing folder", "escape",
         lambda w: _api(w, f"m.chat().save({str(w.path('no/such/c.mgchat'))!r})"),
         shows=("no/such", "does not exist")),
    Case("REPL /save into a missing folder (chat goes on)", "escape",
         lambda w: _chat(w.tiny), input=f"hi\n/save {os.sep}no-such-folder{os.sep}c.mgchat\nhi\n", works=True,
         shows=("error: cannot save to", "does not exist")),

    # --- ordinary bugs
    Case("a chat saved before its first message loads", "bug",
         lambda w: ["chat", "--resume", w.saved_chat("empty", first_message=False), "--max-tokens", "2"],
         input="hi\n", works=True),
    Case("convert: tensor shapes that do not match the config", "bug",
         lambda w: ["convert", w.gguf("ffn128", metadata={"llama.feed_forward_length": 128}), "-o", w.path("ffn.mgpt")],
         shows=("shape", "128"), absent=("ffn.mgpt",)),
    Case("100 KB tensor name (.mgpt)", "bug",
         lambda w: ["info", w.mgpt("long-name", lambda m: m["tensors"][0].update(name="n" * 100_000))],
         shows=("nnn...",)),
    Case("100 KB tensor name (GGUF)", "bug",
         lambda w: ["convert", w.gguf_with_tensor("long-tensor", "n" * 100_000), "-o", w.path("long-tensor.mgpt")],
         shows=("unexpected tensor 'nnn", "for architecture llama"), absent=("long-tensor.mgpt",)),
    Case("100 KB architecture name (.mgpt)", "bug",
         lambda w: ["info", w.mgpt("long-arch", lambda m: m["config"].update(arch="x\n" * 50_000))],
         shows=("architecture",)),
    Case("100 KB model name in a chat saved with another model", "bug",
         lambda w: ["chat", "--resume", w.saved_chat("long-model-name", change=lambda h: h["model"].update(
             name="n" * 100_000, fingerprint="0" * 16)), "-m", w.tiny], input="hi\n",
         shows=("saved with another model", "tiny.mgpt (fingerprint")),
    Case("100 KB model name with terminal escapes (-m)", "bug",
         lambda w: ["info", "x\x1b[31mred\n" * 8_000], shows=("\\x1b[31mred\\n",)),
]
