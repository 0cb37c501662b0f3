"""Metrics per method and OOD set, the paper-style table, and the result files (written atomically).

All metric values here are in PERCENT (``iim.metrics`` returns fractions).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..atomic import atomic_write, atomic_write_text
from ..registry import EVALUATORS
from ..spreadsheet import csv_text
from .sources import ALL_SOURCE_KEYS, GLOBAL_KEYS, source_label

LABELS = {**{k: e.label for k, e in EVALUATORS.items()},             # iim.registry: each named once
          **{k: source_label(k) for k in ALL_SOURCE_KEYS}}
TABLE_METHODS = ("mcm", "gl_mcm", "r_mcm_star", "r_mcm", "s_mcm_star", "s_mcm", "knn", *GLOBAL_KEYS,
                 *ALL_SOURCE_KEYS)
AVERAGE = "average"




def write_text(path, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path, rows: list[dict], fields: list[str]) -> None:
    """``rows`` as CSV: floats in ``%.10g``, text a spreadsheet would run as a formula quoted
    (:func:`iim.spreadsheet.csv_text`)."""
    write_text(path, csv_text([fields, *([f"{r[f]:.10g}" if isinstance(r[f], float) else r[f] for f in fields]
                                         for r in rows)]))


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def compute_metrics(id_scores: dict[str, np.ndarray], ood: dict[str, dict[str, np.ndarray]],
                    names=M.METRICS) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {ood_set | "average": {metric: percent}}}`` for every method in ``id_scores``."""
    out = {}
    for method, s_id in id_scores.items():
        per = {name: {m: 100 * getattr(M, m)(s_id, scores[method]) for m in names}
               for name, scores in ood.items()}
        per[AVERAGE] = {m: float(np.mean([v[m] for v in per.values()])) for m in names}
        out[method] = per
    return out


def metric_rows(metrics: dict) -> list[dict]:
    """The long form of :func:`compute_metrics`: rows (method, ood_set, metric, value)."""
    return [{"method": method, "ood_set": name, "metric": m, "value": v}
            for method, per in metrics.items() for name, vals in per.items() for m, v in vals.items()]


def format_table(metrics: dict, *, methods=TABLE_METHODS, columns=("fpr95", "auroc"), labels=LABELS) -> str:
    """Paper-style table: rows = methods, column groups = each OOD set then the average, in percent."""
    methods = [m for m in methods if m in metrics]
    sets = list(next(iter(metrics.values())))                # OOD sets in order, "average" last
    head = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out",
            "fpr95_openood": "FPR@95(OpenOOD)"}
    col_w = max(7, *(len(head[c]) for c in columns))
    group_w = max(len(columns) * (col_w + 1) - 1, *(len(s) for s in sets))
    name_w = max(8, *(len(labels.get(m, m)) for m in methods))
    lines = [" " * name_w + "".join(f"  {s.capitalize() if s == AVERAGE else s:^{group_w}}" for s in sets),
             f"{'Method':<{name_w}}" + "".join(
                 "  " + " ".join(f"{head[c]:>{col_w}}" for c in columns).rjust(group_w) for _ in sets)]
    for m in methods:
        cells = ["  " + " ".join(f"{metrics[m][s][c]:>{col_w}.2f}" for c in columns).rjust(group_w) for s in sets]
        lines.append(f"{labels.get(m, m):<{name_w}}" + "".join(cells))
    return "\n".join(line.rstrip() for line in lines)
