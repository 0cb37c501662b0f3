"""IIM training losses (paper Eq. 5-11, SPEC §3), each a small pure function, all in log space.

Notation: ``logits[b, h, j] = logit_scale * cos(v_l[b, h], t_j)`` for the C ID prototypes followed by the
Cn negative prototypes, so ``s(v, t) = exp(logit)``. Sums of ``s`` are kept as their logarithms
(``logsumexp``): with ``logit_scale = 100`` the plain sums overflow float16 and lose float32 precision.

Patch ranking (the sets P and N) is a hard, gradient-free choice made on ``cos(v_l, t_y)``; gradients
flow through the similarities at the selected patches, as in top-k training code generally.

The losses run in float32 (float64 if given) with autocast disabled (bf16 cosines at scale 100 are off by ~0.1 in the
logit); the matmul involved is small next to the text encoder.
"""
from __future__ import annotations

import torch

from ..errors import IIMError
from ..ops import cosine, topk

OOD_PATCHES = ("next-k", "all-rest")   # N = ranks k+1..2k (paper) | every patch ranked below k (ablation)
DENOMINATORS = ("paper", "official")   # Eq. 8-9 as written | the authors' code (SPEC §9)


def rank_patches(label_logits: torch.Tensor, k: int, *, ood_patches: str = "next-k"):
    """Eq. 6: indices of the positive patches P (top-k by ``cos(v_l, t_y)``) and of the ID-like OOD
    patches N (ranks k+1..2k, the "top-2k~k" set; ``"all-rest"``: ranks k+1..HW). Gradient-free."""
    hw = label_logits.shape[-1]
    n_rank = 2 * k if ood_patches == "next-k" else hw
    order = label_logits.detach().topk(n_rank, dim=-1, sorted=True).indices   # [B, n_rank]
    return order[:, :k], order[:, k:]


def log_topk_sums(id_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 5: ``log S_k[c]`` = log of the sum over c's OWN top-k patches of ``s(v_l, t_c)`` -> [B, C]."""
    return torch.logsumexp(topk(id_logits, k, dim=1), dim=1)


def log_own_rank_sums(logits: torch.Tensor, k: int, *, ood_patches: str = "next-k") -> torch.Tensor:
    """SPEC §9 (official L_neg denominator): ``log`` of the sum of ``s(v_l, t_j)`` over prompt j's OWN
    ranks k+1..2k (``"all-rest"``: k+1..HW) -> [B, J]."""
    n_rank = 2 * k if ood_patches == "next-k" else logits.shape[1]
    return torch.logsumexp(topk(logits, n_rank, dim=1)[:, k:], dim=1)


def log_patch_sums(logits: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Eq. 7 (and Eq. 5 without hard-negative mining): ``log sum_{p in patches} s(v_l[p], t_j)`` for
    every prompt j; ``logits`` [B, HW, J], ``patches`` [B, n] indices -> [B, J]."""
    picked = logits.gather(1, patches.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return torch.logsumexp(picked, dim=1)


def pos_loss(log_sk: torch.Tensor, log_s_neg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``-log S_k[y] / (sum_c S_k[c] + sum_neg S~[neg])`` per image -> [B]."""
    log_den = torch.logsumexp(torch.cat([log_sk, log_s_neg], dim=1), dim=1)
    return log_den - log_sk.gather(1, labels[:, None]).squeeze(1)


def neg_loss(log_s_id: torch.Tensor, log_s_neg: torch.Tensor) -> torch.Tensor:
    """Eq. 9: ``-log sum_neg S~[neg] / (sum_c S~[c] + sum_neg S~[neg])`` per image -> [B]
    (zero when there are no negative prompts: the term is undefined then and carries no signal)."""
    if log_s_neg.shape[1] == 0:
        return log_s_id.new_zeros(log_s_id.shape[0])
    log_den = torch.logsumexp(torch.cat([log_s_id, log_s_neg], dim=1), dim=1)
    return log_den - torch.logsumexp(log_s_neg, dim=1)


def full_matrix_cosine(protos: torch.Tensor) -> torch.Tensor:
    """SPEC §9 (official L_div): the sum of the whole cosine matrix, diagonal included, / (n (n - 1));
    ``mean_pairwise_cosine + 1 / (n - 1)``, so the same gradient. 0 with fewer than 2 prototypes."""
    n = protos.shape[0]
    if n < 2:
        return protos.new_zeros((), dtype=torch.promote_types(protos.dtype, torch.float32))
    return cosine(protos, protos).sum() / (n * (n - 1))


def mean_pairwise_cosine(protos: torch.Tensor) -> torch.Tensor:
    """Mean of ``cos(t_i, t_j)`` over pairs i < j (diagonal excluded); 0 with fewer than 2 prototypes."""
    n = protos.shape[0]
    if n < 2:
        return protos.new_zeros((), dtype=torch.promote_types(protos.dtype, torch.float32))
    sim = cosine(protos, protos)            # symmetric: the i < j mean is the off-diagonal mean
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def diversity_loss(id_proto: torch.Tensor, neg_proto: torch.Tensor, *, diagonal: bool = False) -> torch.Tensor:
    """Eq. 10: mean pairwise cosine among the negative prototypes + among the ID local prototypes
    (``diagonal=True``: the authors' full-matrix version, :func:`full_matrix_cosine`)."""
    term = full_matrix_cosine if diagonal else mean_pairwise_cosine
    with torch.autocast(id_proto.device.type, enabled=False):
        return term(neg_proto) + term(id_proto)


def total_loss(pos, neg, div, *, lambda_neg: float = 5.0, lambda_div: float = 0.5):
    """Eq. 11: ``L = L_pos + lambda_neg * L_neg + lambda_div * L_div``."""
    return pos + lambda_neg * neg + lambda_div * div


def iim_losses(local_feats: torch.Tensor, labels: torch.Tensor, id_proto: torch.Tensor,
               neg_proto: torch.Tensor, *, k: int = 50, logit_scale: float = 100.0,
               hard_negative_mining: bool = True, ood_patches: str = "next-k",
               denominators: str = "paper", check_labels: bool = True) -> dict:
    """IIM's positive and negative terms (Eq. 5-9), batch means: ``{"pos": L_pos, "neg": L_neg}``.

    ``local_feats`` [B, HW, D] patch features, ``labels`` [B] class indices, ``id_proto`` [C, D] the ID
    local prototypes, ``neg_proto`` [Cn, D] the negative prototypes (Cn may be 0: ``L_pos`` then has no
    negative sum and ``L_neg`` is 0). Inputs need not be normalised. Requires ``HW >= 2k``.

    ``hard_negative_mining=False`` is Table 3's ablation: ``S_k[c]`` for c != y sums over the label's
    positive patches P instead of c's own top-k. ``ood_patches="all-rest"`` uses every patch ranked below
    k as ID-like OOD patches instead of ranks k+1..2k. ``check_labels=False`` skips the label range check,
    which reads the labels back from the device (a GPU sync mid-step): for callers that checked them.
    ``denominators="official"`` (SPEC §9): in L_pos's denominator each negative sums over its OWN top-k
    patches, in L_neg's each ID class over its OWN ranks k+1..2k (numerators unchanged).
    """
    b, hw, _ = local_feats.shape
    n_cls = id_proto.shape[0]
    if not 1 <= k or hw < 2 * k:
        raise IIMError(f"top-k needs 1 <= k and 2k <= patches per image; got k={k} with {hw} patches "
                       f"(use --k {hw // 2} or less)")
    if ood_patches not in OOD_PATCHES:
        raise IIMError(f"ood_patches must be one of {', '.join(OOD_PATCHES)}, not {ood_patches!r}")
    if denominators not in DENOMINATORS:
        raise IIMError(f"denominators must be one of {', '.join(DENOMINATORS)}, not {denominators!r}")
    if labels.shape != (b,) or (check_labels and b and (int(labels.min()) < 0 or int(labels.max()) >= n_cls)):
        raise IIMError(f"labels must be {b} class indices in 0..{n_cls - 1}")
    dtype = torch.promote_types(local_feats.dtype, torch.float32)       # float32, or float64 if given
    with torch.autocast(local_feats.device.type, enabled=False):
        protos = torch.cat([id_proto.to(dtype), neg_proto.to(dtype).reshape(-1, id_proto.shape[1])])
        logits = logit_scale * cosine(local_feats.to(dtype), protos)      # [B, HW, C + Cn]
        id_logits = logits[..., :n_cls]
        label_logits = id_logits.gather(2, labels.view(b, 1, 1).expand(b, hw, 1)).squeeze(2)
        pos_idx, ood_idx = rank_patches(label_logits, k, ood_patches=ood_patches)
        if hard_negative_mining:
            log_sk = log_topk_sums(id_logits, k)                         # Eq. 5, every class
        else:
            log_sk = log_patch_sums(id_logits, pos_idx)                  # S_k[c] over the label's P
        log_s = log_patch_sums(logits, ood_idx)                          # Eq. 7, every prompt
        log_s_id, log_s_neg = log_s[:, :n_cls], log_s[:, n_cls:]
        pos_den_neg, neg_den_id = log_s_neg, log_s_id                    # Eq. 8-9 as written
        if denominators == "official":
            pos_den_neg = log_topk_sums(logits[..., n_cls:], k)          # each negative's own top-k
            neg_den_id = log_own_rank_sums(id_logits, k, ood_patches=ood_patches)   # each class's own N
        return {"pos": pos_loss(log_sk, pos_den_neg, labels).mean(),
                "neg": neg_loss(neg_den_id, log_s_neg).mean()}
