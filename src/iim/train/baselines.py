"""The comparison methods' training losses (SPEC §8), each a small pure function, from cached features.

    coop_loss(global_feats, labels, id_proto)                         # CoOp: cross-entropy on tau x cos
    locoop_entropy(local_feats, labels, id_proto, top_k=200)          # LoCoOp: -entropy of non-top-K patches
    pos, neg = select_views(view_globals, labels, global_proto, 8)    # Local-Prompt: which cached views
    localprompt_losses(pos_local, neg_local, labels, id_proto, neg_proto, k=50)

Logits are ``tau x cos`` with tau the model's logit scale (100 for OpenAI CLIP), as every peer trains.
They run in float32 (float64 if given) with autocast off, like :mod:`iim.train.losses`, whose log-space
helpers Local-Prompt's losses reuse (its L_local is IIM's L_pos with every prompt's OWN top-k patches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import IIMError
from ..ops import cosine
from .losses import full_matrix_cosine, log_patch_sums, log_topk_sums, neg_loss, pos_loss

METHODS = ("iim", "coop", "locoop", "localprompt")
LOCOOP_EPS = 1e-5      # LoCoOp's entropy: -sum p log(p + 1e-5)


def _logits(feats, protos, logit_scale: float) -> torch.Tensor:
    dtype = torch.promote_types(feats.dtype, torch.float32)
    return logit_scale * cosine(feats.to(dtype), protos.to(dtype))


def coop_loss(global_feats, labels, id_proto, *, logit_scale: float = 100.0) -> torch.Tensor:
    """CoOp: cross-entropy of ``tau x cos(v_g, t_c)`` over the C learned prompts, batch mean."""
    with torch.autocast(global_feats.device.type, enabled=False):
        return F.cross_entropy(_logits(global_feats, id_proto, logit_scale), labels)


def locoop_top_k(n_classes: int, top_k: int = 200) -> int:
    """LoCoOp's K: 200 classes, or all of them when there are fewer (then no patch is OOD)."""
    return min(top_k, n_classes)


def locoop_ood_patches(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int = 200) -> torch.Tensor:
    """``[B, HW]`` mask of the patches whose ground-truth class is NOT among their top-K classes."""
    k = locoop_top_k(local_logits.shape[-1], top_k)
    top = local_logits.detach().topk(k, dim=-1).indices                       # [B, HW, K]
    return ~(top == labels[:, None, None]).any(-1)


def mean_entropy(logits: torch.Tensor, eps: float = LOCOOP_EPS) -> torch.Tensor:
    """Mean over rows of ``-sum_c p log(p + eps)``, ``p = softmax(logits)``; 0 for no rows."""
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    p = logits.softmax(-1)
    return -(p * torch.log(p + eps)).sum(-1).mean()


def locoop_entropy(local_feats, labels, id_proto, *, logit_scale: float = 100.0,
                   top_k: int = 200) -> torch.Tensor:
    """LoCoOp's OOD regulariser: MINUS the mean class-softmax entropy of the patches whose label is not
    among their top-K classes (0 if none); the loss is ``coop_loss + lambda x locoop_entropy``."""
    with torch.autocast(local_feats.device.type, enabled=False):
        logits = _logits(local_feats, id_proto, logit_scale)                    # [B, HW, C]
        return -mean_entropy(logits[locoop_ood_patches(logits, labels, top_k)])


@torch.no_grad()
def select_views(view_globals, labels, global_proto, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Local-Prompt's view choice: rank each image's V views by ``cos(v_g, g_y)`` (label's frozen
    global prototype) -> ``(positives [B, n_pos]`` most similar first, ``negative [B]`` the least)."""
    v = view_globals.shape[1]
    if not 1 <= n_pos < v:
        raise IIMError(f"Local-Prompt needs 1 <= positive views < views per image, got {n_pos} of {v}")
    sim = cosine(view_globals, global_proto)                                   # [B, V, C]
    sim = sim.gather(2, labels.view(-1, 1, 1).expand(-1, v, 1)).squeeze(2)    # [B, V]
    return sim.topk(n_pos, dim=1).indices, sim.argmin(dim=1)


def localprompt_local_loss(logits, labels, n_cls: int, k: int) -> torch.Tensor:
    """L_local per image (positive view): the label's top-k exp-sum over every ID and negative column's
    exp-sum over its OWN top-k patches; ``logits [B, HW, C + Cn]`` -> [B]."""
    log_sk = log_topk_sums(logits, k)
    return pos_loss(log_sk[:, :n_cls], log_sk[:, n_cls:], labels)


def localprompt_neg_loss(logits, labels, n_cls: int, k: int) -> torch.Tensor:
    """L_neg per image (negative view): the label's top-k patches (by its logit) against every negative,
    over that plus each ID column's own top-k exp-sum; ``logits [B, HW, C + Cn]`` -> [B]."""
    id_logits = logits[..., :n_cls]
    label = id_logits.gather(2, labels.view(-1, 1, 1).expand(-1, logits.shape[1], 1)).squeeze(2)
    top = label.detach().topk(k, dim=1).indices                              # [B, k]
    return neg_loss(log_topk_sums(id_logits, k), log_patch_sums(logits[..., n_cls:], top))


def localprompt_div(neg_proto: torch.Tensor) -> torch.Tensor:
    """L_div: the negatives' whole cosine matrix (diagonal included) summed / (n (n - 1)); 0 if n < 2
    (the official IIM recipe's :func:`~iim.train.losses.full_matrix_cosine`), autocast off."""
    with torch.autocast(neg_proto.device.type, enabled=False):
        return full_matrix_cosine(neg_proto)


def localprompt_losses(pos_local, neg_local, labels, id_proto, neg_proto, *, k: int = 50,
                       logit_scale: float = 100.0) -> dict:
    """Local-Prompt's three terms for one optimiser step, batch means: ``{"local", "neg", "div"}``.
    ``pos_local`` / ``neg_local`` [B, HW, D]: each image's positive view and its negative view."""
    hw = pos_local.shape[1]
    if not 1 <= k <= hw:
        raise IIMError(f"Local-Prompt's top-k needs 1 <= k <= {hw} patches per image; got k={k}")
    n_cls = id_proto.shape[0]
    with torch.autocast(pos_local.device.type, enabled=False):
        protos = torch.cat([id_proto, neg_proto.reshape(-1, id_proto.shape[1]).to(id_proto.dtype)])
        return {"local": localprompt_local_loss(_logits(pos_local, protos, logit_scale), labels, n_cls, k).mean(),
                "neg": localprompt_neg_loss(_logits(neg_local, protos, logit_scale), labels, n_cls, k).mean(),
                "div": localprompt_div(neg_proto)}
