"""``iim sweep``: k and alpha swept in one pass over the cache, for a run or zero-shot."""
from __future__ import annotations

import click
from click.core import ParameterSource

from ..errors import IIMError
from ..options import AtLeast, click_options
from ..score.options import ALPHA_GRID, K_GRID, SWEEP_SKIPS, ScoreOptions
from .options import seed_option, source_options
from .scoring import announce, make_job, print_sweep


@click.command("sweep")
@source_options
@click_options(ScoreOptions, skip=SWEEP_SKIPS, defaults={"k": K_GRID, "alpha": ALPHA_GRID})
@click.option("--grid", "grid", multiple=True, metavar="NAME=VALUES",
              help="Training grid: a training option and its values (repeatable), e.g. n_neg=0,10,20, "
                   "lambda_neg=0:5:2.5, hard_negative_mining=on,off, shots=1,4; needs --cache.")
@seed_option("Training grid: the seeds of every point (split seed and training seed).", many=True)
@click.option("--pack", type=click.IntRange(min=1), default=None, metavar="N",
              help="Training grid: at most N points trained together in one packed forward (1: each "
                   "point on its own). Default: as many as memory allows.")
@click.option("--jobs", type=AtLeast(1), default=None, metavar="N",
              help="Training grid: N worker processes share the groups (one per GPU: worker i on cuda:i; "
                   "on CPU N processes). Under torchrun the ranks are the workers. Default: one process.")
@click.pass_context
def sweep(ctx, run, runs_dir, cache, zero_shot, out, ood, device, progress, k, alpha, T, chunk, recipe,
          grid, seed, pack, jobs):
    """Sweep k and alpha in ONE pass over the cache (one sorted top-k_max; alpha is linear), or train
    and score a grid of training options (--grid / --seed / --cache without --run).

    \b
    iim sweep                                  # newest run, k 1,5,10,20,50,100,200 x alpha 0:2:0.25
    iim sweep --run runs/NAME --k 10,50 --alpha 0.5,1
    iim sweep --cache cache/demo --grid n_neg=0,10,20 --grid lambda_neg=0,1,5 --seed 1,2,3 --out sweeps/neg

    Writes sweep.csv (k, alpha, method, ood_set, fpr95, auroc; percent; ood_set 'average' = mean over
    sets) into the run folder (--out) and prints the best setting per method. A training grid writes
    one run folder per point under <out>/points/, results.csv, points.csv, report.md and figures/.
    """
    training = grid or seed or (cache is not None and run is None and not zero_shot)
    if pack is not None and not training:
        raise IIMError("--pack sets how many grid points train together; it needs a training grid (--grid, --cache)")
    if jobs is not None and not training:
        raise IIMError("--jobs shares a training grid's points over processes; it needs a training grid "
                       "(--grid, --cache)")
    if training:
        from .grid import training_grid
        given = {n: ctx.get_parameter_source(n) != ParameterSource.DEFAULT for n in ("k", "alpha")}
        return training_grid(cache=cache, specs=grid, seeds=seed, out=out, run=run, zero_shot=zero_shot,
                             ood=ood, device=device, progress=progress, ks=k if given["k"] else None,
                             alphas=alpha if given["alpha"] else None, T=T, chunk=chunk, recipe=recipe,
                             pack=pack, jobs=jobs)
    ks, alphas = k, alpha
    job = make_job(run, runs_dir, cache, zero_shot, out)
    announce(job)
    return print_sweep(job, ks, alphas, T=T, ood=ood, chunk=chunk, device=device, progress=progress, recipe=recipe)
