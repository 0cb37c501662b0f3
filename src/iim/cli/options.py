"""The click options several commands share, each defined once: ``--device``, ``--out``, ``--cache``,
``--seed`` and the progress switch ``--progress/--no-progress``.

    @click.command()
    @cache_option("Feature cache written by 'iim extract'.", required=True)
    @out_option("Run folder.")
    @seed_option("Split seed S.")            # many=True: a list "1,2,3"
    @device_option
    @progress_option
    def cmd(cache, out, seed, device, progress): ...
"""
from __future__ import annotations

from pathlib import Path

import click

from ..options import SEED, Grid

DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
FOLDER = click.Path(file_okay=False, path_type=Path)


class Location(click.Path):
    """A folder (a :class:`~pathlib.Path`, as ``FOLDER``) or an fsspec URL, kept as written (a ``str``:
    pathlib would fold its ``//``); :func:`iim.cache.location.as_path` opens either."""
    name = "location"

    def convert(self, value, param, ctx):
        from ..cache.location import as_path, is_url
        if is_url(value):
            as_path(value)              # an unknown protocol, a missing backend: one line, before any work
            return value
        return super().convert(value, param, ctx)


CACHE_LOCATION = Location(file_okay=False, path_type=Path)


def device_option(f):
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(f)


def progress_option(f):
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Progress bars (shown when stderr is a terminal, never in logs).")(f)


def out_option(help: str, *, default=None, short: bool = False, url: bool = False):
    """``--out DIR``; ``url``: a cache location, DIR or an fsspec URL (``iim extract``)."""
    return click.option("--out", *(("-o",) if short else ()), "out", type=CACHE_LOCATION if url else FOLDER,
                        default=default, show_default=default is not None, metavar="DIR|URL" if url else "DIR",
                        help=help)


def cache_option(help: str, *, required: bool = False, default=None, name: str = "cache"):
    """``--cache DIR|URL``: a cache folder or an fsspec URL (memory://, s3://, ...)."""
    return click.option("--cache", name, type=CACHE_LOCATION, required=required, default=default,
                        show_default=default is not None, metavar="DIR|URL", help=help)


def seed_option(help: str, *, many: bool = False, default=None, aliases=(), name: str = "seed"):
    """``--seed S`` (``many``: ``S[,S...]``, a list) with values in 0 .. 2^32 - 1."""
    return click.option("--seed", *aliases, name, type=Grid(integer=True, element=SEED) if many else SEED,
                        default=default, show_default=default is not None,
                        metavar="S[,S...]" if many else "S", help=help)


def source_options(f):
    """What ``iim score`` and ``iim sweep`` score: ``--run`` / ``--runs-dir`` / ``--cache`` / ``--zero-shot``,
    and where and how (``--out``, ``--ood``, ``--device``, ``--progress``); the scoring options themselves
    come from :class:`iim.score.options.ScoreOptions`."""
    opts = [
        click.option("--run", type=FOLDER, help="Run folder (runs/NAME). Default: the newest run under --runs-dir."),
        click.option("--runs-dir", type=FOLDER, default=Path("runs"), show_default=True,
                     help="Where to look for the newest run when --run is not given."),
        cache_option("Feature cache. Default: the cache recorded in the run's checkpoint."),
        click.option("--zero-shot", is_flag=True,
                     help="0-shot rows: global prototypes as local prototypes, no negatives, no run "
                          "(needs --cache and --out)."),
        out_option("Output folder. Default: the run folder."),
        click.option("--ood", multiple=True,
                     help="Score only this OOD set (repeatable; 'inaturalist' or 'ood_inaturalist'). "
                          "Default: every OOD split in the cache."),
        device_option,
        progress_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f
