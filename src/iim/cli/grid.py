"""``iim grid``: train and score a grid of training options, one ordinary run folder per point
(:mod:`iim.sweep`), collected into one CSV, a report and figures."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import click

from ..options import AtLeast, click_options
from ..registry import TEST_K
from ..score.options import SWEEP_SKIPS, ScoreOptions, Scoring
from ..score.report import LABELS
from .options import cache_option, device_option, out_option, progress_option, seed_option

K_HELP = (f"Test top-k list: each point's results.json at its training top-k when listed here, else {TEST_K} "
          f"when listed, else the first; sweep.csv over every k x alpha when several.")
ALPHA_HELP = "Weight of t2i in S-MCM: results.json at 1.0 when listed, else the first; a list or range sweeps."


@click.command("grid", short_help="Train and score a grid of training options: one run folder per point, "
                                  "one table, a report and figures.")
@cache_option("Feature cache the points train on (and are scored on).", required=True)
@click.option("--grid", "specs", multiple=True, metavar="NAME=VALUES",
              help="A training option and its values (repeatable), e.g. n_neg=0,10,20, lambda_neg=0:5:2.5, "
                   "hard_negative_mining=on,off, shots=1,4.")
@seed_option("The seeds of every point (split seed and training seed).", many=True)
@out_option("Grid folder  [default: sweeps/<cache name>]")
@click.option("--ood", multiple=True,
              help="Score only this OOD set (repeatable; 'inaturalist' or 'ood_inaturalist'). "
                   "Default: every OOD split in the cache.")
@click_options(ScoreOptions, skip=SWEEP_SKIPS, defaults={"k": str(TEST_K), "alpha": "1.0"},
               helps={"k": K_HELP, "alpha": ALPHA_HELP})
@click.option("--pack", type=click.IntRange(min=1), default=None, metavar="N",
              help="At most N points trained together in one packed forward (1: each point on its own). "
                   "Default: as many as memory allows.")
@click.option("--jobs", type=AtLeast(1), default=None, metavar="N",
              help="N worker processes share the groups (one per GPU: worker i on cuda:i; on CPU N "
                   "processes). Under torchrun the ranks are the workers. Default: one process.")
@device_option
@progress_option
def grid(cache, specs, seed, out, ood, k, alpha, T, chunk, recipe, pack, jobs, device, progress):
    """Train and score a grid of training options: one run folder per point, one table, a report and figures.

    \b
    iim grid --cache cache/demo --grid n_neg=0,10,20 --grid lambda_neg=0,1,5 --seed 1,2,3 --out sweeps/neg
    iim grid --cache cache/demo --grid k=2,4,8 --k 1,2,4,8,16 --out sweeps/k    # train k x test k
    torchrun --nproc-per-node 4 -m iim grid --cache cache/in1k --grid n_neg=0,300 --out sweeps/in1k

    Writes one run folder per point under <out>/points/ (trained as 'iim train' would, scored as 'iim
    score' would), results.csv, points.csv, report.md and figures/. A rerun skips finished points and
    continues interrupted ones. To re-score runs at other k / alpha without training, use 'iim sweep'.
    """
    from ..sweep import run_grid
    from ..sweep.grid import parse_specs

    points = parse_specs(specs, seeds=seed)
    scoring = Scoring.from_flags(k=k, alpha=alpha, T=T, chunk=chunk, recipe=recipe, ood=ood, device=device)
    out = Path(out) if out is not None else Path("sweeps") / Path(cache).name
    t0 = time.perf_counter()
    summary = run_grid(cache, points, out, scoring=scoring, device=device, progress=progress, log=click.echo,
                       pack=pack, jobs=jobs)
    if summary is None:                           # a torchrun rank other than 0: rank 0 reports
        return 0
    click.echo(f"{summary['done']}/{len(summary['points'])} points done, {summary['failed']} failed; "
               f"{scored_at(scoring, summary['points'])}, alpha={scoring.alpha:g} ({LABELS['s_mcm']} where the "
               f"point has negatives)")
    click.echo(f"Wrote {out}/{', '.join(summary['files'])} ({summary['rows']} rows, "
               f"{time.perf_counter() - t0:.1f} s)")
    return 1 if summary["failed"] else 0


def scored_at(scoring, points) -> str:
    """At which test top-k the points' results.json are scored, and why (``Scoring.test_k``)."""
    seen = Counter(scoring.test_k(p.config.k) for p in points)
    if len(seen) == 1:
        (k, why), = seen
        return f"scored at test k={k} ({why})"
    return "scored at " + "; ".join(f"test k={k} for {n} point(s) ({why})" for (k, why), n in sorted(seen.items()))
