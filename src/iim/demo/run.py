"""The demo pipeline: world -> extract -> 0-shot scores -> 4-shot IIM training -> S-MCM scores -> table,
with 4-shot CoOp, LoCoOp and Local-Prompt rows (``iim train --method``) trained and scored alongside.

    from iim.demo.run import run_demo
    summary = run_demo(seeds=[1, 2, 3])      # what `iim demo --seeds 1,2,3` does

Every stage is the project's own (``iim.extract``, ``iim.train``, ``iim.score``) called in-process on
the ``demo`` benchmark with the packaged ``iim-demo`` CLIP; nothing here is demo-specific maths.
The stages' own reports go to ``<out>/demo.log``; the console gets progress and the final table.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache.names import run_name
from ..errors import IIMError
from ..recipes import load_recipe
from ..registry import METHODS, ZERO_SHOT, label as evaluator_label
from ..score.summary import summarise as summarise_runs
from ..train.diagnostics import collapse_warnings, format_diagnostics

AVERAGE = "average"


_DEMO = load_recipe("demo")     # the demo recipe, src/iim/recipes/demo.toml: the only copy of these defaults


@dataclass(frozen=True)
class DemoSettings:
    """IIM settings for the 64-patch demo model; the defaults are the demo recipe's
    (``src/iim/recipes/demo.toml``, where each is explained)."""
    model: str = _DEMO["model"]
    pretrained: str = _DEMO["pretrained"]
    shots: int = _DEMO["shots"]
    views: int = _DEMO["views"]
    crop_scale: float = _DEMO["crop_scale"]
    k: int = _DEMO["k"]
    n_neg: int = _DEMO["n_neg"]
    epochs: int = _DEMO["epochs"]
    batch_size: int = _DEMO["batch_size"]
    lr: float = _DEMO["lr"]
    alpha: float = _DEMO["alpha"]
    logit_scale: float | None = None   # None: the model's own logit_scale.exp() (SPEC §3)
    recipes: tuple = tuple(_DEMO["recipes"])
    baselines: tuple = tuple(_DEMO["baselines"])
    locoop_top_k: int = _DEMO["locoop_top_k"]
    baseline_epochs: int | None = None     # None: each paper's (CoOp, LoCoOp 50; Local-Prompt 30)
    negatives: bool = _DEMO["negatives"]
    neg_groups: int = _DEMO["neg_groups"]


VOCAB = Path(__file__).parent / "vocab"      # the demo world's words plus unrelated ones (vocab/README.md)


# the demo table's short names of the S-MCM variants with mined negatives (beside / instead of the learned ones)
MINED = {"s_mcm_hand_mined": "S-MCM + mined negatives", "s_mcm_learned_learned_mined": "S-MCM + mined negatives"}
LEFT_OUT = ("s_mcm_learned_mined",)   # IIM's S-MCM with mined negatives in place of its learned ones: iim report's


def _rows(shots: int) -> tuple:
    """The demo table's rows ``(label, which result, metrics key)``: the evaluators each method's paper
    reports (:mod:`iim.registry`), 0-shot first, then the comparison methods, KNN, IIM and IIM official."""
    def name(key):
        return MINED.get(key) or evaluator_label(key)
    few = f"({shots}-shot)"
    rows = [(f"{name(e)} ({ZERO_SHOT.label})", "zero", e) for e in ZERO_SHOT.evaluators]
    rows += [(f"{m.label} + {name(e)} {few}", m.name, e) for m in METHODS.values() if m.name != "iim"
             for e in m.evaluators]
    rows.append((f"{evaluator_label('knn')} {few}", "iim", "knn"))
    rows += [(f"{METHODS['iim'].label} + {name(e)} {few}", "iim", e) for e in METHODS["iim"].evaluators
             if e not in LEFT_OUT]
    rows += [(f"{NAMES['official']} + {name(e)} {few}", "official", e) for e in ("r_mcm", "s_mcm")]
    return tuple(rows)


SOURCE = {"paper": "iim", "official": "official"}      # recipe -> rows (a comparison method: its name)
NAMES = {**{n: m.label for n, m in METHODS.items()}, "official": f"{METHODS['iim'].label} official"}
ROWS = _rows(DemoSettings.shots)
RUN_PREFIX = {"paper": "iim", "official": "official"}  # recipe -> run folder <prefix>-shots{K}-seed{S}-views{V}
KNN = {"k": 1, "all_views": False}   # the scorer's KNN baseline: 1-NN on the support images' global features


def run_demo(seeds=(1,), *, out="runs/demo", cache="cache/demo", world=None, device="auto",
             settings: DemoSettings = DemoSettings(), plots: bool = True, progress: bool = True,
             echo=print) -> dict:
    """Run the whole demo for the few-shot ``seeds``; return (and write ``<out>/summary.json``) the table."""
    from ..extract.run import extract
    from ..score.run import format_score, run_score
    from ..score.pipeline import prepare_run, prepare_zero_shot
    from .benchmark import world_benchmark

    seeds = list(seeds)
    if not seeds:
        raise IIMError("--seed needs at least one value")
    t0 = time.perf_counter()
    out, cache = Path(out), Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    logfile = out / "demo.log"
    logfile.write_text("")
    s = settings

    def log(msg):
        with open(logfile, "a") as f:
            f.write(msg + "\n")

    _check_cache_weights(cache, s.pretrained, s.crop_scale)
    echo(f"[1/4] demo world + features (model {s.model}, weights {s.pretrained}) -> {cache}")
    bench = world_benchmark(world, progress=progress)
    extract(bench, cache, model=s.model, pretrained=s.pretrained, shots=[s.shots], seeds=seeds,
            views=s.views, crop_scale=s.crop_scale, workers=0, device=device, progress=progress, log=log)

    negatives = None
    if s.negatives:
        from ..negatives import mine_negatives
        negatives = out / "negatives"
        echo(f"[2/4] negative labels mined from {VOCAB} -> {negatives}")
        mine_negatives(cache, VOCAB, negatives, device=device, overwrite=True)

    def with_negatives(job):
        if negatives is not None:
            from ..negatives.scores import attach_negatives
            attach_negatives(job, negatives, groups=s.neg_groups)
        return job

    echo(f"[2/4] 0-shot scores (k={s.k})")
    zero = run_score(with_negatives(prepare_zero_shot(cache, out / "zero-shot")), k=s.k, alpha=s.alpha, device=device,
                     plot=plots, progress=progress)
    log(format_score(zero))

    def score_run(run_dir, **kw):
        result = run_score(with_negatives(prepare_run(run_dir, cache_path=cache)), k=s.k, alpha=s.alpha,
                           device=device, progress=progress, **kw)
        log(format_score(result))
        return result

    where = dict(out=out, cache=cache, device=device, progress=progress, echo=echo, log=log)
    runs, scale = _iim_runs(s, seeds, score_run=score_run, plots=plots, **where)
    runs.update(_baseline_runs(s, seeds, scale, score_run=score_run, **where))

    summary = summarise(zero, runs, settings=dataclasses.replace(s, logit_scale=scale),
                        seconds=time.perf_counter() - t0)
    _write_summary(summary, out, s, seeds, plots=plots, echo=echo, logfile=logfile)
    return summary


def _write_summary(summary: dict, out: Path, s: DemoSettings, seeds, *, plots, echo, logfile) -> None:
    """``summary.json`` and ``summary.md``; the table and where the plots, tables and log are, echoed."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_table(summary) + "\n")
    echo("")
    echo(format_summary(summary))
    if plots:
        dirs = [out / "zero-shot" / "plots"] + [out / run_name(RUN_PREFIX[r], s.shots, seed, s.views) / "plots"
                                                 for r in s.recipes for seed in seeds]
        echo(f"\nPlots (score histograms, ROC curves): {', '.join(str(p) for p in dirs)}")
    echo(f"Tables: {out / 'summary.md'}, {out / 'summary.json'}; every stage's report: {logfile}")
    echo(f"Total {summary['seconds']:.0f} s")


def _iim_runs(s: DemoSettings, seeds, *, out, cache, device, progress, echo, log, score_run, plots):
    """Train and score IIM for every recipe and seed -> ``({"iim"|"official": {seed: results}}, logit scale)``
    (the scale the first run resolved: the model's own unless the settings give one)."""
    from ..cache import train_split_name
    from ..train.loop import TrainConfig, train

    scale = s.logit_scale                 # None: the model's own, resolved (and recorded) by train
    runs = {SOURCE[r]: {} for r in s.recipes}
    for recipe in s.recipes:
        for seed in seeds:
            tau = "the model's own" if scale is None else f"{scale:.4g}"
            echo(f"[3/4] {s.shots}-shot IIM training, {recipe} recipe, seed {seed} ({s.epochs} epochs, k={s.k}, "
                 f"{s.n_neg} negative prompts, logit scale {tau})")
            run_dir = out / run_name(RUN_PREFIX[recipe], s.shots, seed, s.views)
            cfg = TrainConfig(cache=str(cache), split=train_split_name(s.shots, seed, s.views), out=str(run_dir),
                              seed=seed, recipe=recipe, k=s.k, n_neg=s.n_neg, epochs=s.epochs,
                              batch_size=s.batch_size, lr=s.lr, logit_scale=scale, device=device)
            state = train(cfg, overwrite=True, progress=progress, log=log)
            scale = state["config"]["logit_scale"]
            for w in collapse_warnings(state):
                echo(f"  warning: {w}")
            echo(f"[4/4] S-MCM scores, {recipe} recipe, seed {seed}")
            runs[SOURCE[recipe]][seed] = score_run(run_dir, knn=KNN, plot=plots)
    return runs, scale


def _baseline_runs(s: DemoSettings, seeds, scale, *, out, cache, device, progress, echo, log, score_run) -> dict:
    """Train and score each comparison method for every seed -> ``{method: {seed: results}}``."""
    from ..cache import train_split_name
    from ..train.loop import train

    runs = {}
    for method in s.baselines:
        for seed in seeds:
            echo(f"[4/4] {s.shots}-shot {NAMES[method]}, seed {seed}: training and scoring")
            run_dir = out / run_name(method, s.shots, seed, s.views)
            train(baseline_config(method, s, cache=cache, split=train_split_name(s.shots, seed, s.views),
                                  out=run_dir, seed=seed, device=device, logit_scale=scale),
                  overwrite=True, progress=progress, log=log)
            runs.setdefault(method, {})[seed] = score_run(run_dir, plot=False)
    return runs

def baseline_config(method: str, s: DemoSettings, *, cache, split: str, out, seed: int, device: str,
                    logit_scale: float | None = None):
    """The demo's TrainConfig of a comparison method: its paper's defaults but the demo's batch (and, for
    Local-Prompt, IIM's demo k and negatives; LoCoOp: top-K scaled to the 20 classes)."""
    from ..train.loop import TrainConfig
    extra = {"locoop": dict(locoop_top_k=s.locoop_top_k), "localprompt": dict(k=s.k, n_neg=s.n_neg)}
    return TrainConfig(cache=str(cache), split=split, out=str(out), seed=seed, device=device, method=method,
                       batch_size=s.batch_size, epochs=s.baseline_epochs, logit_scale=logit_scale,
                       **extra.get(method, {}))


def _check_cache_weights(cache: Path, pretrained: str, crop_scale: float) -> None:
    """A cache extracted with earlier demo weights or another crop scale is refused with a one-line
    hint (never mixed)."""
    from ..data.splits import split_crop_scale
    from ..models import weights_id
    manifest = cache / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        old = m.get("weights")
        if old != weights_id(pretrained):
            raise IIMError(f"{cache} holds features of other weights ({old}); the packaged demo weights "
                           f"changed: delete {cache} or pass --cache DIR")
        crops = {split_crop_scale(e) for e in (m.get("splits") or {}).values()} - {None, crop_scale}
        if crops:
            raise IIMError(f"{cache} holds views cropped with scale {crops.pop():g}, the demo now uses "
                           f"{crop_scale:g} (SPEC §1): delete {cache} or pass --cache DIR")


def summarise(zero: dict, runs: dict, *, settings: DemoSettings, seconds: float) -> dict:
    """Mean and std over seeds of each table row, per OOD set and on average, in percent. ``runs``:
    ``{"iim": {seed: results}, "official": {seed: results}}`` (a plain ``{seed: results}`` is "iim")."""
    if runs and not isinstance(next(iter(runs)), str):
        runs = {"iim": runs}
    seeds = list(runs["iim"] if "iim" in runs else next(iter(runs.values())))
    sets = list(next(iter(zero["metrics"].values())))
    agg = {"zero": summarise_runs([zero])}
    agg.update({src: summarise_runs([r[s] for s in seeds]) for src, r in runs.items() if r})
    rows = []
    for label, source, key in ROWS:
        a = agg.get(source)
        if a is None or key not in a["mean"]:
            continue
        cells = {name: {metric: {"mean": a["mean"][key][name][metric], "std": a["std"][key][name][metric],
                                 "values": a["values"][key][name][metric]} for metric in ("fpr95", "auroc")}
                 for name in sets}
        rows.append({"method": label, "key": key, "source": source, "cells": cells})
    acc = {src: [r[s]["id"]["accuracy"] for s in seeds] for src, r in runs.items() if r}
    id_accuracy = {"zero_shot": zero["id"]["accuracy"]}
    for src, values in acc.items():
        id_accuracy.update({src: float(np.mean(values)), f"{src}_values": values})
    diagnostics = {src: {s: (r[s].get("diagnostics") or {}) for s in seeds} for src, r in runs.items() if r}
    return {"seeds": seeds, "ood_sets": sets, "rows": rows, "settings": dataclasses.asdict(settings),
            "id_accuracy": id_accuracy, "diagnostics": diagnostics,
            "n_test": zero["id"]["n"], "n_ood": zero["ood_sets"], "seconds": seconds}


def format_summary(summary: dict) -> str:
    """The paper-style console table (means over seeds)."""
    sets = summary["ood_sets"]
    name_w = max(len(r["method"]) for r in summary["rows"])
    group = 15
    head = " " * name_w + "".join(f"  {n.replace('_', ' ').capitalize() if n == AVERAGE else n:^{group}}" for n in sets)
    sub = f"{'Method':<{name_w}}" + "".join(f"  {'FPR95':>7} {'AUROC':>7}" for _ in sets)
    lines = [head, sub]
    for r in summary["rows"]:
        lines.append(f"{r['method']:<{name_w}}" + "".join(
            f"  {r['cells'][n]['fpr95']['mean']:>7.2f} {r['cells'][n]['auroc']['mean']:>7.2f}" for n in sets))
    seeds = summary["seeds"]
    acc = summary["id_accuracy"]
    over = f"mean over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    shots = summary["settings"]["shots"]
    trained = "".join(f", {shots}-shot {'IIM' if src == 'iim' else 'IIM ' + src} {acc[src]:.2f}%"
                      for src in ("iim", "official") if src in acc)
    lines.append(f"ID accuracy: 0-shot {acc['zero_shot']:.2f}%{trained}")
    for src, per_seed in (summary.get("diagnostics") or {}).items():
        for seed, d in per_seed.items():
            if d:
                lines.append(f"{NAMES.get(src, src)} seed {seed}: {format_diagnostics(d)}"
                             + ("  COLLAPSED" if d.get("collapsed") else "")
                             + ("  BELOW START" if d.get("below_start") else ""))
    return f"FPR95 / AUROC in percent ({over}); {summary['n_test']} ID test images\n" + "\n".join(lines)


def markdown_table(summary: dict) -> str:
    """The README table: mean (± std over seeds for the few-shot rows)."""
    sets = summary["ood_sets"]
    multi = len(summary["seeds"]) > 1
    head = "| Method | " + " | ".join(
        ("Average" if n == AVERAGE else n.replace("_", " ")) + " FPR95 / AUROC" for n in sets) + " |"
    lines = [head, "|---|" + "---|" * len(sets)]
    for r in summary["rows"]:
        def cell(n):
            c = r["cells"][n]
            if multi and r["source"] != "zero":
                return f"{c['fpr95']['mean']:.2f} ± {c['fpr95']['std']:.2f} / {c['auroc']['mean']:.2f} ± {c['auroc']['std']:.2f}"
            return f"{c['fpr95']['mean']:.2f} / {c['auroc']['mean']:.2f}"
        lines.append(f"| {r['method']} | " + " | ".join(cell(n) for n in sets) + " |")
    return "\n".join(lines)
