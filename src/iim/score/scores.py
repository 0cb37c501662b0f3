"""Every evaluator for a batch of images, composed from the pure Eq. 2-4/12 functions in
:mod:`iim.score.evaluators`.

    scores = ood_scores(global_feats, local_feats, global_proto, id_proto, neg_proto, k=50, alpha=1.0)
    scores["s_mcm"]          # [N], higher = more in-distribution

Keys (:data:`SCORE_KEYS`): ``mcm, gl_mcm, r_mcm, r_mcm_star, s_mcm, s_mcm_star, i2t, i2t_star, t2i``;
``r_mcm, s_mcm, i2t`` need negative prototypes and are absent without them (``neg_proto`` None or with
0 rows: a run trained without negatives has R-MCM = R-MCM* and S-MCM = S-MCM*).

Top-k bounds: i2t, i2t* and t2i take the top-k over all HW x C (patch, class) pairs, so ``k <= HW * C``;
ID classification (:func:`id_predictions`) takes the top-k over the HW patches of each class and uses
``min(k, HW)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import IIMError
from . import evaluators as ev

SCORE_KEYS = ("mcm", "gl_mcm", "r_mcm", "r_mcm_star", "s_mcm", "s_mcm_star", "i2t", "i2t_star", "t2i")


@dataclass
class Similarities:
    """The similarity logits ``cos / T`` of one batch; everything else is computed from these."""
    global_logits: torch.Tensor          # [N, C]       global feature vs global prototypes
    id_logits: torch.Tensor              # [N, HW, C]   patches vs local ID prototypes
    neg_logits: torch.Tensor | None      # [N, HW, Cn]  patches vs negative prototypes, or None
    T: float = 1.0
    double_exp: bool = False             # the official recipe's p[h, c] (SPEC §9)

    @property
    def hw(self) -> int:
        return self.id_logits.shape[-2]

    @property
    def n_classes(self) -> int:
        return self.id_logits.shape[-1]


def similarities(global_feats, local_feats, global_proto, id_proto, neg_proto=None, *,
                 T: float = 1.0, double_exp: bool = False) -> Similarities:
    """Cosine logits of features (any float dtype; normalised here) against the three prototype sets;
    ``double_exp``: R-MCM / S-MCM with negatives as the authors' code computes them (SPEC §9)."""
    if global_feats.dim() != 2 or local_feats.dim() != 3 or len(global_feats) != len(local_feats):
        raise IIMError(f"expected global_feats [N, D] and local_feats [N, HW, D], got "
                       f"{list(global_feats.shape)} and {list(local_feats.shape)}")
    dims = {global_feats.shape[-1], local_feats.shape[-1], global_proto.shape[-1], id_proto.shape[-1]}
    if neg_proto is not None:
        dims.add(neg_proto.shape[-1])
    if len(dims) != 1:
        raise IIMError(f"features and prototypes disagree in width D ({sorted(dims)})")
    if global_proto.shape[0] != id_proto.shape[0]:
        raise IIMError(f"{global_proto.shape[0]} global but {id_proto.shape[0]} local ID prototypes")
    if T <= 0:
        raise IIMError(f"temperature T must be positive, got {T}")
    dev = local_feats.device
    proto = lambda x: x.to(dev, torch.float32)  # noqa: E731
    has_neg = neg_proto is not None and neg_proto.shape[0] > 0
    return Similarities(
        ev.similarity_logits(global_feats, proto(global_proto), T),
        ev.similarity_logits(local_feats, proto(id_proto), T),
        ev.similarity_logits(local_feats, proto(neg_proto), T) if has_neg else None,
        T, double_exp,
    )


def check_k(k: int | Sequence[int], hw: int, n_classes: int) -> None:
    """i2t / t2i take the top-k over HW x C pairs: every k must lie in 1..HW*C."""
    ks = [k] if isinstance(k, int) else list(k)
    bad = [x for x in ks if not 1 <= x <= hw * n_classes]
    if bad:
        raise IIMError(f"k={bad[0]} is out of range: the top-k runs over HW x C = {hw} x {n_classes} = "
                       f"{hw * n_classes} (patch, class) pairs, so 1 <= k <= {hw * n_classes}")


def evaluate(sims: Similarities, *, k: int | Sequence[int] = 50, alpha=1.0):
    """Every evaluator from the similarities; returns ``(scores, p_star)``.

    ``k`` an int and ``alpha`` a float: every score is ``[N]``. ``k`` a sequence (K values) and ``alpha``
    a sequence (A values): MCM and GL-MCM are ``[N]``, the k-dependent scores ``[N, K]`` and S-MCM /
    S-MCM* ``[N, K, A]``, all from one sorted top-k_max per quantity (see :mod:`iim.score.sweep`).
    """
    check_k(k, sims.hw, sims.n_classes)
    grid = not isinstance(k, int)
    m = ev.mcm(sims.global_logits)
    p_star, p = ev.patch_class_probs(sims.id_logits, sims.neg_logits,
                                     double_exp_T=sims.T if sims.double_exp else None)
    out = {"mcm": m, "gl_mcm": ev.gl_mcm(m, p_star), "i2t_star": ev.i2t(p_star, k)}
    if p is not None:
        out["i2t"] = ev.i2t(p, k)
        del p
    out["t2i"] = ev.t2i(ev.patch_softmax(sims.id_logits), k)
    if grid:   # [N] against [N, K] against [N, K, A]
        alpha = torch.as_tensor(alpha, dtype=m.dtype, device=m.device).reshape(-1)
        mk, up = m[:, None], (lambda x: x[..., None])
    else:
        mk, up = m, (lambda x: x)
    for star in ("", "_star"):
        if "i2t" + star in out:
            i2t_k = out["i2t" + star]
            out["r_mcm" + star] = ev.r_mcm(mk, i2t_k)
            out["s_mcm" + star] = ev.s_mcm(up(mk), up(i2t_k), up(out["t2i"]), alpha)
    return {key: out[key] for key in SCORE_KEYS if key in out}, p_star


def id_class_probabilities(sims: Similarities, p_star: torch.Tensor, k: int) -> torch.Tensor:
    """SPEC §4 ID classification scores with ``min(k, HW)``, halved -> ``[N, C]`` in [0, 1]: per class, the
    mean of its global softmax probability and its top-k mean patch probability p* (not normalised
    over classes)."""
    return ev.id_class_scores(sims.global_logits, p_star, min(k, sims.hw)) / 2


def id_predictions(sims: Similarities, p_star: torch.Tensor, k: int) -> torch.Tensor:
    """SPEC §4 ID classification: argmax over classes of ``id_class_scores`` with ``min(k, HW)``."""
    return id_class_probabilities(sims, p_star, k).argmax(-1)


@torch.no_grad()
def ood_scores(global_feats, local_feats, global_proto, id_proto, neg_proto=None, *, k: int = 50,
               alpha: float = 1.0, T: float = 1.0, double_exp: bool = False) -> dict[str, torch.Tensor]:
    """Every OOD score of SPEC §4 for ``N`` images -> ``{key: Tensor[N]}``, higher = more ID.

    Args:
        global_feats: ``[N, D]`` global image embeddings (unnormalised is fine).
        local_feats: ``[N, HW, D]`` patch features.
        global_proto: ``[C, D]`` frozen "a photo of a {c}." prototypes (MCM term).
        id_proto: ``[C, D]`` local ID prototypes (learned; the global ones for zero-shot).
        neg_proto: ``[Cn, D]`` negative prototypes, or None.
        k: top-k of i2t / t2i (``1 <= k <= HW * C``). alpha: weight of t2i in S-MCM. T: temperature.
        double_exp: the official recipe's p[h, c] = e'/(sum e' + sum_neg e'), e' = exp(exp(cos/T)/T).
    """
    sims = similarities(global_feats, local_feats, global_proto, id_proto, neg_proto, T=T, double_exp=double_exp)
    return evaluate(sims, k=int(k), alpha=float(alpha))[0]
