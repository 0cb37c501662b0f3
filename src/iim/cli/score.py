"""``iim score``: every evaluator, from the feature cache, for a run or zero-shot (several k / alpha: a sweep)."""
from __future__ import annotations

import click
from click.core import ParameterSource

from ..errors import IIMError
from ..options import click_options
from ..score.options import NegativeOptions, ScoreOptions, Scoring
from ..train.methods import score_k
from .options import source_options
from .scoring import announce, make_job, print_score, print_sweep


@click.command("score")
@source_options
@click_options(ScoreOptions)
@click_options(NegativeOptions)
@click.option("--knn-split", help="KNN memory bank split. Default: the run's train split.")
@click.option("--no-knn", is_flag=True, help="Skip the KNN baseline row.")
@click.option("--no-plots", is_flag=True, help="Skip the histogram / ROC plots.")
def score(run, runs_dir, cache, zero_shot, out, ood, device, progress, k, alpha, T, chunk, recipe,
          knn_k, knn_all_views, negatives, groups, neg_seed, knn_split, no_knn, no_plots):
    """Score a trained run (or zero-shot) on the cache's test and OOD splits with every evaluator.

    \b
    iim score                               # newest run under runs/, its cache, k=50, alpha=1
    iim score --run runs/NAME --k 50 --alpha 1.0
    iim score --zero-shot --cache cache/in1k --out results/zeroshot
    iim score --k 1,5,10,20,50,100,200 --alpha 0:2:0.25    # a sweep (same as 'iim sweep')
    iim score --zero-shot --cache cache/in1k --negatives neg/in1k --out results/zeroshot-neg

    Prints the paper-style table (FPR95 / AUROC per OOD set and their average, in percent) and the ID
    accuracy; writes results.json, results.csv, scores_{split}.npz and plots/ into the run folder (--out).
    """
    ks, alphas = k, alpha
    sweep = len(ks) > 1 or len(alphas) > 1
    ctx = click.get_current_context()
    given = [f"--{n.replace('_', '-')}" for n in ("groups", "neg_seed")
             if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]
    if negatives is None and given:
        raise IIMError(f"{' and '.join(given)} set(s) how the mined negatives are scored; it needs --negatives NEG")
    if negatives is not None and sweep:
        raise IIMError("--negatives scores at one k and alpha (iim score --k K --alpha A), not in a sweep")
    job = make_job(run, runs_dir, cache, zero_shot, out, knn_split=None if no_knn or sweep else knn_split)
    if negatives is not None:
        from ..negatives.scores import attach_negatives
        attach_negatives(job, negatives, groups=groups, seed=neg_seed)
    if ctx.get_parameter_source("k") is ParameterSource.DEFAULT:
        ks = [score_k(job.checkpoint.get("config"), ks[0])]     # Local-Prompt: its eval script's 10
        if ks != k:
            job.notes.append(f"k={ks[0]}: the {job.checkpoint['config']['method']} run's own (pass --k to change)")
    announce(job)
    scoring = Scoring.from_flags(k=ks, alpha=alphas, T=T, chunk=chunk, recipe=recipe, ood=ood, device=device)
    if sweep:
        click.echo(f"Several k / alpha values: sweeping {len(ks)} x {len(alphas)} settings in one pass"
                   " (a sweep writes sweep.csv only: no KNN row, plots, results.json or ID accuracy)")
        return print_sweep(job, scoring.ks, scoring.alphas, progress=progress, **scoring.run_kwargs())
    knn = None if no_knn else dict(k=knn_k, all_views=knn_all_views)
    return print_score(job, k=scoring.ks[0], alpha=scoring.alphas[0], knn=knn, plot=not no_plots, progress=progress,
                       **scoring.run_kwargs())
