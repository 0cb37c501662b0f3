"""``iim predict``: is each image in-distribution, and if so which class? A run (or zero-shot) on new files."""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .options import FOLDER, cache_option, device_option, out_option, progress_option
from ..errors import IIMError
from ..metrics import RECALL
from ..options import BATCH, Finite, click_options
from ..registry import PREDICT_EVALUATORS, label
from ..score import report
from ..score.options import ScoreOptions
from ..predict.detector import Detector, Predictions
from ..predict.inputs import select_images

FIELDS = ["path", "decision", "score", "class", "probability", "class_2", "probability_2", "class_3",
          "probability_3", "reason"]
SHOWN = 20          # rows printed on the console (all of them are in the files)


def _one(values, flag):
    if values is None:
        return None
    if len(values) != 1:
        raise IIMError(f"iim predict scores with one {flag} value, got {len(values)} ({values})")
    return values[0]


class EvaluatorName(click.ParamType):
    """An evaluator by its label (``S-MCM``, ``s-mcm``, ``s_mcm``, ``S-MCM*``), kept as written; others refused."""
    name = "evaluator"

    def convert(self, value, param, ctx):
        from ..predict.detector import method_key
        try:
            method_key(value)
        except IIMError:
            self.fail(f"unknown evaluator {value!r}; choose from {', '.join(map(label, PREDICT_EVALUATORS))} "
                      f"(KNN needs a memory bank, NegLabel / CSP / AdaNeg mined negatives: use iim score)",
                      param, ctx)
        return value


def _evaluator(evaluator, old_method):
    """``--evaluator``, or the old spelling ``--method`` (which in ``iim train`` names the training method)."""
    if old_method is None:
        return evaluator
    if evaluator is not None and evaluator != old_method:
        raise IIMError(f"--evaluator {evaluator} and --method {old_method} disagree; give --evaluator only")
    click.echo("Warning: iim predict --method is deprecated; it is --evaluator now (--method names the "
               "training method in iim train)", err=True)
    return old_method


@click.command("predict")
@click.argument("images", nargs=-1, metavar="IMAGES...")
@click.option("--run", type=FOLDER, help="Trained run folder (runs/NAME).")
@click.option("--zero-shot", is_flag=True, help="No run: the cache's frozen 'a photo of a {c}.' prototypes "
                                                "(needs --cache and --out).")
@cache_option("Feature cache: zero-shot's, or a run's when it moved (default: the one the run recorded).")
@click.option("--evaluator", type=EvaluatorName(), help=f"Evaluator: S-MCM (runs), MCM (zero-shot), or "
              f"{', '.join(label(k) for k in PREDICT_EVALUATORS if k not in ('s_mcm', 'mcm'))}.")
@click.option("--method", "old_method", type=EvaluatorName(), hidden=True, help="Deprecated spelling of --evaluator.")
@click_options(ScoreOptions, skip=("chunk", "knn_k", "knn_all_views", "recipe"),   # recipe: the run's
               defaults={"k": None, "alpha": None, "T": None})
@click.option("--threshold", type=Finite(), help="In-distribution when score >= this.")
@click.option("--tpr", type=float, help="Threshold keeping this fraction of the cache's ID test images  "
                                        f"[default: {RECALL:g}]")
@click.option("--pretrained", metavar="FILE", help="The cache's weights as a local checkpoint, when its "
                                                   "recorded tag or file cannot be loaded (checked).")
@click.option("--batch-size", type=BATCH, default=128, show_default=True,
              help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes  [default: min(8, CPUs)]")
@out_option("Folder for predictions.csv and predictions.json. Default: the run folder.")
@device_option
@progress_option
def predict(images, run, zero_shot, cache, evaluator, old_method, k, alpha, T, threshold, tpr, pretrained,
            batch_size, workers, out, device, progress):
    """Flag new images: score each with a run's detector, decide in / out, name its class.

    \b
    iim predict --run runs/NAME photos/ extra.jpg 'more/**/*.png'
    iim predict --run runs/NAME --threshold 1.2 --evaluator S-MCM --k 50 photos/
    iim predict --zero-shot --cache cache/NAME --out results/zs photos/

    Folders are searched recursively for image files; unreadable files are listed as skipped, the rest
    scored. --k / --alpha / --T default to the run's scoring settings (its results.json), the threshold
    to --tpr 0.95 of the ID test images (from the run's scores_test.npz, else scored now). Writes
    predictions.csv and predictions.json into the run folder (--out).
    """
    t0 = time.perf_counter()
    method = _evaluator(evaluator, old_method)
    k, alpha = _one(k, "--k"), _one(alpha, "--alpha")
    if zero_shot:
        if run is not None:
            raise IIMError("--zero-shot predicts without a run; drop --run")
        if cache is None or out is None:
            raise IIMError("--zero-shot needs --cache CACHE and --out DIR (there is no run folder to write into)")
    elif run is None:
        raise IIMError("pass --run runs/NAME (a trained run), or --zero-shot --cache CACHE --out DIR")
    paths = select_images(images)
    opts = dict(device=device, method=method, k=k, alpha=alpha, T=T, threshold=threshold, tpr=tpr,
                pretrained=pretrained)
    det = Detector.from_cache(cache, **opts) if zero_shot else Detector.from_run(run, cache=cache, **opts)
    det.load_encoder()
    out = Path(out) if out is not None else det.run_dir
    if out.exists() and not out.is_dir():
        raise IIMError(f"--out {out} is a file, not a folder")
    for w in det.job.warnings:
        click.echo(f"Warning: {w}", err=True)
    what = f"zero-shot, cache {det.cache.root}" if zero_shot else f"run {det.run_dir}"
    click.echo(f"Predicting {len(paths)} images with {what}: {report.LABELS[det.method]} k={det.k} "
               f"alpha={det.alpha:g} T={det.T:g}, device {det.device}")
    for note in det.notes:
        click.echo(note)
    click.echo(f"Threshold {det.threshold:.6g}: {det.threshold_source}")

    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    t1 = time.perf_counter()
    pred = det.predict(paths, batch_size=batch_size, workers=workers, progress=progress)
    seconds = time.perf_counter() - t1
    rows = prediction_rows(pred)
    report.write_csv(out / "predictions.csv", rows, FIELDS)
    report.write_json(out / "predictions.json", {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **det.describe(),
        "n_images": len(pred), "n_scored": int(pred.ok.sum()), "n_skipped": int((~pred.ok).sum()),
        "n_in": int(pred.decisions.sum()),
        "predictions": [{"path": pred.paths[i], "decision": r["decision"], "score": float(pred.scores[i]),
                         "class": r["class"], "probability": float(pred.probabilities[i]),
                         "top3": [[c, float(p)] for c, p in zip(pred.top3_classes[i], pred.top3_probabilities[i])]}
                        for i, r in enumerate(rows) if pred.ok[i]],
        "skipped": [{"path": r["path"], "reason": r["reason"]} for r in rows if r["decision"] == "skipped"],
    })
    click.echo(format_rows(rows))
    n_ok, n_in = int(pred.ok.sum()), int(pred.decisions.sum())
    click.echo(f"{n_in} in, {n_ok - n_in} out, {len(pred) - n_ok} skipped; {n_ok / max(seconds, 1e-9):.1f} img/s. "
               f"Wrote {out / 'predictions.csv'}, predictions.json ({time.perf_counter() - t0:.1f} s)")
    return pred


def prediction_rows(pred: Predictions) -> list[dict]:
    """One row per input file: the CSV's columns (:data:`FIELDS`)."""
    rows = []
    for i, path in enumerate(pred.paths):
        if not pred.ok[i]:
            rows.append({f: "" for f in FIELDS} | {"path": path, "decision": "skipped", "reason": pred.errors[i]})
            continue
        r = {"path": path, "decision": "in" if pred.decisions[i] else "out", "score": float(pred.scores[i]),
             "reason": ""}
        for j, suffix in enumerate(("", "_2", "_3")):
            has = j < pred.top3_classes.shape[1]
            r["class" + suffix] = pred.top3_classes[i, j] if has else ""
            r["probability" + suffix] = float(pred.top3_probabilities[i, j]) if has else ""
        rows.append(r)
    return rows


def printable(text) -> str:
    """``text`` with every unprintable character (newline, tab, ESC, ...) as its escape (``\\n``,
    ``\\x1b``): one table cell on one line, which cannot move the cursor or recolour the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(text))


def format_rows(rows: list[dict], shown: int = SHOWN) -> str:
    """The console table: the first ``shown`` scored files, then the skipped ones with their reasons
    (paths, classes and reasons through :func:`printable`; the CSV and JSON files keep them as they are)."""
    rows = [{f: printable(v) if isinstance(v, str) else v for f, v in r.items()} for r in rows]
    scored = [r for r in rows if r["decision"] != "skipped"]
    skipped = [r for r in rows if r["decision"] == "skipped"]
    lines = []
    if scored:
        w = min(60, max(4, *(len(r["path"]) for r in scored[:shown])))
        lines.append(f"{'path':<{w}}  decision     score  class (probability)")
        for r in scored[:shown]:
            lines.append(f"{r['path']:<{w}}  {r['decision']:<8} {r['score']:9.4f}  {r['class']} "
                         f"({r['probability']:.2f})")
        if len(scored) > shown:
            lines.append(f"... {len(scored) - shown} more in predictions.csv")
    if skipped:
        lines.append(f"Skipped {len(skipped)} file(s):")
        lines += [f"  {r['path']}: {r['reason']}" for r in skipped[:shown]]
        if len(skipped) > shown:
            lines.append(f"  ... {len(skipped) - shown} more in predictions.csv")
    return "\n".join(lines)

