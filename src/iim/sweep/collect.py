"""A sweep's collected results: the tidy ``results.csv`` (one row per point x test k x alpha x evaluator
x OOD set, every metric and every option as columns), ``points.csv`` (each point's state) and
``report.md`` with its figures (``figures/*.png`` and ``.pdf``).

Tables and figures use each point's results at the scoring (k, alpha) (results.json); the train k x
test k heat map uses the test-k sweep (sweep.csv) at that alpha. Means and stds are over seeds (the
tables) or over every point sharing the plotted value (the figures: the other options and seeds).
When the cache's benchmark is one of the paper's, the paper's own averages (:mod:`iim.paper`, SPEC §7)
follow our rows as ``paper:`` rows.
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..cache import open_cache
from ..paper import SOURCE, paper_rows
from ..registry import EVALUATOR_COLUMN, METHOD_COLUMN
from ..score import report
from ..registry import TEST_K
from ..score.plots import panels, save_formats
from ..score.sweep import ALPHA_METHODS, K_METHODS
from ..spreadsheet import plain
from .grid import sweepable
from .run import Point, Scoring, read_state

HEADLINE = ("s_mcm", "s_mcm_star")
EVALUATORS = ("mcm", "gl_mcm", "r_mcm_star", "r_mcm", "s_mcm_star", "s_mcm", "knn")
ROW_KEYS = ("test_k", "alpha", EVALUATOR_COLUMN, "ood_set")
CSV_NAMES = {"method": METHOD_COLUMN}     # the training option, told apart from the evaluator column


def option_columns() -> list[str]:
    return list(sweepable())


def point_options(p: Point) -> dict:
    """Every sweepable option's value for ``p`` (its full config, not just what was swept)."""
    cfg = vars(p.config)
    return {n: p.options[n] if n in p.options else cfg.get(n) for n in option_columns()}


def point_rows(p: Point, scoring: Scoring) -> list[dict]:
    """The tidy rows of one finished point: results.json at (k, alpha) with every metric, then the
    sweep.csv rows of the other (test k, alpha) settings (FPR95 and AUROC)."""
    res = json.loads((p.dir / "results.json").read_text())
    rows, seen = [], set()
    for method, per in res["metrics"].items():
        k = scoring.k_for(p.config.k) if method in ALPHA_METHODS + K_METHODS else ""
        a = scoring.alpha if method in ALPHA_METHODS else ""
        for ood_set, vals in per.items():
            rows.append(dict(test_k=k, alpha=a, evaluator=method, ood_set=ood_set, **vals))
            seen.add(_key(rows[-1]))
    if scoring.sweeps:
        with open(p.dir / "sweep.csv") as f:
            for r in csv.DictReader(f):
                r = dict(test_k=int(r["k"]) if r["k"] else "", alpha=float(r["alpha"]) if r["alpha"] else "",
                         evaluator=plain(r["method"]), ood_set=plain(r["ood_set"]), fpr95=float(r["fpr95"]),
                         auroc=float(r["auroc"]))
                if _key(r) not in seen:
                    rows.append(r)
    base = dict(point=p.name, **point_options(p))
    return [dict(base, **r) for r in rows]


def _key(r) -> tuple:
    return tuple(str(r[k]) if not isinstance(r[k], float) else f"{r[k]:.10g}" for k in ROW_KEYS)


def collect(out, points: list[Point], scoring: Scoring, grid: dict) -> dict:
    """Write results.csv, points.csv, report.md and figures/ into ``out``; returns what was written."""
    out = Path(out)
    states = {p.name: read_state(p) or {"status": "pending"} for p in points}
    done = [p for p in points if states[p.name]["status"] == "done"]
    rows = [r for p in done for r in point_rows(p, scoring)]
    _write_csv(out / "results.csv", rows, ["point", *option_columns(), *ROW_KEYS, *M.METRICS])
    prow = [dict(point=p.name, status=states[p.name]["status"], error=states[p.name].get("error", ""),
                 seconds=states[p.name].get("seconds", ""), **point_options(p)) for p in points]
    _write_csv(out / "points.csv", prow, ["point", "status", "error", "seconds", *option_columns()])
    varying = [n for n, v in grid.items() if len(v) > 1 and n != "seed"]
    figures = _figures(out / "figures", rows, varying, scoring)
    paper = paper_rows(benchmark(points), shots={p.options["shots"] for p in points}) if points else []
    report.write_text(out / "report.md", _markdown(points, states, rows, grid, varying, scoring, figures, paper))
    return dict(rows=len(rows), done=len(done), failed=sum(s["status"] == "failed" for s in states.values()),
                files=["results.csv", "points.csv", "report.md"] + (["figures/"] if figures else []))


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """``rows`` as CSV, each column named once: the training option ``method`` as ``train_method``
    (:data:`CSV_NAMES`), beside the ``evaluator`` column."""
    header = [CSV_NAMES.get(f, f) for f in fields]
    report.write_csv(path, [{h: r.get(f, "") for h, f in zip(header, fields)} for r in rows], header)


def benchmark(points: list[Point]) -> str | None:
    """The benchmark the points' cache was extracted from (its manifest's ``benchmark``)."""
    return open_cache(points[0].config.cache).manifest.get("benchmark") if points else None


# ---- tables --------------------------------------------------------------------------------------
def _at_setting(rows, scoring: Scoring):
    """Rows at the scoring (k, alpha) (and the k / alpha-free evaluators)."""
    return [r for r in rows if r["test_k"] in ("", scoring.k_for(r["k"])) and r["alpha"] in ("", scoring.alpha)]


def _pm(values) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return f"{v[0]:.2f}" if len(v) else "–"
    return f"{v.mean():.2f} ± {v.std():.2f}"            # population std, as iim report


def _setting(r, varying) -> tuple:
    return tuple(r[n] for n in varying)


def _fmt(v) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else str(v))


def _test_k(scoring: Scoring) -> str:
    if scoring.k is not None:
        return str(scoring.k)
    return f"each point's training top-k when --k lists it (else {TEST_K}, else the first --k)"


def _headline(rows_of_point) -> str:
    have = {r["evaluator"] for r in rows_of_point}
    return next(m for m in HEADLINE if m in have)


def _paper_lines(paper, cols, ood_sets) -> list[str]:
    """Table rows "paper: 4-shot IIM" beside ours: the paper reports only the averages (SPEC §7)."""
    blank = ["–"] * (len(cols) - 1)
    return ["| " + " | ".join([f"paper: {r.label}", *blank, report.LABELS[r.evaluator], "3"]
                              + ["–", "–"] * (len(ood_sets) - 1) + [f"{r.fpr95:.2f}", f"{r.auroc:.2f}"]) + " |"
            for r in paper]


def _markdown(points, states, rows, grid, varying, scoring, figures, paper=()) -> str:
    at = _at_setting(rows, scoring)
    by_point = defaultdict(list)
    for r in at:
        by_point[r["point"]].append(r)
    n_done = len(by_point)
    lines = [f"# Sweep report\n",
             f"{len(points)} grid points ({n_done} done, "
             f"{sum(s['status'] == 'failed' for s in states.values())} failed); grid: "
             + "; ".join(f"{n} = {', '.join(_fmt(v) for v in vals)}" for n, vals in grid.items()) + ".",
             f"Scored at test k = {_test_k(scoring)}, alpha = {scoring.alpha:g}, T = {scoring.T:g}; FPR95 and AUROC in "
             f"percent, mean ± std over seeds. All rows: results.csv.\n"]
    ood_sets = list(dict.fromkeys(r["ood_set"] for r in at if r["ood_set"] != report.AVERAGE)) + [report.AVERAGE]
    cols = varying or ["(all)"]
    groups = defaultdict(list)                 # setting -> point names
    for name, rs in by_point.items():
        groups[_setting(rs[0], varying)].append(name)

    def cell(names, method, ood, metric):
        vals = [r[metric] for n in names for r in by_point[n] if r["evaluator"] == method and r["ood_set"] == ood]
        return _pm(vals)

    if groups:
        lines += ["## Ablation (Table 3 style)\n",
                  "| " + " | ".join(cols) + " | evaluator | seeds | "
                  + " | ".join(f"{o} FPR95 | {o} AUROC" for o in ood_sets) + " |",
                  "|" + "---|" * (len(cols) + 2 + 2 * len(ood_sets))]
        for setting, names in groups.items():
            head = _headline([r for n in names for r in by_point[n]])
            names = [n for n in names if any(r["evaluator"] == head for r in by_point[n])]
            vals = [_fmt(v) for v in setting] or ["all"]
            lines.append("| " + " | ".join(vals) + f" | {report.LABELS[head]} | {len(names)} | "
                         + " | ".join(f"{cell(names, head, o, 'fpr95')} | {cell(names, head, o, 'auroc')}"
                                      for o in ood_sets) + " |")
        if paper:
            lines += _paper_lines(paper, cols, ood_sets)
            lines.append(f"\nThe paper rows are {SOURCE}: the average over its four OOD sets (iNaturalist, SUN, "
                         f"Places, Texture), seeds 1, 2, 3; its 0-shot row compares with `iim score --zero-shot`.")
        methods = [m for m in EVALUATORS if any(r["evaluator"] == m for r in at)]
        for metric in ("fpr95", "auroc"):
            lines += [f"\n## Evaluators side by side: average {metric.upper()}\n",
                      "| " + " | ".join(cols) + " | " + " | ".join(report.LABELS[m] for m in methods) + " |",
                      "|" + "---|" * (len(cols) + len(methods))]
            for setting, names in groups.items():
                vals = [_fmt(v) for v in setting] or ["all"]
                lines.append("| " + " | ".join(vals) + " | "
                             + " | ".join(cell(names, m, report.AVERAGE, metric) for m in methods) + " |")
    failed = [(p.name, states[p.name]) for p in points if states[p.name]["status"] == "failed"]
    if failed:
        lines += ["\n## Failed points\n"] + [f"- `{n}`: {s['error']}" for n, s in failed]
    pending = [p.name for p in points if states[p.name]["status"] == "pending"]
    if pending:
        lines += ["\n## Not run yet\n"] + [f"- `{n}`" for n in pending]
    if figures:
        lines += ["\n## Figures\n"] + [f"![{f}](figures/{f}.png) ([PDF](figures/{f}.pdf))\n" for f in figures]
    return "\n".join(lines) + "\n"


# ---- figures -------------------------------------------------------------------------------------
def _figures(folder: Path, rows, varying, scoring) -> list[str]:
    """Fig. 4 style (average FPR95 / AUROC against each swept option, and against the test alpha),
    Fig. 5 (train k x test k heat map when both vary), Fig. 6 (evaluators side by side). Returns the
    figure names."""
    if not rows:
        return []
    at = [r for r in _at_setting(rows, scoring) if r["ood_set"] == report.AVERAGE]
    methods = [m for m in EVALUATORS if any(r["evaluator"] == m for r in at)]
    names = []
    for opt in varying:                                     # Fig. 4
        _fig_vs_option(folder, at, methods, opt)
        names.append(f"vs_{opt}")
    if len(scoring.alphas) > 1:                             # Fig. 4's alpha panel (test time)
        _fig_vs_alpha(folder, rows, scoring)
        names.append("vs_alpha")
    if "k" in varying and len(scoring.ks) > 1:              # Fig. 5
        _fig_train_k_vs_test_k(folder, rows, scoring)
        names.append("train_k_vs_test_k")
    _fig_evaluators(folder, at, methods, varying)           # Fig. 6
    names.append("evaluators")
    return names


def _fig_vs_option(folder: Path, at, methods, opt) -> None:
    """Fig. 4: average FPR95 / AUROC of each evaluator against the swept option ``opt`` (mean ± std)."""
    values = list(dict.fromkeys(r[opt] for r in at))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    values = sorted(values) if numeric else values
    x = values if numeric else list(range(len(values)))
    fig, axes = panels(2)
    for ax, metric in zip(axes, ("fpr95", "auroc")):
        for m in methods:
            ys = [[r[metric] for r in at if r["evaluator"] == m and r[opt] == v] for v in values]
            keep = [i for i, y in enumerate(ys) if y]
            ax.errorbar([x[i] for i in keep], [np.mean(ys[i]) for i in keep],
                        yerr=[np.std(ys[i]) for i in keep], marker="o", capsize=3, label=report.LABELS[m])
        ax.set_xlabel(opt)
        ax.set_ylabel(f"average {metric.upper()} (%)")
        if not numeric:
            ax.set_xticks(x, [_fmt(v) for v in values])
    axes[0].legend(fontsize=7)
    save_formats(fig, folder / f"vs_{opt}")


def _fig_vs_alpha(folder: Path, rows, scoring) -> None:
    """Fig. 4's alpha panel: the headline evaluators against the test alpha, at each point's test k."""
    by_alpha = [r for r in rows if r["ood_set"] == report.AVERAGE and r["test_k"] == scoring.k_for(r["k"])
                and r["alpha"] != ""]
    fig, axes = panels(2)
    for ax, metric in zip(axes, ("fpr95", "auroc")):
        for m in HEADLINE:
            ys = [[r[metric] for r in by_alpha if r["evaluator"] == m and r["alpha"] == a] for a in scoring.alphas]
            if any(ys):
                ax.errorbar(scoring.alphas, [np.mean(y) if y else np.nan for y in ys],
                            yerr=[np.std(y) if y else np.nan for y in ys], marker="o", capsize=3,
                            label=report.LABELS[m])
        ax.set_xlabel("alpha")
        ax.set_ylabel(f"average {metric.upper()} (%)")
    axes[0].legend(fontsize=7)
    save_formats(fig, folder / "vs_alpha")


def _fig_train_k_vs_test_k(folder: Path, rows, scoring) -> None:
    """Fig. 5: average FPR95 of each point's headline evaluator, train k x test k."""
    sweep = [r for r in rows if r["ood_set"] == report.AVERAGE and r["alpha"] in ("", scoring.alpha)
             and r["test_k"] != ""]
    head = {}                                           # per point: S-MCM, or S-MCM* without negatives
    for r in sweep:
        if r["evaluator"] in HEADLINE and head.get(r["point"]) != HEADLINE[0]:
            head[r["point"]] = r["evaluator"]
    sweep = [r for r in sweep if head.get(r["point"]) == r["evaluator"]]
    label = " / ".join(report.LABELS[m] for m in HEADLINE if m in head.values())
    train_ks = sorted({r["k"] for r in sweep})
    grid = np.array([[np.mean([r["fpr95"] for r in sweep if r["k"] == tk and r["test_k"] == k] or [np.nan])
                      for k in scoring.ks] for tk in train_ks])
    fig, (ax,) = panels(1, 5.0)
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(scoring.ks)), [str(k) for k in scoring.ks])
    ax.set_yticks(range(len(train_ks)), [str(k) for k in train_ks])
    ax.set_xlabel("test k")
    ax.set_ylabel("train k")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label=f"average FPR95 of {label} (%)")
    save_formats(fig, folder / "train_k_vs_test_k")


def _fig_evaluators(folder: Path, at, methods, varying) -> None:
    """Fig. 6: every evaluator side by side at each setting of the swept options."""
    settings = list(dict.fromkeys(_setting(r, varying) for r in at))       # Fig. 6
    fig, axes = panels(2, max(4.0, 0.6 * len(settings) * len(methods) / 3))
    width = 0.8 / max(1, len(methods))
    for ax, metric in zip(axes, ("fpr95", "auroc")):
        for j, m in enumerate(methods):
            ys = [np.mean([r[metric] for r in at if r["evaluator"] == m and _setting(r, varying) == s] or [np.nan])
                  for s in settings]
            ax.bar(np.arange(len(settings)) + j * width, ys, width, label=report.LABELS[m])
        ax.set_xticks(np.arange(len(settings)) + 0.4 - width / 2,
                      [", ".join(f"{n}={_fmt(v)}" for n, v in zip(varying, s)) or "all" for s in settings],
                      rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"average {metric.upper()} (%)")
    axes[0].legend(fontsize=7)
    save_formats(fig, folder / "evaluators")
