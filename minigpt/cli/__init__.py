"""The `minigpt` command. Every user error ends as one line on stderr and a non-zero exit.

The commands are in models.py (convert, pull, list, rm, info, tokenize) and run.py (generate, chat,
bench, serve, perplexity); main() runs the group, common.cli, and turns every error into that line."""

import os
import sys

import click

from ..errors import MinigptError, one_line
from . import models, run   # importing them adds their commands to cli
from .common import QUANTS, _log, cli

__all__ = ["QUANTS", "cli", "main", "models", "run"]

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
