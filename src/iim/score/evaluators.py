"""The paper's OOD scores (SPEC §4, Eq. 2-4 and 12), each once, as small pure functions.

They work on similarity LOGITS ``log e(v, t) = cos(v, t) / T`` (so every softmax is ``torch.softmax``,
stable for any T) and on the probability maps built from them:

    global_logits  [N, C]        cos(v_g, g_c) / T            (global feature vs global prototypes)
    id_logits      [N, HW, C]    cos(v_l[h], t_c) / T         (patches vs local ID prototypes)
    neg_logits     [N, HW, Cn]   cos(v_l[h], t_neg) / T       (patches vs negative prototypes)
    p*, p          [N, HW, C]    softmax over classes (+ negatives for p)   -> GL-MCM, i2t
    q              [N, HW, C]    softmax over the image's patches            -> t2i

``k`` is an int (returns ``[N]``) or a sequence of ints (returns ``[N, len(k)]`` from ONE sorted top-k_max
and a cumulative sum, for sweeps). Higher = more in-distribution.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..ops import class_probs, cosine, topk_mean, topk_prefix_means


def similarity_logits(feats, protos, T: float = 1.0) -> torch.Tensor:  # Eq. 2, s(v, t)
    """``log s(v, t) = cos(v, t) / T`` for features ``[..., D]`` and prototypes ``[C, D]`` -> ``[..., C]``."""
    logits = cosine(feats, protos)
    return logits if T == 1 else logits.div_(T)


def mcm(global_logits: torch.Tensor) -> torch.Tensor:  # Eq. 2
    """MCM: the largest softmax probability of the global feature over the ID classes."""
    return global_logits.softmax(-1).amax(-1)


def double_exp_logits(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:  # SPEC §9 (official)
    """``log e'(v, t) = exp(cos / T) / T``: the authors' code exponentiates twice,
    ``e'(v, t) = exp(exp(cos / T) / T)``, in p[h, c] when negatives are used."""
    return logits.exp() / T


def patch_class_probs(id_logits: torch.Tensor, neg_logits: torch.Tensor | None = None, *,
                      double_exp_T: float | None = None):  # Eq. 3 / Eq. 4
    """Each patch's softmax over the ID classes, ``p*[h, c]`` (Eq. 3), and with ``neg_logits`` also
    ``p[h, c]`` (Eq. 4, Eq. 12's S_i2t), whose denominator adds the negatives' exp-sum.

    Returns ``(p_star, p)``; ``p`` is None without negatives. ``p = p* x Z_id / (Z_id + Z_neg)`` with the
    per-patch exp-sums ``Z`` taken in log space, so the ID normaliser is computed once. With
    ``double_exp_T`` (the official recipe, SPEC §9) ``p`` is the softmax of :func:`double_exp_logits`.
    """
    p_star, lse_id = class_probs(id_logits)
    if neg_logits is None:
        return p_star, None
    if double_exp_T is not None:
        id2, neg2 = double_exp_logits(id_logits, double_exp_T), double_exp_logits(neg_logits, double_exp_T)
        lse2 = torch.logaddexp(id2.logsumexp(-1, keepdim=True), neg2.logsumexp(-1, keepdim=True))
        return p_star, (id2 - lse2).exp()
    lse_all = torch.logaddexp(lse_id, neg_logits.logsumexp(-1, keepdim=True))
    return p_star, p_star * (lse_id - lse_all).exp()


def patch_softmax(id_logits: torch.Tensor) -> torch.Tensor:  # Eq. 12 (S_t2i inner term)
    """``q[h, c]``: each class prototype's softmax over the image's patches."""
    return id_logits.softmax(-2)


def _topk_means(x: torch.Tensor, k: int | Sequence[int]) -> torch.Tensor:
    """Mean of the top-k over all (h, c) pairs of ``x [N, HW, C]``: ``[N]`` or ``[N, len(k)]``."""
    flat = x.flatten(-2)
    if isinstance(k, int):
        return topk_mean(flat, k)
    idx = torch.as_tensor(list(k), device=x.device) - 1
    return topk_prefix_means(flat, max(k))[..., idx]


def i2t(p: torch.Tensor, k: int | Sequence[int]) -> torch.Tensor:  # Eq. 12 (S_i2t) = Eq. 4's local term
    """Image-to-text: mean of the top-k ``p[h, c]`` over all (h, c) pairs (``p*`` gives i2t*)."""
    return _topk_means(p, k)


def t2i(q: torch.Tensor, k: int | Sequence[int]) -> torch.Tensor:  # Eq. 12 (S_t2i)
    """Text-to-image: ``(HW / C)`` x mean of the top-k ``q[h, c]`` over all (h, c) pairs."""
    hw, c = q.shape[-2:]
    return (hw / c) * _topk_means(q, k)


def gl_mcm(mcm_score: torch.Tensor, p_star: torch.Tensor) -> torch.Tensor:  # Eq. 3
    """GL-MCM: MCM plus the largest ``p*[h, c]`` over all patches and classes."""
    return mcm_score + p_star.flatten(-2).amax(-1)


def r_mcm(mcm_score: torch.Tensor, i2t_score: torch.Tensor) -> torch.Tensor:  # Eq. 4
    """R-MCM = MCM + i2t (R-MCM* = MCM + i2t*)."""
    return mcm_score + i2t_score


def s_mcm(mcm_score, i2t_score, t2i_score, alpha) -> torch.Tensor:  # Eq. 12
    """S-MCM = MCM + i2t + alpha * t2i (S-MCM* with i2t*). Broadcasts, so alpha may be a tensor."""
    return mcm_score + i2t_score + alpha * t2i_score


def id_class_scores(global_logits: torch.Tensor, p_star: torch.Tensor, k: int) -> torch.Tensor:  # SPEC §4
    """Per-class scores for ID classification: ``softmax_c e(v_g, g_c) + mean of the top-k over h of
    p*[h, c]`` -> ``[N, C]``; the prediction is their argmax."""
    return global_logits.softmax(-1) + topk_mean(p_star, k, dim=-2)
