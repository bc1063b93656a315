"""What the `minigpt` commands share: the command group, the help texts of common options, progress
bars on stderr, and loading a model named by -m."""

import sys

import click

from .. import hub
from ..convert import QUANT_TYPES
from ..engine import DEFAULT_KV_TYPE

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
    from ..api import Model

    return Model(_resolve(model), threads=threads, backend=backend, n_ctx=n_ctx, precision=precision, kv_type=kv_type)


def _utf8_stdout():
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
        sys.stdout.reconfigure(encoding="utf-8")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minigpt")
def cli():
    """minigpt: run quantized GPT-style language models on your CPU."""
