"""The scoring stage as library functions: :func:`run_score` (every evaluator at one k / alpha, the
metrics, results.json / results.csv / scores_*.npz / plots) and :func:`run_sweep` (a (k, alpha) grid in
one pass, sweep.csv). They return plain data and write files; they print nothing (``iim score`` prints
:func:`format_score` / :func:`format_sweep` of what they return).

    job = prepare_run("runs/in1k-shots16-seed1-iim")
    results = run_score(job, k=50, alpha=1.0)        # results["metrics"]["s_mcm"]["average"]["fpr95"]
"""
from __future__ import annotations

import time

import numpy as np

from .. import metrics as M
from ..atomic import check_writable
from ..cache import manifest_key
from ..cache.names import ood_set_name
from ..errors import IIMError
from ..models import resolve_device
from ..options import MAX_GRID
from . import plots, report
from .knn import KNNScorer, memory_bank
from .pipeline import Job, expected_ood_splits, ood_split_names, stream_split
from .scores import check_k
from .seal import seal
from .sweep import best_settings, sweep_rows

HEADLINE = ("s_mcm", "s_mcm_star")      # the first present is plotted and summarised with MCM


def _splits(job: Job, ood, k):
    """The test split and the OOD split names, after checking them and ``k`` and that the output
    folder is writable (created only once every check has passed)."""
    test = job.cache.split("test")
    if test.n == 0:
        raise IIMError(f"split 'test' in {job.cache.root} is empty (0 images)")
    labels, n_cls = test.labels, len(job.cache.classnames)
    bad = np.flatnonzero((labels < 0) | (labels >= n_cls))
    if len(bad):
        raise IIMError(f"split 'test' in {job.cache.root}: row {bad[0]} has label {labels[bad[0]]}, outside "
                       f"0..{n_cls - 1} ({len(bad)} such rows); the cache is damaged (iim cache verify "
                       f"{job.cache.root})")
    names = ood_split_names(job.cache, ood)
    check_k(k, test.hw, len(job.id_proto))
    check_writable(job.out_dir)
    return test, names


def average_note(average_over, left_out=()) -> str:
    """Which OOD sets the Average covers, and those of the cache it leaves out (--ood)."""
    return (f"Average over {len(average_over)} OOD set(s): {', '.join(average_over)}"
            + (f" (left out with --ood: {', '.join(left_out)})" if left_out else ""))


def run_score(job: Job, *, k=50, alpha=1.0, T=1.0, ood=(), chunk=None, device="auto", knn=None,
              plot=True, progress=True, recipe=None) -> dict:
    """Score every split, compute the metrics and write the result files; returns the results
    (what results.json holds, plus ``seconds`` and ``files``). ``recipe`` None: the run's (SPEC §9)."""
    t0 = time.perf_counter()
    recipe = recipe or job.recipe
    dev = resolve_device(device)
    test, ood_names = _splits(job, ood, k)
    # the OOD sets left out, as the cache is now: a split another process begins while this one scores
    # is not among them (results.json describes the cache it scored)
    left_out = [ood_set_name(n) for n in expected_ood_splits(job.cache) if n not in ood_names]
    n_classes = len(job.id_proto)
    scorer, bank_note = _knn_scorer(job, knn)
    stream = dict(k=k, alpha=alpha, T=T, rows=chunk, device=dev, knn=scorer, progress=progress, recipe=recipe)
    id_scores, preds = stream_split(test, job, predict=True, **stream)
    labels = test.labels
    valid = labels >= 0
    accuracy = 100 * float(np.mean(preds[valid] == labels[valid])) if valid.any() else None
    ood_scores = {ood_set_name(n): stream_split(job.cache.split(n), job, **stream)[0] for n in ood_names}
    for extra in job.extras:                  # scores that need every split (AdaNeg's stream)
        extra.finish({"test": id_scores, **{n: ood_scores[ood_set_name(n)] for n in ood_names}}, job)
    metrics = report.compute_metrics(id_scores, ood_scores)

    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": None if job.zero_shot else str(job.run_dir),
        "cache": str(job.cache.root),
        "cache_fingerprint": manifest_key(job.cache.manifest),     # what iim report compares between runs
        "zero_shot": job.zero_shot,
        "epoch": job.checkpoint.get("epoch"), "complete": job.checkpoint.get("complete"),
        "settings": {"k": k, "alpha": alpha, "T": T, "recipe": recipe, "accuracy_k": min(k, test.hw), "device": str(dev),
                     "chunk": chunk or "auto", "knn_k": knn["k"] if scorer else None,
                     "knn_split": job.knn_split if scorer else None,
                     "knn_views": (("all" if knn["all_views"] else 0) if scorer else None),
                     "knn_all_views": knn["all_views"] if scorer else None,
                     **{key: x.record()[key] for x in job.extras for key in ("groups", "neg_seed")}},
        "units": "percent",
        "id": {"split": "test", "n": int(test.n), "accuracy": accuracy,
               "n_labelled": int(valid.sum())},
        "ood_sets": {ood_set_name(n): int(job.cache.split(n).n) for n in ood_names},
        "average_over": [ood_set_name(n) for n in ood_names],
        "left_out": left_out,
        "metrics": metrics,
        "notes": job.notes + job.warnings + ([bank_note] if bank_note else []),
        "run_config": job.checkpoint.get("config"),
        "diagnostics": job.checkpoint.get("diagnostics"),   # the run's last epoch, ID data only
        "negatives": next((x.record() for x in job.extras), None),
    }
    id_arrays = {**id_scores, "index": np.arange(test.n), "label": labels, "pred": preds}
    files = _write_results(job, results, id_arrays, ood_scores, ood_names, plot=plot)
    return dict(results, seconds=time.perf_counter() - t0, files=files, knn_bank=bank_note)


def _knn_scorer(job: Job, knn: dict | None) -> tuple:
    """The KNN baseline's scorer over the run's memory bank and its note, or ``(None, None)``."""
    if knn is None or not job.knn_split:
        return None, None
    bank = memory_bank(job.cache.split(job.knn_split), all_views=knn["all_views"])
    scorer = KNNScorer(bank, knn["k"])
    note = (f"KNN baseline: k={knn['k']}, memory bank {job.knn_split} "
            f"({len(bank)} features{', all views' if knn['all_views'] else ', view 0'}"
            f"{', faiss-gpu' if scorer.on_gpu else ''})")
    return scorer, note


def _write_results(job: Job, results: dict, id_arrays: dict, ood_scores: dict, ood_names, *, plot: bool) -> list:
    """results.json, results.csv, scores_*.npz (the test split's with its index, labels and predictions),
    the negatives' order files and the plots, in the job's folder -> what was written (as patterns)."""
    out = job.out_dir
    report.write_json(out / "results.json", seal(results))      # "sha256": iim report refuses an edited file
    report.write_csv(out / "results.csv", report.metric_rows(results["metrics"]),
                     ["method", "ood_set", "metric", "value"])
    report.write_npz(out / "scores_test.npz", id_arrays)
    for n in ood_names:
        report.write_npz(out / f"scores_{n}.npz", ood_scores[ood_set_name(n)])
    files = ["results.json", "results.csv", "scores_*.npz"]
    for extra in job.extras:
        name = extra.record()["order_file"]
        report.write_npz(out / name, extra.arrays())
        files.append(name)
    if plot:
        head = next(m for m in HEADLINE if m in id_arrays)
        for m in (head, "mcm"):
            per_set = {name: s[m] for name, s in ood_scores.items()}
            plots.histograms(out / "plots" / f"hist_{m}.png", report.LABELS[m], id_arrays[m], per_set)
            plots.roc_curves(out / "plots" / f"roc_{m}.png", report.LABELS[m], id_arrays[m], per_set)
        files.append("plots/")
    return files


def format_score(results: dict) -> str:
    """The console report of :func:`run_score`: settings line, the paper-style table, the ID accuracy."""
    st, idr = results["settings"], results["id"]
    lines = [f"\nk={st['k']}  alpha={st['alpha']:g}  T={st['T']:g}  recipe {st.get('recipe', 'paper')}   FPR95 (paper/MCM definition) and AUROC, "
             f"in percent; {idr['n']} ID test images", report.format_table(results["metrics"]),
             average_note(results["average_over"], results["left_out"])]
    if idr["accuracy"] is not None:
        lines.append(f"ID accuracy (test, {idr['n_labelled']} images): {idr['accuracy']:.2f}%")
    return "\n".join(lines)


def run_sweep(job: Job, ks, alphas, *, T=1.0, ood=(), chunk=None, device="auto", progress=True,
              recipe=None) -> list[dict]:
    """One pass over the splits for the whole (k, alpha) grid; writes and returns the rows of sweep.csv."""
    if len(ks) * len(alphas) > MAX_GRID:
        raise IIMError(f"a sweep of {len(ks)} k x {len(alphas)} alpha = {len(ks) * len(alphas):,} settings; at "
                       f"most {MAX_GRID:,} in one pass (sweep fewer values)")
    if job.extras:
        raise IIMError("--negatives scores at one k and alpha (iim score --k K --alpha A), not in a sweep")
    recipe = recipe or job.recipe
    dev = resolve_device(device)
    test, ood_names = _splits(job, ood, ks)
    stream = dict(k=ks, alpha=alphas, T=T, rows=chunk, device=dev, progress=progress, recipe=recipe)
    id_scores = stream_split(test, job, **stream)[0]
    ood_scores = {ood_set_name(n): stream_split(job.cache.split(n), job, **stream)[0] for n in ood_names}
    rows = sweep_rows(ks, alphas, id_scores, ood_scores, {"fpr95": M.fpr95, "auroc": M.auroc})
    report.write_csv(job.out_dir / "sweep.csv", rows, ["k", "alpha", "method", "ood_set", "fpr95", "auroc"])
    return rows


def format_sweep(rows: list[dict], ks, alphas) -> str:
    """The console report of :func:`run_sweep`: the headline method's average FPR95 over the grid and
    the best setting per method."""
    methods = {r["method"] for r in rows}
    head = next(m for m in HEADLINE if m in methods)
    avg = {(r["k"], r["alpha"]): r["fpr95"] for r in rows if r["method"] == head and r["ood_set"] == "average"}
    w = max(6, *(len(f"{a:g}") + 1 for a in alphas))
    lines = [f"\nAverage FPR95 of {report.LABELS[head]} (rows: k, columns: alpha), percent:",
             f"{'k':>5} " + "".join(f"{a:>{w}g}" for a in alphas)]
    lines += [f"{k:>5} " + "".join(f"{avg[(k, a)]:>{w}.2f}" for a in alphas) for k in ks]
    lines.append("\nBest setting per method by average FPR95 (chosen on the test OOD sets: for analysis, "
                 "not for reporting):")
    for method, r in best_settings(rows).items():
        if method in ("i2t", "i2t_star", "t2i"):
            continue
        where = ", ".join(f"{n}={r[n]:g}" for n in ("k", "alpha") if r[n] != "")
        lines.append(f"  {report.LABELS[method]:<8} {where or '(no k / alpha)':<20} FPR95 {r['fpr95']:6.2f}  "
                     f"AUROC {r['auroc']:6.2f}")
    lines.append(average_note(sorted({r["ood_set"] for r in rows} - {report.AVERAGE})))
    return "\n".join(lines)
