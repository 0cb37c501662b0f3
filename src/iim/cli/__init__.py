"""The ``iim`` command line: ``iim extract | train | score | sweep | grid | report | prototypes | predict | negatives |
cache | demo``.

The one command layer, at the top of the package: one module per command here (``iim/cli/<command>.py``),
the click options several share in :mod:`iim.cli.options`; the library below never imports ``iim.cli``.
This file only assembles the commands (each imported when used), turns :class:`~iim.errors.IIMError`
into a one-line ``Error: ...`` (exit 2), and provides the ``iim-extract`` / ``iim-train`` / ``iim-score`` /
``iim-sweep`` shortcuts.
"""
from __future__ import annotations

import errno
import importlib

import click

from .._version import __version__
from ..errors import IIMError

# subcommand -> ("module:attribute" of its click command, its one-line help). The command is imported only
# when used; `iim --help` lists the help lines from here, so it imports none of the commands (nor torch).
# tests/test_light.py checks each line against the command's own short help.
COMMANDS = {
    "extract": ("iim.cli.extract:extract",
                "Stage one: run the frozen CLIP image encoder once and write global + patch features to a cache."),
    "train": ("iim.cli.train:train", "Train IIM (or CoOp, LoCoOp, Local-Prompt) prompts on a cached train split."),
    "score": ("iim.cli.score:score",
              "Score a trained run (or zero-shot) on the cache's test and OOD splits with every evaluator."),
    "sweep": ("iim.cli.sweep:sweep", "Sweep k and alpha in ONE pass over the cache (one sorted top-k_max; alpha "
              "is linear) for a run or zero-shot."),
    "grid": ("iim.cli.grid:grid", "Train and score a grid of training options: one run folder per point, one "
             "table, a report and figures."),
    "report": ("iim.cli.report:report_cmd",
               "Mean and std over several scored runs (e.g. seeds 1, 2, 3), as the paper reports (SPEC §5)."),
    "prototypes": ("iim.cli.prototypes:prototypes_cmd",
                   "Fig. 3: pairwise cosines and t-SNE of each run's learned ID prototypes, side by side."),
    "predict": ("iim.cli.predict:predict",
                "Flag new images: score each with a run's detector, decide in / out, name its class."),
    "negatives": ("iim.cli.negatives:negatives",
                  "Mine negative labels (NegLabel's NegMining; CSP's pool too) for the cache's ID classes."),
    "cache": ("iim.cli.cache:cache", "Inspect and check feature caches written by 'iim extract'."),
    "demo": ("iim.cli.demo:demo", "Run the method end to end, offline, in a few minutes on a CPU."),
}


def load_command(name: str) -> click.Command:
    """The click command ``iim NAME`` (its module imported now)."""
    module, attr = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), attr)


def _shorten(text: str, limit: int) -> str:
    """``text``, cut at a word to at most ``limit`` characters ("..." marks the cut)."""
    return text if len(text) <= limit else text[:limit - 3].rsplit(" ", 1)[0] + "..."


class _Group(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        return load_command(name) if name in COMMANDS else None

    def format_commands(self, ctx, formatter):
        """The command list of ``iim --help`` from :data:`COMMANDS`, without importing any command."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, _shorten(text, limit)) for name, (_, text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iim")
def iim():
    """Few-shot OOD detection with CLIP: Intra-Image Mining + S-MCM on a frozen-feature cache.

    \b
    Stage one:  iim extract --benchmark imagenet --shots 16 --seed 1
    Stage two:  iim train --cache cache/imagenet
                iim score --alpha 1.0 --k 50
    """


def os_error_message(e: OSError) -> str:
    """What failed, what was kept, what to do. Every iim write is atomic (whole chunks, epochs, files)."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device while writing{where}; everything finished before (whole cache "
                f"chunks, training epochs, result files) is kept: free some space and run the same command "
                f"again (extraction resumes, 'iim train --resume' continues)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where} ({e.strerror}); choose a writable folder (--out) or fix its permissions"
    return f"{e.strerror or e}{':' + where if where else ''} ({type(e).__name__})"


def _run(command: click.Command, **kw):
    from ..log import console_handler
    console_handler()       # stage messages (logger "iim") to stderr, above any progress bar
    try:
        return command.main(standalone_mode=False, **kw)
    except IIMError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(2)
    except click.UsageError as e:                 # bad flag or value: one line, like every other error
        click.echo(f"Error: {e.format_message()}", err=True)
        raise SystemExit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        raise SystemExit(130)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code)
    except OSError as e:                          # disk full, permissions, ...: one line, not a traceback
        click.echo(f"Error: {os_error_message(e)}", err=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        raise SystemExit(130)


def _exit(result):
    raise SystemExit(result if isinstance(result, int) else 0)


def main():
    _exit(_run(iim, prog_name="iim"))


def extract_main():
    _exit(_run(load_command("extract"), prog_name="iim-extract"))


def train_main():
    _exit(_run(load_command("train"), prog_name="iim-train"))


def score_main():
    _exit(_run(load_command("score"), prog_name="iim-score"))


def sweep_main():
    _exit(_run(load_command("sweep"), prog_name="iim-sweep"))


if __name__ == "__main__":
    main()
