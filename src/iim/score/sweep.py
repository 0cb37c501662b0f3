"""Sweeps over k and alpha that cost about one scoring pass.

For one chunk, :func:`sweep_scores` sorts each top-k quantity (p, p*, q) ONCE at k_max and takes every
k's mean from a cumulative sum (:func:`iim.ops.topk_prefix_means`); alpha enters linearly,
``S-MCM(k, alpha) = MCM + i2t_k + alpha * t2i_k``, so the whole grid is a broadcast add.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .scores import Similarities, evaluate

ALPHA_METHODS = ("s_mcm", "s_mcm_star")                           # depend on k and alpha
K_METHODS = ("r_mcm", "r_mcm_star", "i2t", "i2t_star", "t2i")     # depend on k only


@torch.no_grad()
def sweep_scores(sims: Similarities, ks: Sequence[int], alphas: Sequence[float]) -> dict[str, torch.Tensor]:
    """Every (k, alpha) combination's scores for one chunk, in one pass.

    Returns MCM / GL-MCM ``[N]``; R-MCM(*), i2t(*), t2i ``[N, K]`` (column j is ``ks[j]``); S-MCM(*)
    ``[N, K, A]``. Entry ``[..., j, a]`` equals ``ood_scores(..., k=ks[j], alpha=alphas[a])``.
    """
    return evaluate(sims, k=[int(k) for k in ks], alpha=[float(a) for a in alphas])[0]


def sweep_rows(ks, alphas, id_scores: dict, ood_scores: dict[str, dict], metric_fns: dict) -> list[dict]:
    """The long table: one row per (k, alpha, method, ood_set) with every metric (in percent).

    ``id_scores[m]`` / ``ood_scores[set][m]`` are numpy arrays shaped as :func:`sweep_scores` returns
    them (N first). MCM / GL-MCM rows have empty k and alpha, R-MCM / i2t / t2i rows an empty alpha.
    ``ood_set`` "average" is the mean over the OOD sets.
    """
    rows = []

    def add(k, alpha, method, pick):
        per_set = {name: {m: 100 * f(pick(id_scores[method]), pick(s[method])) for m, f in metric_fns.items()}
                   for name, s in ood_scores.items()}
        per_set["average"] = {m: float(np.mean([v[m] for v in per_set.values()])) for m in metric_fns}
        for name, vals in per_set.items():
            rows.append({"k": k, "alpha": alpha, "method": method, "ood_set": name, **vals})

    for method in id_scores:
        if method in ALPHA_METHODS:
            for j, k in enumerate(ks):
                for a, alpha in enumerate(alphas):
                    add(k, alpha, method, lambda x, j=j, a=a: x[:, j, a])
        elif method in K_METHODS:
            for j, k in enumerate(ks):
                add(k, "", method, lambda x, j=j: x[:, j])
        else:
            add("", "", method, lambda x: x)
    return rows


def best_settings(rows: list[dict], metric: str = "fpr95") -> dict[str, dict]:
    """Per method, the average-over-OOD-sets row with the lowest FPR95 (highest AUROC for 'auroc')."""
    best = {}
    sign = -1 if metric in ("auroc", "aupr_in", "aupr_out") else 1
    for r in rows:
        if r["ood_set"] == "average":
            cur = best.get(r["method"])
            if cur is None or sign * r[metric] < sign * cur[metric]:
                best[r["method"]] = r
    return best
