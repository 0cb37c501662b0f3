"""What each epoch uses: its learning rate, the view and order of every image, its batches.

Learning rate (CoOp/Dassl ``ConstantWarmupScheduler`` + ``CosineAnnealingLR(T_max=epochs)``, stepped
per epoch): epochs ``0 .. warmup-1`` use ``warmup_lr``; epoch ``e >= warmup`` uses
``lr * (1 + cos(pi * (e - warmup) / epochs)) / 2`` (so the first cosine epoch uses the full lr).
Each epoch draws ONE of the V cached augmented views per support image (``torch.Generator`` seeded
from ``(seed, epoch)``), shuffles, and takes batches of ``batch_size`` images (the last incomplete
batch is dropped when there is at least one full batch, as Dassl's train loader does).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def lr_at_epoch(epoch: int, *, lr: float, epochs: int, warmup_epochs: int = 1,
                warmup_lr: float = 1e-5) -> float:
    """Learning rate of 0-based ``epoch``: constant warm-up, then Dassl's per-epoch cosine."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def epoch_draw(seed: int, epoch: int, n: int, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(view [n], order [n])``: the view used for each image and the shuffled image order of
    ``epoch``; a pure function of ``(seed, epoch)`` so that a resumed run draws what it would have."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    view = torch.randint(views, (n,), generator=g)
    return view, torch.randperm(n, generator=g)


def epoch_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
