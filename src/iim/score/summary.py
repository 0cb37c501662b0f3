"""Mean and std over runs — the paper reports seeds 1, 2, 3 — of scored results (SPEC §5).

    results = [load_results(r) for r in ("runs/in1k-shots16-seed1-iim", "runs/in1k-shots16-seed2-iim", ...)]
    summary = summarise(results)     # {"mean": {method: {set: {metric: %}}}, "std": ..., "values": ...}

Runs of several methods or shots are put side by side (:func:`group_results`, :func:`side_by_side`):
one group per (method, shots), plus the zero-shot rows, each averaged over its seeds and shown with its
paper's evaluators (:data:`PAPER_ROWS`): the layout of the paper's Table 1 from one ``iim report``.

Within a group, the runs must have been scored on the same OOD sets with the same scoring options
(:data:`iim.score.options.RESULT_KEYS`) and trained with the same result-changing options
(:data:`iim.train.config.RESULT_KEYS`) but their seed; execution options (device, attention kernel,
compile mode, ...) may differ. The standard deviation is numpy's default (population, ddof=0) over the runs, in percent like the results.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cache.fingerprint import compare
from ..cache.names import parse_train_split, without_seed
from ..errors import IIMError
from ..registry import METHODS, ZERO_SHOT, method as method_entry
from ..train.config import RESULT_KEYS as TRAIN_KEYS
from .options import RESULT_KEYS as SCORE_KEYS
from .report import AVERAGE, LABELS, TABLE_METHODS
from .seal import check_seal

RESULTS = "results.json"
METHOD_ORDER = tuple(METHODS)
# the evaluators each method's paper reports (iim.registry; SPEC §8; IIM: the paper's S-MCM, also R-MCM)
# (scored with --negatives, also the 0-shot peers NegLabel / CSP / AdaNeg, 0-shot S-MCM with mined negatives,
# and IIM's S-MCM with mined negatives in place of / beside its learned ones)
PAPER_ROWS = {ZERO_SHOT.name: ZERO_SHOT.evaluators, **{n: m.evaluators for n, m in METHODS.items()}}
REQUIRED = ("ood_sets", "settings", "metrics", "id")   # what results.json must hold to be averaged
MUST_MATCH = SCORE_KEYS              # scoring settings the averaged results must share


def load_results(run_dir) -> dict:
    """A scored run's ``results.json``; a run that was not scored is a clear error."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise IIMError(f"{run_dir} has no {RESULTS}; score it first: iim score --run {run_dir}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IIMError(f"{path} is not valid JSON ({e})") from None
    missing = [k for k in REQUIRED if not isinstance(results, dict) or k not in results]
    if missing or not results["metrics"]:
        raise IIMError(f"{path} lacks {', '.join(missing) or 'metrics'} (not written by 'iim score', or "
                       f"edited); score the run again: iim score --run {run_dir}")
    check_seal(results, path)
    return dict(results, folder=str(Path(run_dir)))


def incomplete(r: dict) -> bool:
    """A trained run scored before its last epoch (``iim report`` refuses it unless asked)."""
    return not r.get("zero_shot") and r.get("complete") is False


def summarise(results: list[dict], *, allow_incomplete: bool = False) -> dict:
    """Mean, std and the per-run values of every metric of every method common to all ``results``.
    A run scored before its last epoch is refused unless ``allow_incomplete`` (then listed in
    ``"incomplete"``)."""
    if not results:
        raise IIMError("no results to summarise")
    unfinished = [r for r in results if incomplete(r)]
    if unfinished and not allow_incomplete:
        r = unfinished[0]
        raise IIMError(f"{r.get('folder', r.get('run'))} was scored after epoch {r.get('epoch')} of "
                       f"{(r.get('run_config') or {}).get('epochs', '?')} (training did not finish); resume "
                       f"it with 'iim train --resume' and score it again, or pass --allow-incomplete")
    first = results[0]
    sets = list(first["ood_sets"])
    for r in results[1:]:
        if list(r["ood_sets"]) != sets:
            raise IIMError(f"{r.get('run')} was scored on OOD sets {list(r['ood_sets'])}, not {sets}")
        for key in MUST_MATCH:              # None: not recorded / no KNN row in that run
            a, b = first["settings"].get(key), r["settings"].get(key)
            if a is not None and b is not None and a != b:
                raise IIMError(f"{r.get('run')} was scored with {key}={r['settings'].get(key)}, "
                               f"{first.get('run')} with {key}={first['settings'].get(key)}; rescore with "
                               f"the same --{key}")
    _check_same_experiment(results)
    methods = [m for m in first["metrics"] if all(m in r["metrics"] for r in results)]
    cells = list(first["metrics"][methods[0]])   # the OOD sets, then "average"
    values = {m: {s: {metric: [r["metrics"][m][s][metric] for r in results]
                      for metric in first["metrics"][m][s]} for s in cells} for m in methods}
    mean = {m: {s: {k: float(np.mean(v)) for k, v in per.items()} for s, per in d.items()} for m, d in values.items()}
    std = {m: {s: {k: float(np.std(v)) for k, v in per.items()} for s, per in d.items()} for m, d in values.items()}
    acc = [r["id"]["accuracy"] for r in results if r["id"].get("accuracy") is not None]
    return {"runs": [r.get("run") for r in results],
            "diagnostics": {str(r.get("run")): r.get("diagnostics") for r in results},
            "seeds": [(r.get("run_config") or {}).get("seed") for r in results],
            "settings": {k: first["settings"].get(k) for k in MUST_MATCH}, "ood_sets": sets,
            "incomplete": [{"run": r.get("folder", r.get("run")), "epoch": r.get("epoch"),
                            "epochs": (r.get("run_config") or {}).get("epochs")} for r in unfinished],
            "mean": mean, "std": std, "values": values, "notes": cache_notes([("these runs", results)]),
            "id_accuracy": {"mean": float(np.mean(acc)) if acc else None, "std": float(np.std(acc)) if acc else None,
                            "values": acc}}


def _check_same_experiment(results: list[dict]) -> None:
    """The runs must differ only in their seed: same training options (other than seed, split seed and
    output folder), all trained or all zero-shot, no run twice."""
    runs = [str(Path(r.get("folder") or r.get("run") or "").resolve()) for r in results]
    for i, a in enumerate(runs):
        if a in runs[:i]:
            j = runs.index(a)
            where = [results[n].get("folder", results[n].get("run")) for n in (j, i)]
            shown = where[0] if where[0] == where[1] else f"{where[0]} and {where[1]} (both are {a})"
            raise IIMError(f"a run is listed twice: {shown}")
    if len({bool(r.get("zero_shot")) for r in results}) > 1:
        raise IIMError("zero-shot results and trained runs cannot be averaged together")
    fps = [r.get("cache_fingerprint") for r in results]     # the scored cache (results before it: not compared)
    for r, fp in zip(results[1:], fps[1:]):
        diff = compare(fp, fps[0], sorted(set(fp or {}) | set(fps[0] or {}))) if fp and fps[0] else []
        if diff:
            raise IIMError(f"{r.get('run') or r.get('folder')} was scored on a cache with {diff[0]} (vs "
                           f"{results[0].get('run') or results[0].get('folder')}); only runs on the same "
                           f"features are averaged")

    def options(r):
        cfg = r.get("run_config") or {}
        split = without_seed(cfg.get("split", ""))
        keys = [k for k in TRAIN_KEYS if k not in ("seed", "split")] + ["model", "weights", "benchmark",
                                                                         "classnames", "crop_scale"]
        return dict({k: cfg.get(k) for k in keys}, split=split)

    first = options(results[0])
    for r in results[1:]:
        other = options(r)
        diff = compare(other, first, sorted(set(first) | set(other)))
        if diff:
            d = diff[0]
            raise IIMError(f"{r.get('run')} was trained with {d.key}={d.a!r}, {results[0].get('run')} "
                           f"with {d.key}={d.b!r}; only runs that differ in their seed are averaged")


def cache_notes(groups: list[tuple[str, list[dict]]]) -> list[str]:
    """Differences a table should show: a group whose runs were scored on several cache locations (same
    model and classes, possibly other images), and groups scored on caches of another model, weights or
    classes than the first group's (``iim report`` puts them side by side, marked)."""
    notes = []
    for label, rs in groups:
        where = sorted({str(r["cache"]) for r in rs if r.get("cache")})
        if len(where) > 1:
            notes.append(f"{label}: its runs were scored on {len(where)} caches ({', '.join(where)}) of the same "
                         f"model and classes")
    known = [(label, rs[0]["cache_fingerprint"]) for label, rs in groups if rs and rs[0].get("cache_fingerprint")]
    for label, fp in known[1:]:
        diff = compare(fp, known[0][1], sorted(set(fp) | set(known[0][1])))
        if diff:
            notes.append(f"{label} was scored on a cache that differs from {known[0][0]}'s in {diff[0]}")
    return notes


def reported(results: list[dict]) -> list:
    """The peers' reported numbers (:func:`iim.paper.reported_rows`) for the benchmark the results'
    negatives were mined on, for those peers the results score."""
    from ..paper import reported_rows
    bench = next(((r.get("negatives") or {}).get("benchmark") for r in results if r.get("negatives")), None)
    have = {m for r in results for m in r.get("metrics", {})}
    return [row for row in reported_rows(bench) if row.evaluator in have]


def reported_line(row) -> str:
    """``reported: NegLabel (ICLR 2024) 25.40 / 94.21`` (average FPR95 / AUROC)."""
    auroc = "–" if row.auroc is None else f"{row.auroc:.2f}"
    return f"reported: {row.method} {row.fpr95:.2f} / {auroc}"


def markdown_table(summary: dict, *, methods=TABLE_METHODS, labels=LABELS, reported_rows=()) -> str:
    """``| Method | <set> FPR95 / AUROC | ... | Average ... |`` with mean ± std in each cell; then the
    ``reported_rows`` (peers' own numbers, averages only), kept apart as "reported:"."""
    mean, std = summary["mean"], summary["std"]
    methods = [m for m in methods if m in mean]
    cells = list(mean[methods[0]])
    head = "| Method | " + " | ".join(("Average" if s == AVERAGE else s) + " FPR95 / AUROC" for s in cells) + " |"
    lines = [head, "|---|" + "---|" * len(cells)]

    for m in methods:
        row = [f"{mean[m][s]['fpr95']:.2f} ± {std[m][s]['fpr95']:.2f} / "
               f"{mean[m][s]['auroc']:.2f} ± {std[m][s]['auroc']:.2f}" for s in cells]
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(row) + " |")
    for r in reported_rows:
        auroc = "–" if r.auroc is None else f"{r.auroc:.2f}"
        lines.append(f"| reported: {r.method} | " + " | ".join(["–"] * (len(cells) - 1) + [f"{r.fpr95:.2f} / {auroc}"])
                     + " |")
    if reported_rows:
        from ..paper import REPORTED_SOURCE
        lines.append(f"\nThe reported rows are from {REPORTED_SOURCE}.")
    lines += [f"\nIncludes an unfinished run: {u['run']} (epoch {u['epoch']} of {u['epochs']})."
              for u in summary.get("incomplete", [])]
    lines += [f"\nNote: {n}." for n in summary.get("notes", [])]
    return "\n".join(lines)


def _group_key(r: dict) -> tuple:
    """``(shots, method order, method)`` of a result; zero-shot rows first as ``(0, -1, "zero_shot")``."""
    if r.get("zero_shot"):
        return (0, -1, "zero_shot")
    cfg = r.get("run_config") or {}
    method = cfg.get("method", "iim")              # runs from before --method are IIM runs
    split = parse_train_split(cfg.get("split", ""))
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (split.shots if split else 0, order, method)


def group_results(results: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """``[(label, method, results)]``: one group per (shots, method), zero-shot first, then by shots and
    method (CoOp, LoCoOp, Local-Prompt, IIM), as the paper's Table 1; labels like ``"4-shot LoCoOp"``."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(_group_key(r), []).append(r)
    out = []
    for (shots, _, method), rs in sorted(groups.items()):
        label = ZERO_SHOT.label if method == ZERO_SHOT.name else f"{shots}-shot {method_entry(method).label}"
        out.append((label, method, rs))
    return out


def side_by_side(groups, *, every_evaluator: bool = False, allow_incomplete: bool = False) -> dict:
    """Each group's :func:`summarise`, and one table of them: ``{"groups": [...], "mean", "std", "rows",
    "labels"}`` where the rows are ``"<label>/<evaluator>"`` (each group's paper evaluators, or all)."""
    mean, std, rows, labels, summaries = {}, {}, [], {}, []
    for label, method, rs in groups:
        summ = summarise(rs, allow_incomplete=allow_incomplete)
        summaries.append(dict(summ, label=label, method=method))
        wanted = TABLE_METHODS if every_evaluator else PAPER_ROWS.get(method, TABLE_METHODS)
        present = [m for m in wanted if m in summ["mean"]]
        for m in present or [m for m in TABLE_METHODS if m in summ["mean"]]:
            row = f"{label}/{m}"
            mean[row], std[row] = summ["mean"][m], summ["std"][m]
            rows.append(row)
            labels[row] = f"{label} {LABELS.get(m, m)}"
    sets = [list(g["ood_sets"]) for g in summaries]
    if any(s != sets[0] for s in sets):
        raise IIMError(f"the runs were scored on different OOD sets ({sets[0]} vs "
                       f"{next(s for s in sets if s != sets[0])}); rescore them on the same sets")
    return {"groups": summaries, "mean": mean, "std": std, "rows": rows, "labels": labels,
            "incomplete": [u for g in summaries for u in g["incomplete"]],
            "notes": cache_notes([(label, rs) for label, _, rs in groups])}
