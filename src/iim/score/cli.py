"""``iim score`` and ``iim sweep``: every evaluator, from the feature cache, for a run or zero-shot."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from .. import metrics as M
from ..atomic import check_writable
from ..cli_options import FOLDER, cache_option, device_option, out_option, progress_option, seed_option
from ..errors import IIMError
from ..options import AtLeast, click_options
from ..train.methods import score_k
from . import report
from .options import ALPHA_GRID, K_GRID, SWEEP_SKIPS, NegativeOptions, ScoreOptions
from .pipeline import Job, prepare_run, prepare_zero_shot
from .run import format_score, format_sweep, run_score, run_sweep


def _common(f):
    """Options shared by ``score`` and ``sweep`` (besides the scoring options of :class:`ScoreOptions`)."""
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


def _job(run, runs_dir, cache, zero_shot, out, knn_split=None) -> Job:
    if zero_shot:
        if run is not None:
            raise IIMError("--zero-shot scores without a run; drop --run")
        return prepare_zero_shot(cache, out, knn_split=knn_split)
    return prepare_run(run, runs_dir=runs_dir, cache_path=cache, out=out, knn_split=knn_split)


def _announce(job: Job) -> None:
    for note in job.notes:
        click.echo(note)
    for w in job.warnings:
        click.echo(f"Warning: {w}", err=True)


@click.command("score")
@_common
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
    job = _job(run, runs_dir, cache, zero_shot, out, knn_split=None if no_knn or sweep else knn_split)
    if negatives is not None:
        from ..negatives.scores import attach_negatives
        attach_negatives(job, negatives, groups=groups, seed=neg_seed)
    if ctx.get_parameter_source("k") is ParameterSource.DEFAULT:
        ks = [score_k(job.checkpoint.get("config"), ks[0])]     # Local-Prompt: its eval script's 10
        if ks != k:
            job.notes.append(f"k={ks[0]}: the {job.checkpoint['config']['method']} run's own (pass --k to change)")
    _announce(job)
    if sweep:
        click.echo(f"Several k / alpha values: sweeping {len(ks)} x {len(alphas)} settings in one pass"
                   " (a sweep writes sweep.csv only: no KNN row, plots, results.json or ID accuracy)")
        return _sweep(job, ks, alphas, T=T, ood=ood, chunk=chunk, device=device, progress=progress,
                      recipe=recipe)
    knn = None if no_knn else dict(k=knn_k, all_views=knn_all_views)
    return _score(job, k=ks[0], alpha=alphas[0], T=T, ood=ood, chunk=chunk, device=device, knn=knn,
                  plot=not no_plots, progress=progress, recipe=recipe)


@click.command("sweep")
@_common
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
        from ..sweep.cli import training_grid
        given = {n: ctx.get_parameter_source(n) != ParameterSource.DEFAULT for n in ("k", "alpha")}
        return training_grid(cache=cache, specs=grid, seeds=seed, out=out, run=run, zero_shot=zero_shot,
                             ood=ood, device=device, progress=progress, ks=k if given["k"] else None,
                             alphas=alpha if given["alpha"] else None, T=T, chunk=chunk, recipe=recipe,
                             pack=pack, jobs=jobs)
    ks, alphas = k, alpha
    job = _job(run, runs_dir, cache, zero_shot, out)
    _announce(job)
    return _sweep(job, ks, alphas, T=T, ood=ood, chunk=chunk, device=device, progress=progress, recipe=recipe)


# ---- printing what the library functions (iim.score.run) return ------------------------------------
def _score(job: Job, **kw) -> dict:
    results = run_score(job, **kw)
    if results["knn_bank"]:
        click.echo(results["knn_bank"])
    click.echo(format_score(results))
    click.echo(f"Wrote {job.out_dir}/{', '.join(results['files'])} ({results['seconds']:.1f} s)")
    return results


def _sweep(job: Job, ks, alphas, **kw) -> list[dict]:
    t0 = time.perf_counter()
    rows = run_sweep(job, ks, alphas, **kw)
    click.echo(format_sweep(rows, ks, alphas))
    click.echo(f"Wrote {job.out_dir}/sweep.csv ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    return rows


class MetricList(click.ParamType):
    """``"fpr95,auroc"`` -> a tuple of names from :data:`iim.metrics.METRICS`."""
    name = "list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        names = tuple(c.strip() for c in str(value).split(",") if c.strip())
        bad = [c for c in names if c not in M.METRICS]
        if not names or bad:
            self.fail(f"{', '.join(map(repr, bad)) or 'no metric'} given; choose from {', '.join(M.METRICS)}",
                      param, ctx)
        return names


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@out_option("Also write summary.json and summary.md (mean ± std table) into this folder.")
@click.option("--metrics", "columns", default="fpr95,auroc", show_default=True, type=MetricList(),
              help=f"Columns of the printed tables: {', '.join(M.METRICS)}.")
@click.option("--every-evaluator", is_flag=True,
              help="Side by side: every evaluator of every method, not only those its paper reports.")
@click.option("--allow-incomplete", is_flag=True,
              help="Also average runs scored before their last epoch (marked in the tables and summary).")
def report_cmd(runs, out, columns, every_evaluator, allow_incomplete):
    """Mean and std over several scored runs (e.g. seeds 1, 2, 3), as the paper reports (SPEC §5).

    Runs of several methods or shots (and zero-shot results) are put side by side: one row group per
    method and shots, each averaged over its seeds, with the evaluators its paper reports (CoOp and
    LoCoOp: MCM, GL-MCM; Local-Prompt: R-MCM; IIM: R-MCM, S-MCM; 0-shot: MCM, GL-MCM, R-MCM*, S-MCM*).

    \b
    iim report runs/in1k-k16-s1-iim runs/in1k-k16-s2-iim runs/in1k-k16-s3-iim --out results/in1k-k16
    iim report results/zeroshot runs/in1k-k4-s*-* runs/in1k-k16-s*-* --out results/table1
    """
    from .summary import group_results, load_results, markdown_table, reported, reported_line, summarise

    results = [load_results(r) for r in runs]
    if out:
        check_writable(out)
    groups = group_results(results)
    cols = columns
    if len(groups) > 1:
        return _report_side_by_side(groups, out, cols, every_evaluator, allow_incomplete)
    summary = summarise(results, allow_incomplete=allow_incomplete)
    for u in summary["incomplete"]:
        click.echo(f"Warning: {u['run']} is unfinished (epoch {u['epoch']} of {u['epochs']}); averaged "
                   f"because of --allow-incomplete", err=True)
    seeds = ", ".join(str(s) for s in summary["seeds"])
    st = summary["settings"]
    unfinished = f" ({len(summary['incomplete'])} unfinished)" if summary["incomplete"] else ""
    click.echo(f"Mean over {len(runs)} runs{unfinished} (seeds {seeds}); k={st['k']} alpha={st['alpha']} "
               f"T={st['T']}; percent")
    click.echo(report.format_table(summary["mean"], columns=cols))
    for note in summary["notes"]:
        click.echo(f"Note: {note}")
    peers = reported(results)
    for row in peers:      # kept apart: not measured here
        click.echo(f"{reported_line(row)} (average FPR95 / AUROC, as its paper reports; not measured here)")
    click.echo(f"\nStandard deviation over the {len(runs)} runs")
    click.echo(report.format_table(summary["std"], columns=cols))
    acc = summary["id_accuracy"]
    click.echo(f"\nID accuracy {acc['mean']:.2f} ± {acc['std']:.2f}%" if acc["values"] else "\nID accuracy n/a")
    diags = summary.get("diagnostics") or {}
    if any(diags.values()):
        from ..train.diagnostics import format_diagnostics
        click.echo("\nTraining diagnostics (last epoch, ID support views only)")
        for run, d in diags.items():
            click.echo(f"  {run}: " + (format_diagnostics(d) + ("  COLLAPSED" if d.get("collapsed") else "")
                                        if d else "not recorded"))
    if out:
        report.write_json(Path(out) / "summary.json", summary)
        report.write_text(Path(out) / "summary.md", markdown_table(summary, reported_rows=peers) + "\n")
        click.echo(f"Wrote {Path(out) / 'summary.json'}, summary.md")


def _report_side_by_side(groups, out, cols, every_evaluator, allow_incomplete=False):
    from .summary import markdown_table, side_by_side

    table = side_by_side(groups, every_evaluator=every_evaluator, allow_incomplete=allow_incomplete)
    click.echo(f"{len(groups)} groups side by side, each the mean over its runs; percent")
    for g in table["groups"]:
        st = g["settings"]
        unfinished = f" ({len(g['incomplete'])} unfinished)" if g["incomplete"] else ""
        click.echo(f"  {g['label']}: {len(g['runs'])} run(s){unfinished}, seeds "
                   f"{', '.join(str(s) for s in g['seeds'])}; k={st['k']} alpha={st['alpha']} T={st['T']}")
        for u in g["incomplete"]:
            click.echo(f"Warning: {u['run']} is unfinished (epoch {u['epoch']} of {u['epochs']}); averaged "
                       f"because of --allow-incomplete", err=True)
    kw = dict(methods=table["rows"], columns=cols, labels=table["labels"])
    click.echo(report.format_table(table["mean"], **kw))
    for note in table["notes"]:
        click.echo(f"Note: {note}")
    click.echo("\nStandard deviation over each group's runs")
    click.echo(report.format_table(table["std"], **kw))
    if out:
        report.write_json(Path(out) / "summary.json", table)
        report.write_text(Path(out) / "summary.md",
                          markdown_table(table, methods=table["rows"], labels=table["labels"]) + "\n")
        click.echo(f"Wrote {Path(out) / 'summary.json'}, summary.md")
    return table
