"""``iim sweep --cache C --grid NAME=VALUES ...``: the training-grid form of ``iim sweep`` (the click
command itself is :mod:`iim.cli.sweep`)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import IIMError
from ..score.report import LABELS
from ..sweep import run_grid
from ..sweep.grid import parse_specs
from ..sweep.run import Scoring


def _default(values: list, preferred):
    return preferred if preferred in values else values[0]


def training_grid(*, cache, specs, seeds, out, run, zero_shot, ood, device, progress, ks, alphas, T, chunk,
                  recipe=None, pack=None, jobs=None):
    if run is not None or zero_shot:
        raise IIMError("--grid / --seed train a grid of runs from --cache; drop --run / --zero-shot "
                       "(re-score one run with 'iim sweep --run DIR')")
    if cache is None:
        raise IIMError("a training grid needs --cache (the feature cache the points train on)")
    grid = parse_specs(specs, seeds=seeds)
    ks, alphas = ks or [50], alphas or [1.0]
    scoring = Scoring(ks=ks, alphas=alphas, alpha=_default(alphas, 1.0), T=T,
                      ood=tuple(ood), chunk=chunk, device=device, recipe=recipe)
    out = Path(out) if out is not None else Path("sweeps") / Path(cache).name
    t0 = time.perf_counter()
    summary = run_grid(cache, grid, out, scoring=scoring, device=device, progress=progress, log=click.echo,
                       pack=pack, jobs=jobs)
    if summary is None:                           # a torchrun rank other than 0: rank 0 reports
        return 0
    n = len(summary["points"])
    ks = sorted({scoring.k_for(p.config.k) for p in summary["points"]})
    click.echo(f"{summary['done']}/{n} points done, {summary['failed']} failed; scored at k="
               f"{','.join(map(str, ks))} alpha={scoring.alpha:g} ({LABELS['s_mcm']} where the point has negatives)")
    click.echo(f"Wrote {out}/{', '.join(summary['files'])} ({summary['rows']} rows, "
               f"{time.perf_counter() - t0:.1f} s)")
    return 1 if summary["failed"] else 0
