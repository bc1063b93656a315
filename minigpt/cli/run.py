"""The commands that run a model: generate, chat, bench, serve, perplexity."""

import json
import sys
import time

import click

from ..engine import DEFAULT_KV_TYPE, KV_TYPES
from ..engine.speculate import SPECULATE
from ..errors import MinigptError
from ..kernels import MAX_THREADS
from .common import KV_HELP, MODEL_HELP, _load, _log, _resolve, _utf8_stdout, cli

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
    from ..constrain import schema_text
    from ..perplexity import read_text

    if sum(x is not None for x in (schema_file, regex, grammar_file)) > 1:
        raise MinigptError("give one of --json-schema, --regex and --grammar")
    if schema_file is not None:
        return {"response_format": schema_text(read_text(schema_file), schema_file)}
    if grammar_file is not None:
        return {"grammar": read_text(grammar_file)}
    return {"regex": regex} if regex is not None else {}


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
    from ..repl import PROBS_N, probs_line

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
    from .. import chatfile
    from ..api import DEFAULT_N_CTX
    from ..chat import ChatSession
    from ..perplexity import read_text
    from ..repl import PROBS_N, Repl
    from ..template import MAX_SOURCE_CHARS

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
    from .. import bench as bench_

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
    from .. import serve as serve_

    speculate = None if speculate == "none" else speculate
    if replicas is not None:
        if serve_.missing(serve_.NEEDS_REPLICAS):
            raise MinigptError('minigpt serve --replicas needs: pip install "minigpt[ray]"')
        from ..serve import replicas as replicas_

        return replicas_.run(model, _resolve(model), replicas, ray_address, host, port, parallel, queue, ctx,
                             threads, kv_type, api_key, precision, speculate)
    if ray_address is not None:
        raise MinigptError("--ray-address goes with --replicas N")
    if serve_.missing():
        raise MinigptError('minigpt serve needs: pip install "minigpt[serve]"')
    from ..serve.server import run

    run(_load(model, threads, n_ctx=ctx, precision=precision, kv_type=kv_type), host, port, parallel, queue, api_key,
        speculate)


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
    from .. import perplexity as ppl

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
