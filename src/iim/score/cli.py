"""``iim score`` and ``iim sweep``: every evaluator, from the feature cache, for a run or zero-shot."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from .. import metrics as M
from ..cache.names import ood_set_name
from ..cli_options import FOLDER, cache_option, device_option, out_option, progress_option
from ..errors import IIMError
from ..options import click_options
from . import plots, report
from .knn import KNNScorer, memory_bank
from ..models import resolve_device
from .pipeline import Job, ood_split_names, prepare_run, prepare_zero_shot, stream_split
from .scores import check_k
from .options import ALPHA_GRID, K_GRID, SWEEP_SKIPS, ScoreOptions
from .sweep import best_settings, sweep_rows

HEADLINE = ("s_mcm", "s_mcm_star")      # the first present is plotted and summarised with MCM


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


def _splits(job: Job, ood):
    test = job.cache.split("test")
    if test.n == 0:
        raise IIMError(f"split 'test' in {job.cache.root} is empty (0 images)")
    return test, ood_split_names(job.cache, ood)


@click.command("score")
@_common
@click_options(ScoreOptions)
@click.option("--knn-split", help="KNN memory bank split. Default: the run's train split.")
@click.option("--no-knn", is_flag=True, help="Skip the KNN baseline row.")
@click.option("--no-plots", is_flag=True, help="Skip the histogram / ROC plots.")
def score(run, runs_dir, cache, zero_shot, out, ood, device, progress, k, alpha, T, chunk,
          knn_k, knn_all_views, knn_split, no_knn, no_plots):
    """Score a trained run (or zero-shot) on the cache's test and OOD splits with every evaluator.

    \b
    iim score                               # newest run under runs/, its cache, k=50, alpha=1
    iim score --run runs/NAME --k 50 --alpha 1.0
    iim score --zero-shot --cache cache/in1k --out results/zeroshot
    iim score --k 1,5,10,20,50,100,200 --alpha 0:2:0.25    # a sweep (same as 'iim sweep')

    Prints the paper-style table (FPR95 / AUROC per OOD set and their average, in percent) and the ID
    accuracy; writes results.json, results.csv, scores_{split}.npz and plots/ into the run folder (--out).
    """
    ks, alphas = k, alpha
    sweep = len(ks) > 1 or len(alphas) > 1
    job = _job(run, runs_dir, cache, zero_shot, out, knn_split=None if no_knn or sweep else knn_split)
    _announce(job)
    if sweep:
        click.echo(f"Several k / alpha values: sweeping {len(ks)} x {len(alphas)} settings in one pass"
                   " (a sweep writes sweep.csv only: no KNN row, plots, results.json or ID accuracy)")
        return run_sweep(job, ks, alphas, T=T, ood=ood, chunk=chunk, device=device, progress=progress)
    knn = None if no_knn else dict(k=knn_k, all_views=knn_all_views)
    return run_score(job, k=ks[0], alpha=alphas[0], T=T, ood=ood, chunk=chunk, device=device, knn=knn,
                     plot=not no_plots, progress=progress)


@click.command("sweep")
@_common
@click_options(ScoreOptions, skip=SWEEP_SKIPS, defaults={"k": K_GRID, "alpha": ALPHA_GRID})
def sweep(run, runs_dir, cache, zero_shot, out, ood, device, progress, k, alpha, T, chunk):
    """Sweep k and alpha in ONE pass over the cache (one sorted top-k_max; alpha is linear).

    \b
    iim sweep                                  # newest run, k 1,5,10,20,50,100,200 x alpha 0:2:0.25
    iim sweep --run runs/NAME --k 10,50 --alpha 0.5,1

    Writes sweep.csv (k, alpha, method, ood_set, fpr95, auroc; percent; ood_set 'average' = mean over
    sets) into the run folder (--out) and prints the best setting per method.
    """
    ks, alphas = k, alpha
    job = _job(run, runs_dir, cache, zero_shot, out)
    _announce(job)
    return run_sweep(job, ks, alphas, T=T, ood=ood, chunk=chunk, device=device, progress=progress)


# ---- the two passes -----------------------------------------------------------------------------
def run_score(job: Job, *, k=50, alpha=1.0, T=1.0, ood=(), chunk=None, device="auto", knn=None,
              plot=True, progress=True) -> dict:
    """Score every split, compute the metrics, write the result files, print the table; returns results."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    test, ood_names = _splits(job, ood)
    n_classes = len(job.id_proto)
    check_k(k, test.hw, n_classes)
    scorer = None
    if knn is not None and job.knn_split:
        bank = memory_bank(job.cache.split(job.knn_split), all_views=knn["all_views"])
        scorer = KNNScorer(bank, knn["k"])
        click.echo(f"KNN baseline: k={knn['k']}, memory bank {job.knn_split} "
                   f"({len(bank)} features{', all views' if knn['all_views'] else ', view 0'}"
                   f"{', faiss-gpu' if scorer.on_gpu else ''})")
    stream = dict(k=k, alpha=alpha, T=T, rows=chunk, device=dev, knn=scorer, progress=progress)
    id_scores, preds = stream_split(test, job, predict=True, **stream)
    labels = test.labels
    valid = labels >= 0
    accuracy = 100 * float(np.mean(preds[valid] == labels[valid])) if valid.any() else None
    ood_scores = {ood_set_name(n): stream_split(job.cache.split(n), job, **stream)[0] for n in ood_names}
    metrics = report.compute_metrics(id_scores, ood_scores)

    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": None if job.zero_shot else str(job.run_dir),
        "cache": str(job.cache.root),
        "zero_shot": job.zero_shot,
        "epoch": job.checkpoint.get("epoch"), "complete": job.checkpoint.get("complete"),
        "settings": {"k": k, "alpha": alpha, "T": T, "accuracy_k": min(k, test.hw), "device": str(dev),
                     "chunk": chunk or "auto", "knn_k": knn["k"] if scorer else None,
                     "knn_split": job.knn_split if scorer else None,
                     "knn_views": (("all" if knn["all_views"] else 0) if scorer else None),
                     "knn_all_views": knn["all_views"] if scorer else None},
        "units": "percent",
        "id": {"split": "test", "n": int(test.n), "accuracy": accuracy},
        "ood_sets": {ood_set_name(n): int(job.cache.split(n).n) for n in ood_names},
        "metrics": metrics,
        "notes": job.notes + job.warnings,
        "run_config": job.checkpoint.get("config"),
    }
    out = job.out_dir
    report.write_json(out / "results.json", results)
    report.write_csv(out / "results.csv", report.metric_rows(metrics), ["method", "ood_set", "metric", "value"])
    report.write_npz(out / "scores_test.npz", {**id_scores, "index": np.arange(test.n), "label": labels,
                                               "pred": preds})
    for n in ood_names:
        report.write_npz(out / f"scores_{n}.npz", ood_scores[ood_set_name(n)])
    if plot:
        head = next(m for m in HEADLINE if m in id_scores)
        for m in (head, "mcm"):
            per_set = {name: s[m] for name, s in ood_scores.items()}
            plots.histograms(out / "plots" / f"hist_{m}.png", report.LABELS[m], id_scores[m], per_set)
            plots.roc_curves(out / "plots" / f"roc_{m}.png", report.LABELS[m], id_scores[m], per_set)

    click.echo(f"\nk={k}  alpha={alpha:g}  T={T:g}   FPR95 (paper/MCM definition) and AUROC, in percent; "
               f"{test.n} ID test images")
    click.echo(report.format_table(metrics))
    if accuracy is not None:
        click.echo(f"ID accuracy (test, {int(valid.sum())} images): {accuracy:.2f}%")
    click.echo(f"Wrote {out}/results.json, results.csv, scores_*.npz{', plots/' if plot else ''} "
               f"({time.perf_counter() - t0:.1f} s)")
    return results


def run_sweep(job: Job, ks, alphas, *, T=1.0, ood=(), chunk=None, device="auto", progress=True) -> list[dict]:
    """One pass over the splits for the whole (k, alpha) grid; writes sweep.csv, prints the best settings."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    test, ood_names = _splits(job, ood)
    check_k(ks, test.hw, len(job.id_proto))
    stream = dict(k=ks, alpha=alphas, T=T, rows=chunk, device=dev, progress=progress)
    id_scores = stream_split(test, job, **stream)[0]
    ood_scores = {ood_set_name(n): stream_split(job.cache.split(n), job, **stream)[0] for n in ood_names}
    rows = sweep_rows(ks, alphas, id_scores, ood_scores, {"fpr95": M.fpr95, "auroc": M.auroc})
    out = job.out_dir
    report.write_csv(out / "sweep.csv", rows, ["k", "alpha", "method", "ood_set", "fpr95", "auroc"])

    head = next(m for m in HEADLINE if m in id_scores)
    avg = {(r["k"], r["alpha"]): r["fpr95"] for r in rows if r["method"] == head and r["ood_set"] == "average"}
    w = max(6, *(len(f"{a:g}") + 1 for a in alphas))
    click.echo(f"\nAverage FPR95 of {report.LABELS[head]} (rows: k, columns: alpha), percent:")
    click.echo(f"{'k':>5} " + "".join(f"{a:>{w}g}" for a in alphas))
    for k in ks:
        click.echo(f"{k:>5} " + "".join(f"{avg[(k, a)]:>{w}.2f}" for a in alphas))
    click.echo("\nBest setting per method by average FPR95 (chosen on the test OOD sets: for analysis, "
               "not for reporting):")
    for method, r in best_settings(rows).items():
        if method in ("i2t", "i2t_star", "t2i"):
            continue
        where = ", ".join(f"{n}={r[n]:g}" for n in ("k", "alpha") if r[n] != "")
        click.echo(f"  {report.LABELS[method]:<8} {where or '(no k / alpha)':<20} FPR95 {r['fpr95']:6.2f}  "
                   f"AUROC {r['auroc']:6.2f}")
    click.echo(f"Wrote {out}/sweep.csv ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    return rows


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@out_option("Also write summary.json and summary.md (mean ± std table) into this folder.")
@click.option("--metrics", "columns", default="fpr95,auroc", show_default=True,
              help="Columns of the printed tables: fpr95, auroc, aupr_in, aupr_out, fpr95_openood.")
def report_cmd(runs, out, columns):
    """Mean and std over several scored runs (e.g. seeds 1, 2, 3), as the paper reports (SPEC §5).

    \b
    iim report runs/in1k-k16-s1-iim runs/in1k-k16-s2-iim runs/in1k-k16-s3-iim --out results/in1k-k16
    """
    from .summary import load_results, markdown_table, summarise

    summary = summarise([load_results(r) for r in runs])
    cols = tuple(c.strip() for c in columns.split(",") if c.strip())
    seeds = ", ".join(str(s) for s in summary["seeds"])
    st = summary["settings"]
    click.echo(f"Mean over {len(runs)} runs (seeds {seeds}); k={st['k']} alpha={st['alpha']} T={st['T']}; "
               f"percent")
    click.echo(report.format_table(summary["mean"], columns=cols))
    click.echo(f"\nStandard deviation over the {len(runs)} runs")
    click.echo(report.format_table(summary["std"], columns=cols))
    acc = summary["id_accuracy"]
    click.echo(f"\nID accuracy {acc['mean']:.2f} ± {acc['std']:.2f}%" if acc["values"] else "\nID accuracy n/a")
    if out:
        report.write_json(Path(out) / "summary.json", summary)
        report.write_text(Path(out) / "summary.md", markdown_table(summary) + "\n")
        click.echo(f"Wrote {Path(out) / 'summary.json'}, summary.md")
