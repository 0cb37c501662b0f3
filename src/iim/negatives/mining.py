"""NegMining (SPEC §10, NegLabel's selection): the candidates farthest from every ID class.

    d = quantile_similarity(candidates, id_prompts, q=0.95)       # [M]
    chosen = select_lowest(d, parts, keep=0.15)                    # [M] bool, per part of speech
"""
from __future__ import annotations

import torch

from ..errors import IIMError

QUANTILE_ROWS = 1 << 24     # torch.quantile refuses inputs of more than 2^24 elements: chunk the rows


def quantile_similarity(candidates: torch.Tensor, id_prompts: torch.Tensor, *, q: float = 0.95) -> torch.Tensor:
    """``d_j`` = the ``q`` quantile (``torch.quantile``, linear) over the ID classes of
    ``cos(candidate j, ID class prompt c)`` -> float32 ``[M]``; both inputs any norm, ``[M, D]`` / ``[C, D]``."""
    if not 0 <= q <= 1:
        raise IIMError(f"--quantile must lie in [0, 1], got {q}")
    cand = normalized(candidates)
    ids = normalized(id_prompts)
    rows = max(1, QUANTILE_ROWS // max(1, len(ids)))
    parts = [torch.quantile(cand[i:i + rows] @ ids.T, q, dim=1) for i in range(0, len(cand), rows)]
    return torch.cat(parts) if parts else torch.zeros(0)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise IIMError(f"--keep is the fraction of candidates kept and must lie in (0, 1], got {keep}")


def select_lowest(d: torch.Tensor, parts, *, keep: float = 0.15) -> torch.Tensor:
    """Per part of speech (``parts[j]``, e.g. "noun" / "adj"): keep the ``int(keep * n)`` candidates with
    the lowest ``d`` (ties: the earlier candidate) -> bool ``[M]``."""
    check_keep(keep)
    chosen = torch.zeros(len(d), dtype=torch.bool)
    for part in dict.fromkeys(parts):
        idx = torch.tensor([j for j, p in enumerate(parts) if p == part], dtype=torch.long)
        n = int(keep * len(idx))
        order = torch.sort(d[idx], stable=True).indices
        chosen[idx[order[:n]]] = True
    return chosen
