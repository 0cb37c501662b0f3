"""A trained (or zero-shot) detector applied to new images, through the code of ``iim extract`` and
``iim score``: nothing here computes a feature or a score of its own.

* Images: the cache's model and weights (checked against its manifest: sha256 or tag), decoded,
  converted (:func:`iim.data.folders.to_rgb`), preprocessed and batched by
  :func:`iim.extract.run.image_loader`, encoded to float16 SPEC §1 features by
  :func:`iim.extract.run.encode_batch`, exactly as stage one writes them into the cache.
* Scores: :func:`iim.score.similarities` + :func:`iim.score.evaluate` with the run's prototypes
  (:func:`iim.score.pipeline.prepare_run` / ``prepare_zero_shot`` resolve and check them), the ID class
  from :func:`iim.score.scores.id_class_probabilities` (SPEC §4 ID classification).
* Threshold: ``threshold=X``, or the score at ``tpr`` ID recall on the cache's test split
  (:func:`iim.metrics.recall_threshold`, FPR95's rule), from the ``scores_test.npz`` that ``iim score``
  wrote into the run folder when it was scored with the same settings, else scored now
  (:func:`iim.score.pipeline.stream_split`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..cache.location import as_path
from ..errors import IIMError
from ..metrics import RECALL, recall_threshold
from ..recipes import SCORED as RECIPES
from ..score.options import ScoreOptions, Scoring
from ..train.methods import score_k
from ..score.report import LABELS
from ..score.scores import SCORE_KEYS, check_k, evaluate, id_class_probabilities, similarities

TOP = 3                                  # classes listed per image
RUN_METHODS = ("s_mcm", "s_mcm_star")    # a run's default evaluator: S-MCM (S-MCM* without negatives)
ZERO_SHOT_METHOD = "mcm"


def method_key(name: str) -> str:
    """``S-MCM`` / ``s-mcm`` / ``s_mcm`` -> ``s_mcm``; ``S-MCM*`` -> ``s_mcm_star``."""
    key = name.strip().lower().replace("-", "_").replace("*", "_star")
    by_label = {v.lower().replace("-", "_").replace("*", "_star"): k for k, v in LABELS.items()}
    key = by_label.get(key, key)
    if key not in SCORE_KEYS:
        raise IIMError(f"unknown --evaluator {name!r}; choose from "
                       f"{', '.join(LABELS[k] for k in SCORE_KEYS)} (KNN needs a memory bank: use iim score)")
    return key


@dataclass
class Predictions:
    """Per-image results, aligned with the input. Rows that could not be read have ``errors[i]`` set,
    NaN scores and probabilities, ``class_index`` -1, empty class names and ``decisions`` False."""
    scores: np.ndarray               # float32 [N] the method's score, higher = more in-distribution
    decisions: np.ndarray            # bool [N]    True = in-distribution (score >= threshold)
    class_index: np.ndarray          # int64 [N]   predicted ID class (SPEC §4 ID classification)
    classes: np.ndarray              # str [N]     its name
    probabilities: np.ndarray        # float32 [N] its probability (id_class_probabilities)
    top3_classes: np.ndarray         # str [N, 3]  the three most probable classes, best first
    top3_probabilities: np.ndarray   # float32 [N, 3]
    threshold: float
    errors: list                     # str [N]: "" scored, else why the image was skipped
    paths: list | None = None        # the input paths, when paths were given

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def ok(self) -> np.ndarray:
        """bool [N]: the rows that were scored."""
        return np.array([not e for e in self.errors], dtype=bool)


class Detector:
    """Score new images with a run's prototypes (or the zero-shot ones) and a threshold.

    Build with :meth:`from_run` or :meth:`from_cache`. ``method`` (a key of
    :data:`iim.score.SCORE_KEYS` or its label, e.g. ``"S-MCM"``), ``k``, ``alpha``, ``T`` default to
    the run's scoring settings (``results.json`` of ``iim score``), else :class:`ScoreOptions`' defaults.
    ``scoring``: instead of ``k`` / ``alpha`` / ``T``, the settings ``iim score`` / ``iim grid`` score
    with (:class:`iim.score.options.Scoring`: its test k for this run, its alpha, T and recipe). The
    settings used are :attr:`scoring` (one k, one alpha).
    """

    def __init__(self, job, *, method=None, k=None, alpha=None, T=None, scoring: Scoring | None = None,
                 threshold=None, tpr=None, device="auto", pretrained=None):
        from ..models import resolve_device

        self.job, self.cache = job, job.cache
        self.device = resolve_device(device)
        self.pretrained = pretrained
        self.notes: list[str] = []
        test = self.cache.split("test")
        self._test_n, self._hw = test.n, test.hw
        self._amp = test.attrs.get("amp", "fp16")
        self.scoring, self.settings_source = self._settings(scoring, k, alpha, T)
        check_k(self.k, self._hw, len(self.classes))
        if self.T <= 0:
            raise IIMError(f"--T must be positive, got {self.T}")
        available = set(SCORE_KEYS) - (set() if job.neg_proto is not None else {"r_mcm", "s_mcm", "i2t"})
        if method is None:
            self.method = ZERO_SHOT_METHOD if job.zero_shot else next(m for m in RUN_METHODS if m in available)
            if self.method == "s_mcm_star":
                self.notes.append("The run has no negative prompts: scoring with S-MCM* (= S-MCM without them)")
        else:
            self.method = method_key(method)
            if self.method not in available:
                raise IIMError(f"--evaluator {LABELS[self.method]} needs negative prompts, which "
                               f"{'zero-shot has' if job.zero_shot else 'this run has'} none of; use "
                               f"{LABELS[self.method.replace('_star', '')]}* (e.g. --evaluator "
                               f"{LABELS['s_mcm_star']})")
        if threshold is not None and tpr is not None:
            raise IIMError("give --threshold or --tpr, not both")
        if tpr is not None and not 0 < tpr <= 1:
            raise IIMError(f"--tpr must lie in (0, 1], got {tpr}")
        self._given_threshold = None if threshold is None else float(threshold)
        self.tpr = None if threshold is not None else (RECALL if tpr is None else float(tpr))

    def _settings(self, scoring: Scoring | None, k, alpha, T) -> tuple[Scoring, dict]:
        """The scoring settings, each given (``k`` / ``alpha`` / ``T``, or all of ``scoring``), else the
        run's ``results.json``'s, else the defaults; and where each came from."""
        config = self.job.checkpoint.get("config")
        if scoring is not None:
            if (k, alpha, T) != (None, None, None):
                raise IIMError("give the scoring settings as scoring= or as k / alpha / T, not both")
            k, alpha, T = scoring.k_for((config or {}).get("k")), scoring.alpha, scoring.T
        scored, defaults = self._scored_settings(), ScoreOptions()
        given = {"k": k, "alpha": alpha, "T": T}
        k = int(k if k is not None else scored.get("k", score_k(config, defaults.k)))
        alpha = float(alpha if alpha is not None else scored.get("alpha", defaults.alpha))
        T = float(T if T is not None else scored.get("T", defaults.T))
        # the recipe: the one asked for, else as iim score scored the run, else the run's own (SPEC §9)
        recipe = (scoring and scoring.recipe) or scored.get("recipe") or self.job.recipe
        source = {n: ("given" if v is not None else "results.json" if n in scored else "default")
                  for n, v in given.items()}
        return Scoring(ks=[k], alphas=[alpha], k=k, alpha=alpha, T=T, recipe=recipe, device=str(self.device)), source

    @property
    def k(self) -> int:
        return self.scoring.k

    @property
    def alpha(self) -> float:
        return self.scoring.alpha

    @property
    def T(self) -> float:
        return self.scoring.T

    @property
    def recipe(self) -> str:
        return self.scoring.recipe

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run, *, cache=None, device="auto", method=None, k=None, alpha=None, T=None,
                 scoring: Scoring | None = None, threshold=None, tpr=None, pretrained=None) -> "Detector":
        """The detector of a trained run folder (``runs/NAME``). ``cache``: where the run's cache is now,
        if it moved. ``threshold``: a fixed score threshold; else ``tpr`` (default 0.95) of the cache's
        ID test images are kept. ``pretrained``: the cache's weights as a local file, when its tag cannot
        be loaded offline (checked against the manifest)."""
        from ..score.pipeline import prepare_run
        from ..train.checkpoint import load_checkpoint

        run_dir = Path(run)
        if cache is None:
            recorded = load_checkpoint(run_dir, need=("prototypes",))["config"].get("cache")
            if recorded and not as_path(recorded).exists():
                raise IIMError(f"run {run_dir} was trained on cache {recorded}, which is not there any more "
                               f"(moved or deleted?); pass its new location with --cache DIR")
        job = prepare_run(run_dir, cache_path=cache)
        return cls(job, method=method, k=k, alpha=alpha, T=T, scoring=scoring, threshold=threshold, tpr=tpr,
                   device=device, pretrained=pretrained)

    @classmethod
    def from_cache(cls, cache, *, device="auto", method=None, k=None, alpha=None, T=None,
                   scoring: Scoring | None = None, threshold=None, tpr=None, pretrained=None) -> "Detector":
        """Zero-shot: the cache's frozen "a photo of a {c}." prototypes, no training (default MCM)."""
        from ..score.pipeline import prepare_zero_shot

        job = prepare_zero_shot(cache, Path(cache))   # out: unused here (nothing is written)
        return cls(job, method=method, k=k, alpha=alpha, T=T, scoring=scoring, threshold=threshold, tpr=tpr,
                   device=device, pretrained=pretrained)

    # ---- what it is ------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.cache.classnames

    @property
    def run_dir(self) -> Path | None:
        return self.job.run_dir

    def __repr__(self) -> str:
        what = "zero-shot" if self.job.zero_shot else f"run {self.run_dir}"
        return (f"Detector({what}, {LABELS[self.method]}, k={self.k}, alpha={self.alpha:g}, T={self.T:g}, "
                f"{len(self.classes)} classes)")

    def _scored_settings(self) -> dict:
        """k / alpha / T of the run's ``results.json`` (written by ``iim score``), if any."""
        path = None if self.job.zero_shot else self.run_dir / "results.json"
        if path is None or not path.is_file():
            return {}
        try:
            settings = json.loads(path.read_text()).get("settings") or {}
        except (OSError, ValueError):
            return {}
        out = {n: settings[n] for n in ("k", "alpha", "T") if isinstance(settings.get(n), (int, float))}
        return dict(out, recipe=settings["recipe"]) if settings.get("recipe") in RECIPES else out

    # ---- the threshold ---------------------------------------------------------------------------
    @cached_property
    def _threshold(self) -> tuple[float, str]:
        if self._given_threshold is not None:
            return self._given_threshold, "given (--threshold)"
        scores, where = self._cached_test_scores()
        if scores is None:
            from ..score.pipeline import stream_split
            scores = stream_split(self.cache.split("test"), self.job, k=self.k, alpha=self.alpha, T=self.T,
                                  device=self.device, progress=False)[0][self.method]
            where = f"scored now from cache {self.cache.root}"
        t = recall_threshold(scores, self.tpr)
        kept = int((scores >= t).sum())
        return t, (
            f"{LABELS[self.method]} at {self.tpr:.0%} ID recall: {kept} of the {len(scores)} ID test images "
            f"kept ({where})")

    @property
    def threshold(self) -> float:
        """The score threshold: in-distribution when ``score >= threshold``."""
        return self._threshold[0]

    @property
    def threshold_source(self) -> str:
        """Where :attr:`threshold` comes from, in words."""
        return self._threshold[1]

    def _cached_test_scores(self):
        """The run's ``scores_test.npz`` for this method, if ``iim score`` wrote it with the same k,
        alpha and T for the checkpoint as it is now; else ``(None, None)``."""
        if self.job.zero_shot:
            return None, None
        npz, results = self.run_dir / "scores_test.npz", self.run_dir / "results.json"
        ckpt = self.run_dir / "checkpoint.pt"
        if not (npz.is_file() and results.is_file()):
            return None, None
        try:
            res = json.loads(results.read_text())
            st = res.get("settings") or {}
            same = (st.get("k") == self.k and st.get("alpha") == self.alpha and st.get("T") == self.T
                    and res.get("epoch") == self.job.checkpoint.get("epoch")
                    and npz.stat().st_mtime >= ckpt.stat().st_mtime)
            if not same:
                return None, None
            with np.load(npz) as f:
                scores = f[self.method] if self.method in f.files else None
        except (OSError, ValueError, KeyError):
            return None, None
        if scores is None or len(scores) != self._test_n:
            return None, None
        return np.asarray(scores, dtype=np.float64), f"{npz}, written by iim score"

    # ---- the image encoder -----------------------------------------------------------------------
    @cached_property
    def encoder(self):
        """``(model, preprocess)``: the cache's image encoder, its weights checked against the manifest."""
        from ..cache_model import load_cache_model
        from ..features import check_supported

        net, preprocess = load_cache_model(self.cache, self.device, self.pretrained, note=self.notes.append)
        check_supported(net)
        return net, preprocess

    def load_encoder(self) -> "Detector":
        """Build the image encoder now (a missing or mismatched checkpoint fails here); returns self."""
        self.encoder
        return self

    def _amp_dtype(self):
        from ..extract.run import AMP_DTYPES
        return AMP_DTYPES.get(self._amp) if self.device.type == "cuda" else None

    # ---- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, global_feats, local_feats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores [b], top probabilities [b, 3], top class indices [b, 3])`` of one batch."""
        protos = (self.job.global_proto, self.job.id_proto, self.job.neg_proto)
        g = torch.as_tensor(global_feats).to(self.device)
        loc = torch.as_tensor(local_feats).to(self.device)
        sims = similarities(g, loc, *protos, T=self.T, double_exp=self.recipe == "official")
        scores, p_star = evaluate(sims, k=self.k, alpha=self.alpha)
        top = id_class_probabilities(sims, p_star, self.k).topk(min(TOP, len(self.classes)), dim=-1)
        return (scores[self.method].float().cpu().numpy(), top.values.float().cpu().numpy(),
                top.indices.cpu().numpy())

    def _predictions(self, n: int, parts, errors, paths=None) -> Predictions:
        """Assemble per-row results ``parts = [(rows, scores, top_p, top_i)]`` into :class:`Predictions`."""
        width = min(TOP, len(self.classes))
        scores = np.full(n, np.nan, np.float32)
        top_p = np.full((n, width), np.nan, np.float32)
        top_i = np.full((n, width), -1, np.int64)
        for rows, s, p, i in parts:
            scores[rows], top_p[rows], top_i[rows] = s, p, i
        names = np.array(list(self.classes) + [""], dtype=object)   # index -1 -> ""
        t = self.threshold
        return Predictions(scores=scores, decisions=np.nan_to_num(scores, nan=-np.inf) >= t,
                           class_index=top_i[:, 0].copy(), classes=names[top_i[:, 0]],
                           probabilities=top_p[:, 0].copy(), top3_classes=names[top_i],
                           top3_probabilities=top_p, threshold=t, errors=list(errors), paths=paths)

    def score_features(self, global_feats, local_feats, *, batch_size: int = 256) -> Predictions:
        """Predictions for features a caller already has: ``global [N, D]`` and ``local [N, HW, D]`` (as
        in the cache: unnormalised, any float dtype)."""
        n = len(global_feats)
        parts = [(np.arange(i, min(i + batch_size, n)),
                  *self._score(global_feats[i:i + batch_size], local_feats[i:i + batch_size]))
                 for i in range(0, n, batch_size)]
        return self._predictions(n, parts, [""] * n)

    def predict(self, images, *, batch_size: int = 128, workers: int = 0, progress: bool = False) -> Predictions:
        """Predictions for ``images``: paths (str / Path; decoded in ``workers`` DataLoader processes,
        unreadable files skipped with the reason in ``errors``), PIL images, or a batch tensor
        ``[B, 3, H, W]`` already preprocessed as ``detector.encoder[1]`` does."""
        from ..data.folders import to_rgb
        from ..extract.run import encode_batch, image_loader

        model, preprocess = self.encoder
        amp = self._amp_dtype()
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise IIMError(f"expected a preprocessed batch [B, 3, H, W], got {list(images.shape)}")
            n, paths = len(images), None
            batches = ((list(range(i, min(i + batch_size, n))), images[i:i + batch_size, None], [""] * n)
                       for i in range(0, n, batch_size))
        else:
            images = list(images)
            n = len(images)
            if all(isinstance(x, (str, os.PathLike)) for x in images):
                paths = [str(x) for x in images]
                batches = image_loader("", paths, preprocess, model, batch_size=batch_size, device=self.device,
                                       workers=workers)
            elif all(isinstance(x, Image.Image) for x in images):
                paths = None
                batches = ((list(range(i, min(i + batch_size, n))),
                            torch.stack([preprocess(to_rgb(x)) for x in images[i:i + batch_size]])[:, None],
                            [""] * n) for i in range(0, n, batch_size))
            else:
                raise IIMError("predict takes a list of paths, a list of PIL images, or a [B, 3, H, W] tensor")
        errors, parts = [""] * n, []
        with tqdm(total=n, unit="img", desc="predict", dynamic_ncols=True,
                  disable=None if progress else True) as bar:
            for rows, x, errs in batches:
                rows = np.asarray(rows, dtype=np.int64)
                good = [j for j, e in enumerate(errs[:len(rows)]) if not e]
                for j, e in enumerate(errs[:len(rows)]):
                    if e:
                        errors[rows[j]] = e
                if good:
                    g, loc = encode_batch(model, x[good] if len(good) < len(rows) else x, device=self.device,
                                          amp_dtype=amp)
                    parts.append((rows[good], *self._score(g[:, 0], loc[:, 0])))
                bar.update(len(rows))
        return self._predictions(n, parts, errors, paths)

    def describe(self) -> dict:
        """What scored: for ``predictions.json``."""
        man = self.cache.manifest
        return {"run": None if self.job.zero_shot else str(self.run_dir), "cache": str(self.cache.root),
                "zero_shot": self.job.zero_shot, "model": man.get("model"), "weights": man.get("weights"),
                "method": self.method, "method_label": LABELS[self.method], "k": self.k, "alpha": self.alpha,
                "T": self.T, "settings_source": self.settings_source,
                "threshold": {"value": self.threshold, "source": self.threshold_source, "tpr": self.tpr},
                "device": str(self.device), "classes": list(self.classes)}
