"""One optimiser step: the losses of the prompts' features (Eq. 5-11, or another method's), the
forward (optionally ``torch.compile``'d) and the SGD update of one or several runs, skipped where a
loss is non-finite."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from ...models import model_logit_scale
from .. import methods
from ..config import TrainConfig, resolve_recipe
from ..losses import diversity_loss, iim_losses, total_loss


def prompt_losses(cfg: TrainConfig, id_f, neg_f, local, labels, *extra) -> torch.Tensor:
    """Eq. 5-11 of one step from the prompts' features (another ``cfg.method``: its losses,
    :mod:`iim.train.methods`) -> ``[loss, pos, neg, div]``. Labels are not range-checked here
    (``train`` checks the split's once): no GPU sync mid-step."""
    if cfg.method != "iim":
        return methods.method_losses(cfg, id_f, neg_f, local, labels, *extra)
    terms = iim_losses(local, labels, id_f, neg_f, k=cfg.k, logit_scale=cfg.logit_scale,
                       hard_negative_mining=cfg.hard_negative_mining, ood_patches=cfg.ood_patches,
                       denominators=cfg.denominators, check_labels=False)
    div = diversity_loss(id_f, neg_f, diagonal=cfg.div_diagonal)
    loss = total_loss(terms["pos"], terms["neg"], div, lambda_neg=cfg.lambda_neg, lambda_div=cfg.lambda_div)
    return torch.stack([loss, terms["pos"], terms["neg"], div])


def step_losses(encoder, local, labels, cfg: TrainConfig, amp: dict, *extra) -> torch.Tensor:
    """The forward of one step: all C + Cn prompts once, then :func:`prompt_losses`."""
    with torch.autocast(**amp):
        id_f, neg_f = encoder()
    return prompt_losses(cfg, id_f, neg_f, local, labels, *extra)


def step_function(encoder, cfg: TrainConfig, amp: dict):
    """``forward(local, labels) -> [loss, pos, neg, div]`` for :func:`train_step`; compiled with
    ``torch.compile`` in mode ``cfg.compile`` (encoder and losses as one graph, backward included;
    ``reduce-overhead`` also replays it from CUDA graphs) unless that is ``"off"``."""
    cfg = resolve_recipe(methods.resolve_method(cfg))
    if cfg.logit_scale is None:             # callers outside train() (benchmarks): the model's own
        cfg = dataclasses.replace(cfg, logit_scale=model_logit_scale(encoder.model))

    def forward(local, labels, *extra):
        return step_losses(encoder, local, labels, cfg, amp, *extra)
    if cfg.compile == "off":
        return forward
    # torch's own code warns while compiling; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*_prims_common\.check.* is deprecated", category=FutureWarning)
    return torch.compile(forward, mode=None if cfg.compile == "default" else cfg.compile, dynamic=False)


def sgd_steps(values: list, optimizers: list) -> tuple[np.ndarray, np.ndarray]:
    """One SGD step of each run from its ``[loss, pos, neg, div]``: ONE backward through the sum of the
    losses (the runs' parameters are disjoint: each gets exactly its own gradient), then each run's own
    update, skipped where a value is non-finite -> ``(values [P, 4], finite [P])``."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    (values[0][0] if len(values) == 1 else torch.stack([v[0] for v in values]).sum()).backward()
    out = torch.stack([v.detach().float() for v in values]).cpu().numpy()      # one device sync
    finite = np.isfinite(out).all(axis=1)
    for opt, ok in zip(optimizers, finite):
        if ok:
            opt.step()
    return out, finite


def loss_text(values) -> str:
    """``[loss, pos, neg, div]`` as the text of a non-finite-loss message."""
    return f"loss={values[0]}, pos={values[1]}, neg={values[2]}, div={values[3]}"


def train_step(forward, optimizer, *inputs) -> np.ndarray:
    """One SGD step on the contexts; returns ``[loss, pos, neg, div]``. A non-finite loss raises
    ``FloatingPointError`` BEFORE the update, leaving the contexts as they were."""
    values, finite = sgd_steps([forward(*inputs)], [optimizer])
    if not finite[0]:
        raise FloatingPointError(loss_text(values[0]))
    return values[0]


def is_compile_error(e: BaseException) -> bool:
    """Whether ``e`` comes from torch.compile (Dynamo or Inductor), not from the step's own code."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(e).__mro__)


class StepFailed(Exception):
    """A step failed with an error the caller turns into a one-line message (``hint``)."""
