"""Training diagnostics from ID data only (no test or OOD image): is the run collapsing?

Every epoch the loop records, for the current learned ID (local) prototypes:

    proto_cos_mean, proto_cos_max   mean / max pairwise cosine of the C prototypes (off-diagonal)
    local_acc, chance               top-k local accuracy on the support views (percent) and 1/C

``local_acc`` classifies each support view by the local term of SPEC §4's ID classification (argmax_c of
the mean of the top-k over patches of p*[h, c]); the hand-written "a photo of a {c}." prompts are the
bar a learned prompt should clear. A run has collapsed when its prototypes are nearly one vector (max
off-diagonal cosine above :data:`COLLAPSE_COSINE`) or its local accuracy cannot be told from chance.
"""
from __future__ import annotations

import math

import torch

from ..ops import cosine, topk_mean
from ..score import evaluators as ev

COLLAPSE_COSINE = 0.99
KEYS = ("proto_cos_mean", "proto_cos_max", "local_acc", "chance", "local_at_chance", "collapsed")


def prototype_cosines(protos: torch.Tensor) -> tuple[float, float]:
    """Mean and max off-diagonal pairwise cosine of ``protos`` [C, D] (0, 0 for C < 2)."""
    n = protos.shape[0]
    if n < 2:
        return 0.0, 0.0
    sim = cosine(protos.float(), protos.float())
    off = sim[~torch.eye(n, dtype=torch.bool, device=sim.device)]
    return float(off.mean()), float(off.max())


@torch.no_grad()
def local_predictions(local_feats: torch.Tensor, protos: torch.Tensor, k: int) -> torch.Tensor:
    """argmax_c of the mean of the top-k over patches of p*[h, c] (SPEC §4's local term, T = 1) -> [B]."""
    p_star, _ = ev.patch_class_probs(ev.similarity_logits(local_feats, protos.to(local_feats.device)))
    return topk_mean(p_star, min(k, local_feats.shape[1]), dim=-2).argmax(-1)


def at_chance(acc: float, n_classes: int, n: int) -> bool:
    """Whether ``acc`` (percent) over ``n`` views is within two binomial standard errors of 1/C."""
    p = 1.0 / n_classes
    return n_classes > 1 and acc / 100 <= p + 2 * math.sqrt(p * (1 - p) / max(n, 1))


def epoch_diagnostics(id_proto: torch.Tensor, batches, k: int) -> dict:
    """The diagnostics of prototypes ``id_proto`` on ``batches`` of ``(local [b, HW, D], labels [b])``."""
    right = total = 0
    for local, labels in batches:
        right += int((local_predictions(local, id_proto, k) == labels).sum())
        total += len(labels)
    mean, top = prototype_cosines(id_proto)
    acc = 100.0 * right / max(total, 1)
    c = id_proto.shape[0]
    chance = at_chance(acc, c, total)
    return {"proto_cos_mean": mean, "proto_cos_max": top, "local_acc": acc, "chance": 100.0 / c,
            "local_at_chance": chance, "collapsed": top > COLLAPSE_COSINE or chance}


def format_diagnostics(d: dict) -> str:
    return (f"ID prototypes cos mean {d['proto_cos_mean']:.3f} max {d['proto_cos_max']:.3f}, local top-k acc "
            f"{d['local_acc']:.1f}% (chance {d['chance']:.1f}%)")


def collapse_warnings(ckpt: dict) -> list[str]:
    """A warning naming the likely causes when the checkpoint's last epoch collapsed, else []."""
    hist = ckpt.get("history") or []
    d = hist[-1] if hist else {}
    if not d.get("collapsed"):
        return []
    cfg = ckpt.get("config") or {}
    what = []
    if d["proto_cos_max"] > COLLAPSE_COSINE:
        what.append(f"some learned ID prototypes coincide (max pairwise cosine {d['proto_cos_max']:.3f} > "
                    f"{COLLAPSE_COSINE}; mean {d['proto_cos_mean']:.3f}: "
                    f"{'nearly one vector' if d['proto_cos_mean'] > COLLAPSE_COSINE else 'some classes share one'})")
    if d.get("local_at_chance"):
        what.append(f"their local top-k accuracy on the support views is at chance ({d['local_acc']:.1f}% vs "
                    f"{d['chance']:.1f}%)")
    return [f"training collapsed at epoch {d.get('epoch')}: " + " and ".join(what or ["see the diagnostics"])
            + f". Likely causes: a training logit scale too sharp for the model (--logit-scale "
              f"{cfg.get('logit_scale')}; the default is the model's own), a learning rate too high "
              f"(--lr {cfg.get('lr')}), support crops that miss the object (iim extract --crop-scale), "
              f"too few positive patches for the grid (--k {cfg.get('k')}), or L_div too weak to keep the "
              f"prototypes apart (--lambda-div {cfg.get('lambda_div')}). Its S-MCM scores may not "
              f"beat the zero-shot ones."]
