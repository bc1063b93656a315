"""The `minigpt` command. Every user error ends as one line on stderr and a non-zero exit."""

import json
import os
import sys
import time

import click
import numpy as np

from . import hub
from .convert import QUANT_TYPES
from .engine import DEFAULT_KV_TYPE, KV_TYPES
from .engine.speculate import SPECULATE
from .errors import MinigptError, one_line
from .kernels import MAX_THREADS

QUANTS = QUANT_TYPES   # what convert --quant takes: the converter's own list
MODEL_HELP = f"A .mgpt file, a GGUF file or a known model name (default: {hub.DEFAULT_MODEL})."
KV_HELP = "How the KV cache stores keys and values: f32, f16 (half the memory) or q8_0 (int8, about a quarter)."


def _log(msg):
    click.echo(msg, err=True)


class _Progress:
    """Byte-count progress bars on stderr, fed (increment, total[, stage]); a new stage ends the current bar
    and starts the next. A bar is drawn from its first increment on, so nothing shows when there is nothing
    to do or an error comes first; and only on a terminal, so logs get the one-line messages alone."""

    def __init__(self, label):
        self.label, self.total, self.bar, self.done = label, 1, None, 0
        self.live = sys.stderr.isatty()

    def __call__(self, n, total, stage=None):
        if not self.live:
            return
        if stage and stage != self.label:
            self.close()
            self.label = stage
        if self.bar is None:
            self.total = max(1, total)
            self.bar = click.progressbar(length=self.total, label=self.label.ljust(11), file=sys.stderr, width=32,
                                         show_percent=True, show_eta=True, item_show_func=lambda s: s)
            self.bar.__enter__()
        n = min(n, self.total - self.done)
        self.done += n
        self.bar.update(n, self._mib())

    def _mib(self):
        return f"{self.done / 2**20:.1f}/{self.total / 2**20:.1f} MiB"

    def close(self, finished=True):
        """End the bar: full if its work finished, left where it stopped if an error came first."""
        if self.bar is not None:
            if finished:
                n, self.done = self.total - self.done, self.total
                self.bar.update(n, self._mib())
            self.bar.__exit__(None, None, None)
            self.bar, self.done = None, 0

    def log(self, msg):
        """A message on a line of its own: it ends the current bar first."""
        self.close()
        _log(msg)


def _convert_with_bar(src, out, quant):
    from .convert import convert

    bar = _Progress("converting")
    try:
        return convert(src, out, quant, progress=bar)
    finally:
        bar.close()


def _resolve(model):
    """A -m value to a .mgpt path, fetching or converting it first if needed, with progress on stderr."""
    bar = _Progress("converting")
    try:
        path = hub.resolve(model, log=bar.log, progress=bar)
    except BaseException:
        bar.close(finished=False)
        raise
    bar.close()
    return path


def _load(model, threads=None, backend=None, n_ctx=None, precision="balanced", kv_type=DEFAULT_KV_TYPE):
    from .api import Model

    return Model(_resolve(model), threads=threads, backend=backend, n_ctx=n_ctx, precision=precision, kv_type=kv_type)


def _constraint_options(f):
    """--json-schema, --regex and --grammar: the options of generate and chat that constrain the output."""
    f = click.option("--grammar", "grammar_file", default=None, type=click.Path(dir_okay=False),
                     help="A Lark grammar file (llguidance's dialect) the output follows.")(f)
    f = click.option("--regex", default=None, help="A regular expression the whole output matches.")(f)
    return click.option("--json-schema", "schema_file", default=None, type=click.Path(dir_okay=False),
                        help="A JSON Schema file: the output is compact JSON that validates against it.")(f)


_speculate_option = click.option(
    "--speculate", default=None, type=click.Choice(SPECULATE),
    help="ngram: check several tokens per forward pass, guessed from the text so far (faster when the output "
         "copies from the prompt; the same greedy output).")


def _constraint(schema_file, regex, grammar_file):
    """The keywords (response_format, regex, grammar) that --json-schema / --regex / --grammar ask for."""
    from .constrain import schema_text
    from .perplexity import read_text

    if sum(x is not None for x in (schema_file, regex, grammar_file)) > 1:
        raise MinigptError("give one of --json-schema, --regex and --grammar")
    if schema_file is not None:
        return {"response_format": schema_text(read_text(schema_file), schema_file)}
    if grammar_file is not None:
        return {"grammar": read_text(grammar_file)}
    return {"regex": regex} if regex is not None else {}


def _utf8_stdout():
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
        sys.stdout.reconfigure(encoding="utf-8")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minigpt")
def cli():
    """minigpt: run quantized GPT-style language models on your CPU."""


@cli.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="The .mgpt file to write.")
@click.option("--quant", type=click.Choice(QUANTS), default=None,
              help="Weight type (default: each weight keeps its source's type, copied bit for bit; "
                   "Q2_K / Q3_K weights become q4_k, Q5_K q6_k, BF16 f16).")
@click.option("--check", is_flag=True,
              help="Then compare the converted model with the source (f32, NumPy reference) on a built-in "
                   "multilingual text: top-1 agreement, KL divergence, perplexities.")
@click.option("--precision", default=None, type=click.Choice(["exact", "balanced", "fast"]),
              help="With --check: how the converted model rounds activations.  [default: balanced]")
@click.option("--kv-type", default=None, type=click.Choice(KV_TYPES),
              help=f"With --check: the converted model's KV cache type.  [default: {DEFAULT_KV_TYPE}]")
@click.option("-t", "--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="With --check: threads.")
def convert(src, out, quant, check, precision, kv_type, threads):
    """Convert SRC, a GGUF file or a Hugging Face model folder, into a minigpt .mgpt file."""
    if not check and (precision or kv_type or threads):
        raise MinigptError("--precision, --kv-type and --threads apply to --check only")
    s = _convert_with_bar(src, out, quant)
    types = ", ".join(f"{n} {q}" for q, n in sorted(s["types"].items()))
    _log(f"wrote {out}: {s['n_params'] / 1e6:.1f}M parameters, {s['file_size'] / 2**20:.1f} MiB, "
         f"{s['bits_per_weight']:.2f} bits/weight, {s['seconds']:.1f} s")
    pairs = ", ".join(f"{k}: {n}" for k, n in s["requantized_types"].items())
    _log(f"tensors: {types}; requantized: {len(s['requantized'])}" + (f" ({pairs})" if pairs else ""))
    if check:
        _check(src, out, precision or "balanced", kv_type or DEFAULT_KV_TYPE, threads)


@cli.command()
@click.argument("name", type=click.Choice(sorted(hub.KNOWN)))
@click.option("--keep-source", is_flag=True, help="Keep the downloaded GGUF beside the converted model.")
def pull(name, keep_source):
    """Download and convert a known model into the cache; print its path."""
    bar = _Progress("converting")
    try:
        path = hub.pull(name, log=bar.log, progress=bar, keep_source=keep_source)
    except BaseException:
        bar.close(finished=False)
        raise
    bar.close()
    click.echo(path)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json):
    """The models in the cache: name, size on disk, weight types, path; then the known models not pulled."""
    rows = [_entry(e) for e in hub.entries()]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = [("NAME", "SIZE", "QUANT", "PATH")]
    for r in rows:
        size = hub.size_text(r["size"]) if r["size"] else "-"
        table.append((r["name"], size, ", ".join(r["quant"]) or "-", _where(r)))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo("   ".join(c.ljust(w) for c, w in zip(row, widths)) + "   " + row[3])


def _where(r):
    if r["path"]:
        return r["path"] + (f" (+ source {r['source']})" if r["source"] else "")
    if r["source"]:
        return f"{r['source']} (source only: `minigpt pull {r['name']}` converts it)"
    return f"not pulled: {hub.size_text(r['download'])} to download (`minigpt pull {r['name']}`)"


def _entry(e):
    """One `minigpt list` row as a dict: quant holds the 2-D weights' types ('?' for a file that does not open)."""
    from .format import MgptFile

    quant = []
    if e.path:
        try:
            quant = sorted({t.qtype for t in MgptFile(e.path).tensors.values() if len(t.shape) == 2})
        except MinigptError:
            quant = ["?"]
    return {"name": e.name, "size": e.disk_size, "quant": quant, "path": e.path and str(e.path),
            "source": e.source and str(e.source), "known": e.known is not None,
            "download": sum(p.wheel_size for p in e.known.parts) if e.known else 0}


@cli.command()
@click.argument("name")
def rm(name):
    """Delete a model from the cache: its converted file and any kept source GGUF."""
    for path in hub.remove(name):
        _log(f"deleted {path}")


@cli.command()
@click.argument("model", required=False)
@click.option("--verify", is_flag=True, help="Check every tensor's checksum (reads the whole file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model, verify, as_json):
    """Describe a model: architecture, sizes, quant types, tokenizer, chat template."""
    from . import kernels
    from .format import MgptFile
    from .tokenizer import check_fields

    path = _resolve(model)
    f = MgptFile(path)
    if verify:
        f.verify()
    c = f.config
    types = {}
    for t in f.tensors.values():
        types[t.qtype] = types.get(t.qtype, 0) + 1
    n_params = sum(int(np.prod(t.shape)) for t in f.tensors.values())
    tok = check_fields(f.tokenizer, c.vocab_size)
    d = {
        "path": str(path), "name": hub.display_name(path, c.name), "config": c.to_dict(), "n_params": n_params,
        "file_size": f.file_size, "bits_per_weight": round(8 * f.file_size / n_params, 3),
        "tensor_types": types, "checksums": "ok" if verify else "not checked",
        "tokenizer": {"model": tok.get("model"), "pre": tok.get("pre"), "n_vocab": len(tok["tokens"]),
                      "bos": tok.get("bos_token_id"), "eos": tok.get("eos_token_id")},
        "chat_template": f.chat_template, "backend": kernels.get_backend().name,
        "isa": getattr(kernels.get_backend(), "isa", lambda: None)(), "compiled_missing": kernels.core_missing(),
    }
    if as_json:
        click.echo(json.dumps(d, ensure_ascii=False, indent=2))
        return
    click.echo(f"model       {d['name']}  ({path})")
    click.echo(f"arch        {c.arch}: {c.n_layers} layers, dim {c.dim}, heads {c.n_heads} (kv {c.n_kv_heads}), "
               f"head_dim {c.head_dim}, ffn {c.hidden_dim}, context {c.context_length}")
    click.echo(f"rope        theta {c.rope_theta:g}, dims {c.rope_dim}" + (f", scaling {c.rope_scaling}" if c.rope_scaling else ""))
    click.echo(f"size        {n_params / 1e6:.1f}M parameters, {f.file_size / 2**20:.1f} MiB, {d['bits_per_weight']:.2f} bits/weight")
    click.echo("tensors     " + ", ".join(f"{n} {q}" for q, n in sorted(types.items())) +
               (", embeddings tied" if c.tied_embeddings else ""))
    t = d["tokenizer"]
    click.echo(f"tokenizer   {t['model']} ({t['pre']}), {t['n_vocab']} tokens, bos {t['bos']}, eos {t['eos']}")
    click.echo(f"checksums   {d['checksums']}")
    note = d["isa"] or (d["compiled_missing"] and f"compiled kernels missing: {d['compiled_missing']}")
    click.echo(f"backend     {d['backend']}" + (f" ({note})" if note else ""))
    click.echo("template    " + ("(none)" if not f.chat_template else ""))
    if f.chat_template:
        click.echo("\n".join("  " + line for line in f.chat_template.splitlines()))


@cli.command()
@click.option("-m", "--model", default=None, help="A .mgpt file or a known model name.")
@click.option("--special", is_flag=True, help="Parse control-token texts such as <|im_start|>.")
@click.option("--add-bos", is_flag=True, help="Prepend the BOS token.")
@click.argument("text", required=False)
def tokenize(model, special, add_bos, text):
    """Print the token ids of TEXT (or of standard input) as a JSON list."""
    from .format import MgptFile
    from .tokenizer import from_fields

    if text is None:
        text = sys.stdin.read()
    f = MgptFile(_resolve(model))
    tok = from_fields(f.tokenizer, f.config.vocab_size)
    click.echo(json.dumps(tok.encode(text, add_bos=add_bos, special=special)))


@cli.command()
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("-p", "--prompt", required=True, help="The text to continue.")
@click.option("-n", "--max-tokens", default=128, show_default=True, type=click.IntRange(0))
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(0), help="0 = greedy.")
@click.option("--top-k", default=40, show_default=True, type=click.IntRange(0), help="0 = off.")
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--min-p", default=0.05, show_default=True, type=click.FloatRange(0, 1))
@click.option("--repeat-penalty", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--seed", default=None, type=click.IntRange(0), help="Same seed + same settings = same output.")
@click.option("--stop", multiple=True, help="Stop before this text (repeatable).")
@click.option("-t", "--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="Default: physical cores.")
@click.option("--ctx", default=None, type=click.IntRange(1), help="Context length (default: the model's, at most 32768).")
@click.option("--backend", default=None, help="Kernel backend (c, numba, numpy); default $MINIGPT_BACKEND or c.")
@click.option("--precision", default="balanced", show_default=True, type=click.Choice(["exact", "balanced", "fast"]),
              help="Activations in f32 (exact), int8 (fast), or int8 but for the sensitive matmuls (balanced).")
@click.option("--kv-type", default=DEFAULT_KV_TYPE, show_default=True, type=click.Choice(KV_TYPES), help=KV_HELP)
@click.option("--echo", is_flag=True, help="Print the prompt before the continuation.")
@click.option("--stats", is_flag=True, help="Print token counts and speed to stderr at the end.")
@click.option("--show-probs", is_flag=True,
              help="One line per generated token: its probability and the likeliest alternatives; then the text.")
@_constraint_options
@_speculate_option
def generate(model, prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, seed, stop,
             threads, ctx, backend, precision, kv_type, echo, stats, show_probs, schema_file, regex, grammar_file,
             speculate):
    """Continue PROMPT, streaming the text to standard output."""
    from .repl import PROBS_N, probs_line

    _utf8_stdout()
    constrain = _constraint(schema_file, regex, grammar_file)   # a bad file fails before the model loads
    m = _load(model, threads, backend, ctx, precision, kv_type)
    if echo and not show_probs:
        click.echo(prompt, nl=False)
    t0 = time.perf_counter()
    n_prompt, text = None, []
    for step in m.steps(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, stop=stop,
                        top_n=PROBS_N if show_probs else 0, speculate=speculate, **constrain):
        if n_prompt is None:   # the first token arrives after the prefill
            n_prompt, t_prefill = m.n_past - 1, time.perf_counter() - t0
        if show_probs:
            if step.token is not None:
                click.echo(probs_line(m.tokenizer, step))
            text.append(step.text)
        else:
            sys.stdout.write(step.text)
            sys.stdout.flush()
    if show_probs:
        sys.stdout.write((prompt if echo else "") + "".join(text))
    sys.stdout.write("\n")
    if stats and n_prompt is not None:
        dt = time.perf_counter() - t0 - t_prefill
        n_gen = m.n_past - n_prompt
        _log(f"[prompt {n_prompt} tokens in {t_prefill:.2f} s; generated {n_gen} tokens in {dt:.2f} s "
             f"({n_gen / max(dt, 1e-9):.1f} tok/s); backend {m.kern.name}, {m.kv_type} KV cache, {m.threads} threads]")


CHAT_DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.1,
                 "max_tokens": 1024}


@cli.command()
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("--system", default=None, help="The system prompt.")
@click.option("--temperature", default=None, type=click.FloatRange(0), help="0 = greedy.  [default: 0.8]")
@click.option("--top-k", default=None, type=click.IntRange(0), help="0 = off.  [default: 40]")
@click.option("--top-p", default=None, type=click.FloatRange(0, 1, min_open=True), help="[default: 0.95]")
@click.option("--min-p", default=None, type=click.FloatRange(0, 1), help="[default: 0.05]")
@click.option("--repeat-penalty", default=None, type=click.FloatRange(0, min_open=True), help="[default: 1.1]")
@click.option("--seed", default=None, type=click.IntRange(0), help="Same seed + same messages = same replies.")
@click.option("--max-tokens", default=None, type=click.IntRange(0), help="Reply length cap, 0 = none.  [default: 1024]")
@click.option("--ctx", default=None, type=click.IntRange(1), help="Context length (default: the model's, at most 32768).")
@click.option("-t", "--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="Default: physical cores.")
@click.option("--resume", default=None, type=click.Path(dir_okay=False), help="Continue a chat saved with /save.")
@click.option("--chat-template", "template_file", default=None, type=click.Path(dir_okay=False),
              help="A Jinja2 chat template file to use instead of the model's.")
@click.option("--stats", is_flag=True, help="Print speed and context use after each reply.")
@click.option("--show-probs", is_flag=True, help="Show the likeliest next tokens under each generated token.")
@click.option("--backend", default=None, help="Kernel backend (c, numba, numpy); default $MINIGPT_BACKEND or c.")
@click.option("--precision", default=None, type=click.Choice(["exact", "balanced", "fast"]),
              help="How activations are rounded (see `minigpt generate --help`).  [default: balanced]")
@click.option("--kv-type", default=None, type=click.Choice(KV_TYPES),
              help=f"{KV_HELP}  [default: {DEFAULT_KV_TYPE}; with --resume, the saved chat's]")
@_constraint_options
@_speculate_option
def chat(model, system, temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens, ctx, threads, resume,
         template_file, stats, show_probs, backend, precision, kv_type, schema_file, regex, grammar_file, speculate):
    """Chat with a model in the terminal (the default model is fetched on first use)."""
    from . import chatfile
    from .api import DEFAULT_N_CTX
    from .chat import ChatSession
    from .perplexity import read_text
    from .repl import PROBS_N, Repl
    from .template import MAX_SOURCE_CHARS

    _utf8_stdout()
    constrain = _constraint(schema_file, regex, grammar_file)   # for every reply
    given = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                   repeat_penalty=repeat_penalty, seed=seed).items() if v is not None}
    if resume:   # the saved chat names its model (a hint, checked), context, precision and cache type
        saved, _ = chatfile.read_header(resume)
        model = model or chatfile.model_path(resume, saved)
        if saved["n_ctx"] <= DEFAULT_N_CTX:   # a longer one costs memory: only if --ctx asks for it
            ctx = max(ctx or 0, saved["n_ctx"])
        precision = precision or saved["model"]["precision"]
        kv_type = kv_type or saved["kv_type"]   # its own: the cache as it was; another: converted
    m = _load(model, threads, backend, ctx, precision or "balanced", kv_type or DEFAULT_KV_TYPE)
    if template_file:
        m.set_chat_template(read_text(template_file, limit=MAX_SOURCE_CHARS))
    m.template   # a broken or hostile template stops here, before any chat
    m.constraint(**constrain)   # and so does a bad schema, regex or grammar
    if resume:
        session = ChatSession.load(resume, m)
        if given:
            session.set(**given)
        if max_tokens is not None:
            session.set(max_tokens=max_tokens or None)
    else:
        settings = {**CHAT_DEFAULTS, **given}
        if max_tokens is not None:
            settings["max_tokens"] = max_tokens or None
        session = m.chat(system=system, n_ctx=ctx, **settings)
    if speculate:   # a resumed chat keeps its own otherwise
        session.set(speculate=speculate)
    repl = Repl(m, session, stats=stats, probs=PROBS_N if show_probs else 0, constrain=constrain)
    repl._banner()
    if m.is_base and not template_file:   # warn and go on, as ollama chats with a base model too
        repl.say(f"warning: {m.name} is a base model: it continues text rather than answering; "
                 f"`minigpt generate -m {model or m.path} -p TEXT` continues a text of yours")
    if resume:
        repl.replay()
    repl.run(banner=False)


@cli.command()
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("-p", "--n-prompt", default=128, show_default=True, type=click.IntRange(0), help="Prefill test length.")
@click.option("-n", "--n-gen", default=128, show_default=True, type=click.IntRange(0), help="Decode test length.")
@click.option("-t", "--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="Default: physical cores.")
@click.option("-r", "--reps", default=3, show_default=True, type=click.IntRange(1), help="Repetitions of each test.")
@click.option("--backend", default=None, help="Kernel backend; default $MINIGPT_BACKEND or c.")
@click.option("--precision", default="balanced", show_default=True, type=click.Choice(["exact", "balanced", "fast"]),
              help="Activations in f32 (exact), int8 (fast), or int8 but for the sensitive matmuls (balanced).")
@click.option("--kv-type", default=DEFAULT_KV_TYPE, show_default=True, type=click.Choice(KV_TYPES), help=KV_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench(model, n_prompt, n_gen, threads, reps, backend, precision, kv_type, as_json):
    """Measure load time, prefill and decode speed, and memory."""
    from . import bench as bench_

    r = bench_.run(_resolve(model), n_prompt, n_gen, threads, reps, backend, precision, kv_type)
    click.echo(json.dumps(r, indent=2) if as_json else bench_.format_table(r))


@cli.command()
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 = any free port.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Slots: requests generated at once, each with its own KV cache.")
@click.option("--queue", default=16, show_default=True, type=click.IntRange(0),
              help="Requests that may wait for a slot; more get 503.")
@click.option("--ctx", default=None, type=click.IntRange(2), help="Context length of each slot (default: the model's, at most 32768).")
@click.option("-t", "--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="Default: physical cores.")
@click.option("--kv-type", default=DEFAULT_KV_TYPE, show_default=True, type=click.Choice(KV_TYPES), help=KV_HELP)
@click.option("--precision", default="balanced", show_default=True, type=click.Choice(["exact", "balanced", "fast"]),
              help="How activations are rounded (see `minigpt generate --help`); fast serves more streams at once.")
@click.option("--api-key", default=None, envvar="MINIGPT_API_KEY",
              help="Require `Authorization: Bearer KEY` on /v1 (default: $MINIGPT_API_KEY, else no key).")
@click.option("--replicas", default=None, type=click.IntRange(1, 256),
              help="Run N copies under Ray Serve, behind the same address (pip install \"minigpt[ray]\").")
@click.option("--ray-address", default=None,
              help="With --replicas: the Ray cluster to run on (HOST:6379, or auto); default: a local Ray.")
@click.option("--speculate", default="ngram", show_default=True, type=click.Choice([*SPECULATE, "none"]),
              help="ngram: check several tokens per step, guessed from the text so far, as far as they are likely "
                   "enough to pay for their compute (faster when replies copy from the prompt; the same greedy "
                   "replies); none: one token per step.")
def serve(model, host, port, parallel, queue, ctx, threads, kv_type, precision, api_key, replicas, ray_address,
          speculate):
    """Serve a model over an OpenAI-compatible HTTP API, with a chat page at /."""
    from . import serve as serve_

    speculate = None if speculate == "none" else speculate
    if replicas is not None:
        if serve_.missing(serve_.NEEDS_REPLICAS):
            raise MinigptError('minigpt serve --replicas needs: pip install "minigpt[ray]"')
        from .serve import replicas as replicas_

        return replicas_.run(model, _resolve(model), replicas, ray_address, host, port, parallel, queue, ctx,
                             threads, kv_type, api_key, precision, speculate)
    if ray_address is not None:
        raise MinigptError("--ray-address goes with --replicas N")
    if serve_.missing():
        raise MinigptError('minigpt serve needs: pip install "minigpt[serve]"')
    from .serve.server import run

    run(_load(model, threads, n_ctx=ctx, precision=precision, kv_type=kv_type), host, port, parallel, queue, api_key,
        speculate)


# --- measuring: convert --check, perplexity

class _CheckProgress(_Progress):
    """_Progress whose 'checking' stage counts positions rather than bytes."""

    def _mib(self):
        return f"{self.done:,}/{self.total:,} positions" if self.label == "checking" else super()._mib()


def _check(src, out, precision, kv_type, threads):
    from .check import check_conversion
    from .kernels import get_backend

    _log(f"checking {out} ({get_backend().name} backend, {precision}, {kv_type} KV cache) against the source in "
         f"f32 (NumPy reference) on the built-in text")
    bar = _CheckProgress("dequantizing")
    try:
        r = check_conversion(src, out, precision=precision, threads=threads, progress=bar, kv_type=kv_type)
    except BaseException:
        bar.close(finished=False)
        raise
    bar.close()
    click.echo(r.line())


@cli.command()
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("-f", "--file", "path", required=True, type=click.Path(), help="The text to score (UTF-8).")
@click.option("--ctx", default=None, type=click.IntRange(3),
              help="Chunk length in tokens; the second half of each chunk is scored.  [default: 512, or the "
                   "model's context if shorter]")
@click.option("--chunks", default=None, type=click.IntRange(1), help="Score at most this many chunks.")
@click.option("-t", "--threads", default=None, type=click.IntRange(1, MAX_THREADS), help="Default: physical cores.")
@click.option("--backend", default=None, help="Kernel backend (c, numba, numpy); default $MINIGPT_BACKEND or c.")
@click.option("--precision", default="balanced", show_default=True, type=click.Choice(["exact", "balanced", "fast"]),
              help="Activations in f32 (exact), int8 (fast), or int8 but for the sensitive matmuls (balanced).")
@click.option("--kv-type", default=DEFAULT_KV_TYPE, show_default=True, type=click.Choice(KV_TYPES), help=KV_HELP)
def perplexity(model, path, ctx, chunks, threads, backend, precision, kv_type):
    """Measure perplexity on a text file, in chunks of --ctx tokens as llama.cpp's perplexity tool does."""
    from . import perplexity as ppl

    text = ppl.read_text(path)   # a missing file fails before the model loads
    m = _load(model, threads, backend, ctx, precision, kv_type)
    ctx = ctx or min(ppl.DEFAULT_CTX, m.n_ctx)
    ids = m.tokenize(text, add_bos=m.tokenizer.add_bos, special=False)
    n = len(ids) // ctx if chunks is None else min(chunks, len(ids) // ctx)
    if n:
        _log(f"perplexity: {len(ids):,} tokens, {n} chunk{'s' * (n > 1)} of {ctx} (the last {ctx - 1 - ctx // 2} "
             f"tokens of each scored); backend {m.kern.name}, {precision}, {kv_type} KV cache, {m.threads} threads")

    def on_chunk(i, n_chunks, running, seconds):
        if i == 1:
            _log(f"perplexity: {seconds:.2f} s per chunk, ETA {seconds * (n_chunks - 1):.0f} s")
        click.echo(f"[{i}]{running:.4f},", nl=i == n_chunks, err=True)

    r = ppl.perplexity_of_ids(m, ids, ctx, chunks, on_chunk)
    click.echo(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.err:.5f}")


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())   # click >= 8.2; 8.1 exits with the help


def main():
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except _NO_ARGS as e:   # `minigpt` alone: the help, as click shows it
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:   # a bad option or argument: one line too, with where help is
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        _log(f"error: {one_line(e.format_message())}{hint}")
        sys.exit(1)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _log("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()   # the reader went away (e.g. `| head`): not an error worth a message
        sys.exit(1)
    except MinigptError as e:
        _log(f"error: {one_line(e)}")
        sys.exit(1)
    except OSError as e:
        _log(f"error: {one_line(f'{e.strerror or e}' + (f': {e.filename}' if e.filename else ''))}")
        sys.exit(1)
    except MemoryError:
        _log("error: out of memory")
        sys.exit(1)
    except Exception as e:   # a bug: still one line, with a way to see more
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        _log(f"internal error: {one_line(f'{e.__class__.__name__}: {e}')} (set MINIGPT_DEBUG=1 for a traceback)")
        sys.exit(2)


if __name__ == "__main__":
    main()
