"""How each training method plugs into the one training loop (:mod:`iim.train.loop`): the options it
resolves, what a batch feeds its steps, and each step's loss (IIM: SPEC §3; the others: SPEC §8).

    iim          one step per batch on the drawn view's patches (Eq. 5-11)
    coop         one step per batch: cross-entropy on the drawn view's global feature
    locoop       coop + locoop_lambda x (-entropy) of the drawn view's non-top-K patches
    localprompt  per batch, every cached view ranked against the label's frozen global prototype; one step
                 per positive view (pos_views of them), each with the batch's least similar view as negative

Every step returns ``[loss, term1, term2, term3]`` (recorded as the history's ``pos, neg, div``): IIM
``L_pos, L_neg, L_div``; CoOp ``CE, 0, 0``; LoCoOp ``CE, -entropy, 0``; Local-Prompt ``L_local, L_neg, L_div``.
"""
from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from .. import registry
from ..errors import IIMError
from . import baselines as bl
from .config import TrainConfig, resolve_method

LEARNED_GLOBAL = ("coop", "locoop")      # scored with MCM / GL-MCM on their learned prompts
NEEDS_GLOBAL = ("coop", "locoop", "localprompt")
STREAM_REFUSED = ("--method localprompt uses every cached view of each image per batch: it cannot stream the "
                  "train split; use --features-in device or host")


def score_k(run_config: dict | None, default: int) -> int:
    """The top-k ``iim score`` uses for a run when --k is not given: the method's own (:mod:`iim.registry`;
    Local-Prompt: its evaluation script's 10), else ``default``."""
    return registry.score_k((run_config or {}).get("method"), default)


def resolve(cfg: TrainConfig, split) -> TrainConfig:
    """The method's defaults filled in (:func:`iim.train.config.resolve_method`), Local-Prompt's
    ``pos_views`` from the split's views, and the refusals that need the split."""
    cfg = resolve_method(cfg)
    if cfg.method != "localprompt":
        return cfg
    if split.views < 2:
        raise IIMError(f"--method localprompt picks positive and negative views among several cached views "
                       f"per image, but split {split.name} has {split.views}; extract the train split with "
                       f"--views 16 (Local-Prompt's 16 crops)")
    pos_views = cfg.pos_views or min(8, split.views // 2)
    if pos_views >= split.views:
        raise IIMError(f"--pos-views {pos_views} leaves no negative view among the split's {split.views} views "
                       f"(use --pos-views {split.views - 1} or less)")
    if cfg.k > split.hw:
        raise IIMError(f"--k {cfg.k} exceeds the {split.hw} patches per image (use --k {split.hw} or less)")
    if cfg.n_neg < 1:
        raise IIMError("--method localprompt needs negative prompts (--n-neg 1 or more; its default is 300)")
    if cfg.features_in == "stream":
        raise IIMError(STREAM_REFUSED)
    return dataclasses.replace(cfg, pos_views=pos_views)


def steps_per_batch(cfg: TrainConfig) -> int:
    return cfg.pos_views if cfg.method == "localprompt" else 1


def scoring_global(cfg: TrainConfig, global_protos: torch.Tensor, id_protos: torch.Tensor) -> torch.Tensor:
    """The checkpoint's "global" prototypes: CoOp and LoCoOp score MCM on their learned prompts."""
    return id_protos if cfg.method in LEARNED_GLOBAL else global_protos.float()


def load_globals(split, device, progress: bool = True) -> torch.Tensor:
    """Every view's global feature ``[N, V, D]`` (float16, on ``device``; small next to the patches)."""
    out = torch.empty((split.n, split.views, split.dim), dtype=torch.float16, device=device)
    for chunk in tqdm(split.iter_chunks(view=None), desc=f"global features of {split.name}", leave=False,
                      disable=None if progress else True):
        out[chunk.start:chunk.start + len(chunk.labels)].copy_(chunk.global_feats)
    return out


class StepInputs:
    """The loop's train features for ``cfg.method``: wraps :class:`iim.train.loop.TrainFeatures` (whose
    ``batch`` it keeps, for the ID diagnostics) and gives ``steps(idx)``, the argument tuples of the
    optimiser steps of batch ``idx``."""

    def __init__(self, cfg: TrainConfig, feats, device, global_protos: torch.Tensor, *, progress: bool = True):
        self.cfg, self.feats, self.device = cfg, feats, device
        self.split, self.where, self.batch = feats.split, feats.where, feats.batch
        if cfg.method == "localprompt" and feats.where == "stream":
            raise IIMError(STREAM_REFUSED)
        self.globals = load_globals(feats.split, device, progress) if cfg.method in NEEDS_GLOBAL else None
        self.global_protos = global_protos.to(device)
        self.view = None

    def start_epoch(self, view: torch.Tensor) -> None:
        self.feats.start_epoch(view)
        self.view = view.to(self.device)

    def steps(self, idx: torch.Tensor) -> list[tuple]:
        method = self.cfg.method
        if method == "localprompt":
            return self._localprompt(idx)
        local, labels = self.feats.batch(idx)
        if method == "iim":
            return [(local, labels)]
        i = idx.to(self.device)
        return [(local, labels, self.globals[i, self.view[i]])]

    def _localprompt(self, idx):
        labels = self.feats.labels[idx.to(self.feats.labels.device)]
        local = self.feats.local[idx.to(self.feats.local.device)].to(self.device, non_blocking=True)  # [b, V, HW, D]
        pos, neg = bl.select_views(self.globals[idx.to(self.device)], labels, self.global_protos,
                                   self.cfg.pos_views)
        rows = torch.arange(len(idx), device=self.device)
        negative = local[rows, neg]
        return [(local[rows, pos[:, j]], labels, negative) for j in range(pos.shape[1])]


def method_losses(cfg: TrainConfig, id_f, neg_f, local, labels, extra) -> torch.Tensor:
    """One step's ``[loss, t1, t2, t3]`` for the comparison methods (``extra``: CoOp/LoCoOp the drawn
    view's global features, Local-Prompt the negative view's patches)."""
    zero = id_f.new_zeros((), dtype=torch.float32)
    if cfg.method in ("coop", "locoop"):
        ce = bl.coop_loss(extra, labels, id_f, logit_scale=cfg.logit_scale)
        if cfg.method == "coop":
            return torch.stack([ce, ce, zero, zero])
        en = bl.locoop_entropy(local, labels, id_f, logit_scale=cfg.logit_scale, top_k=cfg.locoop_top_k)
        return torch.stack([ce + cfg.locoop_lambda * en, ce, en, zero])
    if cfg.method == "localprompt":
        t = bl.localprompt_losses(local, extra, labels, id_f, neg_f, k=cfg.k, logit_scale=cfg.logit_scale)
        loss = t["local"] + cfg.lambda_neg * t["neg"] + cfg.lambda_div * t["div"]
        return torch.stack([loss, t["local"], t["neg"], t["div"]])
    raise IIMError(f"unknown method {cfg.method!r}")
