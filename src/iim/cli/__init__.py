"""The ``iim`` command line: ``iim extract | train | score | sweep | report | prototypes | predict | negatives | cache | demo``.

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

from ..errors import IIMError

# subcommand -> "module:attribute" of its click command, imported only when used
COMMANDS = {
    "extract": "iim.cli.extract:extract",
    "train": "iim.cli.train:train",
    "score": "iim.cli.score:score",
    "sweep": "iim.cli.sweep:sweep",
    "report": "iim.cli.report:report_cmd",
    "prototypes": "iim.cli.prototypes:prototypes_cmd",
    "predict": "iim.cli.predict:predict",
    "negatives": "iim.cli.negatives:negatives",
    "cache": "iim.cli.cache:cache",
    "demo": "iim.cli.demo:demo",
}


def load_command(name: str) -> click.Command:
    module, attr = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


class _Group(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        return load_command(name) if name in COMMANDS else None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iim")
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
