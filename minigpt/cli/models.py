"""The commands that manage model files: convert (and its --check), pull, list, rm, info, tokenize."""

import json
import sys

import click
import numpy as np

from .. import hub
from ..engine import DEFAULT_KV_TYPE, KV_TYPES
from ..errors import MinigptError
from ..kernels import MAX_THREADS
from .common import QUANTS, _log, _Progress, _resolve, cli

def _convert_with_bar(src, out, quant):
    from ..convert import convert

    bar = _Progress("converting")
    try:
        return convert(src, out, quant, progress=bar)
    finally:
        bar.close()


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
    from ..format import MgptFile

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
    from .. import kernels
    from ..format import MgptFile
    from ..tokenizer import check_fields

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
    from ..format import MgptFile
    from ..tokenizer import from_fields

    if text is None:
        text = sys.stdin.read()
    f = MgptFile(_resolve(model))
    tok = from_fields(f.tokenizer, f.config.vocab_size)
    click.echo(json.dumps(tok.encode(text, add_bos=add_bos, special=special)))


# --- measuring: convert --check, perplexity

class _CheckProgress(_Progress):
    """_Progress whose 'checking' stage counts positions rather than bytes."""

    def _mib(self):
        return f"{self.done:,}/{self.total:,} positions" if self.label == "checking" else super()._mib()


def _check(src, out, precision, kv_type, threads):
    from ..check import check_conversion
    from ..kernels import get_backend

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
