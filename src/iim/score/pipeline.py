"""From a run folder (or zero-shot) and a feature cache to per-image scores, split by split.

:func:`prepare_run` / :func:`prepare_zero_shot` resolve what is scored (prototypes, cache, output folder)
and refuse incompatible inputs with one-line errors; :func:`stream_split` streams one cache split in
chunks (memory bounded by the chunk, never by N) and keeps only the per-image score vectors.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import open_cache
from ..cache.location import as_path
from ..cache.fingerprint import compare
from ..cache.names import is_ood, ood_set_name, ood_split_name
from ..errors import IIMError
from ..train import checkpoint as train_checkpoint
from ..train.checkpoint import CHECKPOINT
from ..train.diagnostics import KEYS as DIAGNOSTIC_KEYS, collapse_warnings
from .scores import evaluate, id_predictions, similarities
from .seal import check_run_config

CHUNK_BUDGET = {"cpu": 1 << 30, "cuda": 8 << 30}   # bytes of per-chunk intermediates (auto --chunk)


@dataclass
class Job:
    """What to score: the three prototype sets, the cache, and where results go."""
    cache: object
    global_proto: torch.Tensor          # [C, D]
    id_proto: torch.Tensor              # [C, D]
    neg_proto: torch.Tensor | None      # [Cn, D] or None
    out_dir: Path
    run_dir: Path | None = None
    checkpoint: dict = field(default_factory=dict)   # epoch / complete / config of the run (empty: zero-shot)
    knn_split: str | None = None
    notes: list[str] = field(default_factory=list)   # what was chosen, what was skipped (printed by the CLI)
    warnings: list[str] = field(default_factory=list)
    # more scores beside the evaluators, e.g. iim.negatives.scores.NegativeScores: ``columns`` (extra
    # logit columns per patch), ``chunk(split, sims, global, local, job, k=, alpha=) -> {key: [n]}``,
    # ``finish({split: scores}, job)`` (adds scores that need every split), ``record()``, ``arrays()``
    extras: list = field(default_factory=list)

    @property
    def zero_shot(self) -> bool:
        return self.run_dir is None

    @property
    def recipe(self) -> str:
        """The run's training recipe (SPEC §9), which ``iim score`` scores with unless told otherwise."""
        return (self.checkpoint.get("config") or {}).get("recipe") or "paper"


# ---- choosing and checking the inputs -----------------------------------------------------------
def newest_run(runs_dir) -> Path:
    """The run folder under ``runs_dir`` whose ``checkpoint.pt`` was written last."""
    runs_dir = Path(runs_dir)
    found = sorted(runs_dir.glob(f"*/{CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise IIMError(f"no runs found under {runs_dir}/ (no */{CHECKPOINT}); train one with 'iim train' "
                       f"or pass --run, or --zero-shot --cache CACHE --out DIR")
    return found[-1].parent


def _check_compatible(ckpt: dict, cache, run_dir: Path) -> None:
    """The run must have been trained on features like the cache's: same model, weights, classes, D."""
    cfg, man = ckpt["config"], cache.manifest
    run_fp = dict(ckpt.get("cache_fingerprint") or {}, **{k: cfg[k] for k in ("model", "weights") if k in cfg},
                  classnames=list(cfg.get("classnames") or []))
    diff = compare(run_fp, dict(man, classnames=cache.classnames), missing_ok=True)
    if diff:
        d = diff[0]
        where = f"run {run_dir} and cache {cache.root} disagree"
        fix = "; pass the cache the run was trained on with --cache" if d.key in ("model", "weights") else ""
        raise IIMError(f"{where} in {d}{fix}")


def _check_protos(glob, loc, neg, n_classes: int, dim: int, origin: str) -> None:
    for name, p in (("global", glob), ("local", loc)):
        if p.dim() != 2 or p.shape[0] != n_classes:
            raise IIMError(f"{origin}: {name} prototypes are {list(p.shape)}, expected [{n_classes}, D]")
    for name, p in (("global", glob), ("local", loc), ("negative", neg)):
        if p is not None and p.shape[-1] != dim:
            raise IIMError(f"{origin}: {name} prototypes have D={p.shape[-1]} but the cache's features "
                           f"have D={dim}")


def prepare_run(run=None, *, runs_dir="runs", cache_path=None, out=None, knn_split=None) -> Job:
    """Score a trained run: ``run`` (a folder), or the newest run under ``runs_dir``."""
    notes = []
    if run is None:
        run_dir = newest_run(runs_dir)
        chose = f"Scoring run {run_dir} (newest under {Path(runs_dir)}/)"
    else:
        run_dir = Path(run)
        chose = f"Scoring run {run_dir}"
    ckpt = train_checkpoint.load_checkpoint(run_dir, need=("prototypes",))   # config and prototypes only
    cfg = ckpt["config"]
    check_run_config(run_dir, cfg)
    cache_path = cache_path or cfg.get("cache")
    if not cache_path:
        raise IIMError(f"run {run_dir} records no cache; pass --cache")
    if cache_path == cfg.get("cache") and not as_path(cache_path).exists():
        if "***" in str(cache_path):               # redacted when recorded (iim.cache.location.redact)
            raise IIMError(f"the cache {cache_path} recorded in {run_dir} was recorded without its credentials; "
                           f"give its URL again with --cache URL")
        raise IIMError(f"the cache {cache_path} recorded in {run_dir} is not there (moved?); point to it "
                       f"with --cache DIR")
    cache = open_cache(cache_path)
    notes.append(f"{chose}, cache {cache.root}")
    _check_compatible(ckpt, cache, run_dir)
    protos = ckpt["prototypes"]
    as_t = lambda x: None if x is None else torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    glob, loc, neg = as_t(protos.get("global")), as_t(protos.get("local")), as_t(protos.get("neg"))
    if glob is None:
        glob = cache.global_prototypes()
    if neg is not None and neg.shape[0] == 0:
        neg = None
        notes.append("The run has no negative prompts: R-MCM and S-MCM equal R-MCM* and S-MCM* and are omitted")
    test = cache.split("test")
    _check_protos(glob, loc, neg, len(cache.classnames), test.dim, f"run {run_dir}")
    warnings = []
    if not ckpt.get("complete", True):
        warnings.append(f"run {run_dir} is not complete: scoring epoch {ckpt.get('epoch', '?')} of "
                        f"{cfg.get('epochs', '?')}")
    warnings += collapse_warnings(ckpt)          # the training diagnostics' warning, repeated
    last = (ckpt.get("history") or [{}])[-1]
    info = {"epoch": ckpt.get("epoch"), "complete": ckpt.get("complete"), "config": cfg,
            "diagnostics": {k: last[k] for k in DIAGNOSTIC_KEYS if k in last} or None}
    job = Job(cache, glob, loc, neg, Path(out) if out else run_dir, run_dir, info, notes=notes, warnings=warnings)
    job.knn_split = _knn_split(cache, knn_split or cfg.get("split"), explicit=knn_split is not None, job=job)
    return job


def prepare_zero_shot(cache_path, out, *, knn_split=None) -> Job:
    """0-shot rows: the frozen global prototypes serve as local prototypes; no negatives."""
    if not cache_path:
        raise IIMError("--zero-shot needs --cache CACHE")
    if not out:
        raise IIMError("--zero-shot needs --out DIR (there is no run folder to write into)")
    cache = open_cache(cache_path)
    glob = cache.global_prototypes()
    test = cache.split("test")
    _check_protos(glob, glob, None, len(cache.classnames), test.dim, f"cache {cache.root}")
    job = Job(cache, glob, glob, None, Path(out), notes=[f"Scoring zero-shot (global prototypes as local "
                                                          f"prototypes, no negatives), cache {cache.root}"])
    if knn_split is None:
        train = cache.train_splits()
        if len(train) == 1:
            knn_split = train[0]
        else:
            job.notes.append(f"KNN skipped: zero-shot needs a memory bank; name one of the train splits "
                             f"({', '.join(train) or 'none in this cache'}) with --knn-split")
            return job
    job.knn_split = _knn_split(cache, knn_split, explicit=True, job=job)
    return job


def _knn_split(cache, name, *, explicit: bool, job: Job) -> str | None:
    if name is None:
        job.notes.append("KNN skipped: the run records no train split; name one with --knn-split")
        return None
    if cache.is_complete(name):
        return cache.stored_name(name)     # the name on disk (a run may record the other spelling)
    if explicit:
        cache.split(name)     # raises the cache's one-line error (missing or incomplete)
    job.notes.append(f"KNN skipped: train split {name!r} is not in cache {cache.root}")
    return None


def expected_ood_splits(cache) -> list[str]:
    """The cache's OOD sets: every ``ood_*`` split the manifest records (extraction started it) or the
    cache holds, complete or not."""
    recorded = [n for n in (cache.manifest.get("splits") or {}) if is_ood(n)]
    return sorted(set(recorded) | {n for n in cache.split_names() if is_ood(n)})


def ood_split_names(cache, wanted=None) -> list[str]:
    """The OOD splits to score (all complete ``ood_*`` splits, or the named ones); none is an error."""
    if wanted:
        names = list(dict.fromkeys(ood_split_name(w) for w in wanted))
        for n in names:
            cache.split(n)    # missing / incomplete -> one-line error
    else:
        names = expected_ood_splits(cache)
        if not names:
            raise IIMError(f"cache {cache.root} has no complete OOD split (ood_*); extract OOD sets first")
        lost = [n for n in names if not cache.is_complete(n)]
        if lost:
            have = [ood_set_name(n) for n in names if n not in lost]
            state = "missing" if not cache.has_split(lost[0]) else "incomplete"
            raise IIMError(f"OOD split {lost[0]} of {cache.root} is {state}, so the average would leave it "
                           f"out; extract it again (the same 'iim extract' command resumes), or score the "
                           f"other sets by name: " + (" ".join(f"--ood {h}" for h in have) or "--ood NAME"))
    for n in names:
        if cache.split(n).n == 0:
            raise IIMError(f"OOD split {n!r} in {cache.root} is empty (0 images); extract it again or leave "
                           f"it out with --ood")
    return names


# ---- streaming ---------------------------------------------------------------------------------
def auto_chunk_rows(hw: int, n_classes: int, n_neg: int, device: torch.device) -> int:
    """Images per chunk so that the float32 intermediates (~6 maps of HW x (C + Cn)) fit the budget."""
    per_row = 6 * 4 * hw * (n_classes + n_neg) + 1
    return int(max(1, min(4096, CHUNK_BUDGET.get(device.type, CHUNK_BUDGET["cpu"]) // per_row)))


@torch.no_grad()
def stream_split(split, job: Job, *, k=50, alpha=1.0, T: float = 1.0, rows: int | None = None,
                 device="cpu", knn=None, predict: bool = False, progress: bool = True, recipe: str = "paper"):
    """Score every image of ``split``; returns ``(scores {method: numpy}, predictions or None)``.

    ``k`` / ``alpha`` as in :func:`iim.score.evaluate` (ints/floats, or lists for a sweep). ``knn`` a
    :class:`~iim.score.knn.KNNScorer` adds the "knn" row. ``predict`` returns the SPEC §4 ID class
    predictions (with ``min(k, HW)``; point mode only). ``recipe="official"``: the double exponential
    of SPEC §9 in R-MCM / S-MCM with negatives.
    """
    device = torch.device(device)
    protos = [None if p is None else p.to(device) for p in (job.global_proto, job.id_proto, job.neg_proto)]
    n_neg = (0 if job.neg_proto is None else len(job.neg_proto)) + sum(x.columns for x in job.extras)
    rows = rows or auto_chunk_rows(split.hw, len(job.id_proto), n_neg, device)
    scores, preds = defaultdict(list), []
    # disable=None: no bar when stderr is not a terminal (logs, CI)
    with tqdm(total=split.n, unit="img", desc=split.name, leave=False, dynamic_ncols=True,
              disable=None if progress else True) as bar:
        for chunk in split.iter_chunks(rows=rows):
            g = chunk.global_feats.to(device, non_blocking=True)
            loc = chunk.local_feats.to(device, non_blocking=True)
            sims = similarities(g, loc, *protos, T=T, double_exp=recipe == "official")
            out, p_star = evaluate(sims, k=k, alpha=alpha)
            for extra in job.extras:
                out.update(extra.chunk(split.name, sims, g, loc, job, k=k, alpha=alpha))
            for key, val in out.items():
                scores[key].append(val.float().cpu().numpy())
            if predict:
                preds.append(id_predictions(sims, p_star, k).cpu().numpy())
            if knn is not None:
                scores["knn"].append(knn(g))
            bar.update(len(chunk.labels))
    return ({key: np.concatenate(v) for key, v in scores.items()},
            np.concatenate(preds) if predict else None)
