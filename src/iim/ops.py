"""Similarity and top-k helpers shared by training (IIM) and scoring (S-MCM).

Everything that compares image features with text prototypes goes through :func:`cosine`, and every
"top-k over patches / over (patch, class) pairs" through :func:`topk` / :func:`topk_prefix_means`, so
training and scoring cannot drift apart.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension, in float32 at least (features are stored as float16)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.normalize(x, dim=-1)


def cosine(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of features ``[..., D]`` with prototypes ``[C, D]`` -> ``[..., C]``, in the wider
    of the two dtypes (float32 at least): float64 features against float32 prototypes work."""
    a, b = l2norm(feats), l2norm(protos)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype) @ b.to(dtype).transpose(-1, -2)


def class_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dimension as ``exp(logits - logsumexp)``, and that logsumexp (kept dim): the
    paper's p*[h, c] (Eq. 3) from similarity logits, for scoring and for training's diagnostics alike."""
    lse = logits.logsumexp(-1, keepdim=True)
    return (logits - lse).exp(), lse


def topk(x: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """The ``k`` largest values of ``x`` along ``dim``, sorted descending."""
    return x.topk(k, dim=dim, largest=True, sorted=True).values


def topk_mean(x: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Mean of the ``k`` largest values along ``dim`` (the paper's T-bar_k)."""
    return topk(x, k, dim).mean(dim)


def topk_prefix_means(x: torch.Tensor, k_max: int, dim: int = -1) -> torch.Tensor:
    """Top-k means for EVERY k = 1..k_max from one sorted top-k_max and a cumulative sum.

    Returns a tensor whose ``dim`` now has size ``k_max``; entry ``k - 1`` equals ``topk_mean(x, k, dim)``.
    """
    vals = topk(x, k_max, dim)
    counts = torch.arange(1, k_max + 1, device=x.device, dtype=vals.dtype)
    shape = [1] * vals.dim()
    shape[dim] = k_max
    return vals.cumsum(dim) / counts.view(shape)
