"""Training diagnostics from ID data only (no test or OOD image): is the run collapsing?

Every epoch the loop records, for the current learned ID (local) prototypes:

    proto_cos_mean, proto_cos_max   mean / max pairwise cosine of the C prototypes (off-diagonal)
    local_acc, chance               top-k local accuracy on the support views (percent) and 1/C

and the same for the run's hand-written start, the "a photo of a {c}." prototypes that S-MCM* scores
with, on the same views (``start_cos_mean``, ``start_cos_max``, ``start_local_acc``), so that a run that
ends below where it started is told (``below_start``): training should never be silently worse than
not training.

``local_acc`` classifies each support view by the local term of SPEC §4's ID classification (argmax_c of
the mean of the top-k over patches of p*[h, c]); the hand-written "a photo of a {c}." prompts are the
bar a learned prompt should clear. A run has collapsed when its prototypes are nearly one vector (max
off-diagonal cosine above :data:`COLLAPSE_COSINE`) or its local accuracy cannot be told from chance.
"""
from __future__ import annotations

import math

import torch

from ..ops import class_probs, cosine, topk_mean

COLLAPSE_COSINE = 0.99
KEYS = ("proto_cos_mean", "proto_cos_max", "local_acc", "chance", "local_at_chance", "collapsed",
        "start_cos_mean", "start_cos_max", "start_local_acc", "below_start")
BELOW_START_POINTS = 5.0   # local accuracy this many points under the hand-written start's counts as below it


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
    p_star, _ = class_probs(cosine(local_feats, protos.to(local_feats.device)))   # Eq. 3, as iim.score computes it
    return topk_mean(p_star, min(k, local_feats.shape[1]), dim=-2).argmax(-1)


def at_chance(acc: float, n_classes: int, n: int) -> bool:
    """Whether ``acc`` (percent) over ``n`` views is within two binomial standard errors of 1/C."""
    p = 1.0 / n_classes
    return n_classes > 1 and acc / 100 <= p + 2 * math.sqrt(p * (1 - p) / max(n, 1))


def epoch_diagnostics(id_proto: torch.Tensor, batches, k: int, start_proto: torch.Tensor | None = None) -> dict:
    """The diagnostics of prototypes ``id_proto`` on ``batches`` of ``(local [b, HW, D], labels [b])``;
    with ``start_proto`` (the hand-written prototypes) also theirs on the same views, and ``below_start``."""
    right = right0 = total = 0
    for local, labels in batches:
        right += int((local_predictions(local, id_proto, k) == labels).sum())
        if start_proto is not None:
            right0 += int((local_predictions(local, start_proto, k) == labels).sum())
        total += len(labels)
    mean, top = prototype_cosines(id_proto)
    acc = 100.0 * right / max(total, 1)
    c = id_proto.shape[0]
    chance = at_chance(acc, c, total)
    out = {"proto_cos_mean": mean, "proto_cos_max": top, "local_acc": acc, "chance": 100.0 / c,
           "local_at_chance": chance, "collapsed": top > COLLAPSE_COSINE or chance}
    if start_proto is not None:
        mean0, top0 = prototype_cosines(start_proto)
        acc0 = 100.0 * right0 / max(total, 1)
        out.update(start_cos_mean=mean0, start_cos_max=top0, start_local_acc=acc0,
                   below_start=acc < acc0 - BELOW_START_POINTS)
    return out


def format_diagnostics(d: dict) -> str:
    start = (f"; hand-written start {d['start_local_acc']:.1f}%, cos max {d['start_cos_max']:.3f}"
             if "start_local_acc" in d else "")
    return (f"ID prototypes cos mean {d['proto_cos_mean']:.3f} max {d['proto_cos_max']:.3f}, local top-k acc "
            f"{d['local_acc']:.1f}% (chance {d['chance']:.1f}%{start})")


def collapse_warnings(ckpt: dict) -> list[str]:
    """Warnings for the checkpoint's last epoch: it collapsed (naming the likely causes), or its learned
    prototypes classify the support views worse than the hand-written start; else []."""
    hist = ckpt.get("history") or []
    d = hist[-1] if hist else {}
    below = ([f"the learned ID prototypes end below their hand-written start at epoch {d.get('epoch')}: local "
              f"top-k accuracy on the support views {d['local_acc']:.1f}% against {d['start_local_acc']:.1f}% "
              f"for the \"a photo of a {{c}}.\" prompts; the trained run may score worse than the zero-shot "
              f"S-MCM*"] if d.get("below_start") else [])
    if not d.get("collapsed"):
        return below
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
              f"beat the zero-shot ones."] + below
