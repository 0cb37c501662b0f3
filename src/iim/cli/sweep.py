"""``iim sweep``: k and alpha swept in one pass over the cache, for a run or zero-shot. It only re-scores:
a training grid is ``iim grid`` (:mod:`iim.cli.grid`)."""
from __future__ import annotations

import click

from ..errors import IIMError
from ..options import click_options
from ..score.options import ALPHA_GRID, K_GRID, SWEEP_SKIPS, ScoreOptions, Scoring
from .options import source_options
from .scoring import announce, make_job, print_sweep

GRID_FLAGS = ("--grid", "--seed", "--pack", "--jobs")     # iim grid's: refused here in one line


def _to_grid(ctx, param, value):
    if value:
        raise IIMError(f"iim sweep only re-scores runs (k x alpha); {param.opts[0]} belongs to a training grid, "
                       f"which is its own command now: iim grid --cache CACHE --grid NAME=VALUES ... "
                       f"(the same options)")


def _grid_flags(f):
    for flag in reversed(GRID_FLAGS):
        f = click.option(flag, multiple=True, hidden=True, expose_value=False, callback=_to_grid)(f)
    return f


@click.command("sweep")
@source_options
@click_options(ScoreOptions, skip=SWEEP_SKIPS, defaults={"k": K_GRID, "alpha": ALPHA_GRID})
@_grid_flags
def sweep(run, runs_dir, cache, zero_shot, out, ood, device, progress, k, alpha, T, chunk, recipe):
    """Sweep k and alpha in ONE pass over the cache (one sorted top-k_max; alpha is linear) for a run or zero-shot.

    \b
    iim sweep                                  # newest run, k 1,5,10,20,50,100,200 x alpha 0:2:0.25
    iim sweep --run runs/NAME --k 10,50 --alpha 0.5,1
    iim sweep --zero-shot --cache cache/demo --out results/demo-0shot --k 1,2,4,8

    Writes sweep.csv (k, alpha, method, ood_set, fpr95, auroc; percent; ood_set 'average' = mean over
    sets) into the run folder (--out) and prints the best setting per method. It never trains: a grid
    of training options is 'iim grid'.
    """
    job = make_job(run, runs_dir, cache, zero_shot, out)
    announce(job)
    scoring = Scoring.from_flags(k=k, alpha=alpha, T=T, chunk=chunk, recipe=recipe, ood=ood, device=device)
    return print_sweep(job, scoring.ks, scoring.alphas, progress=progress, **scoring.run_kwargs())
