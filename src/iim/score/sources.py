"""R-MCM / S-MCM (SPEC §4) with any source of local ID and OOD prototypes, composed from the pure
Eq. 2-4/12 functions of :mod:`iim.score.evaluators`.

Keys ``{r_mcm|s_mcm}_{ID}_{OOD}``: the ID prototypes ``ID`` are ``hand`` (the hand-written "a photo of a
{c}." prototypes) or ``learned`` (a run's), the OOD prototypes ``OOD`` are ``none``, ``learned`` (a run's
negative prompts), ``mined`` (negative labels mined from a vocabulary, ``iim negatives``) or
``learned_mined`` (both). ``none`` is the starred score: ``s_mcm_learned_none`` is a run's S-MCM*,
``s_mcm_learned_learned`` its S-MCM, ``s_mcm_hand_none`` the 0-shot S-MCM*.
"""
from __future__ import annotations

import torch

from . import evaluators as ev

ID_SOURCES = ("hand", "learned")
OOD_SOURCES = ("none", "learned", "mined", "learned_mined")
GLOBAL_KEYS = ("neglabel", "csp", "adaneg")


def source_key(score: str, id_source: str, ood_source: str) -> str:
    """``s_mcm_hand_mined`` and the like: the evaluator, then where its ID and OOD prototypes come from."""
    return f"{score}_{id_source}_{ood_source}"


def source_label(key: str) -> str:
    """``"S-MCM [hand / mined]"`` for ``s_mcm_hand_mined``."""
    base, rest = ("R-MCM", key[6:]) if key.startswith("r_mcm_") else ("S-MCM", key[6:])
    id_source, ood_source = rest.split("_", 1)
    return f"{base} [{id_source} / {ood_source.replace('_', '+')}]"


ALL_SOURCE_KEYS = tuple(f"{s}_{i}_{o}" for s in ("r_mcm", "s_mcm") for i in ID_SOURCES for o in OOD_SOURCES)


def source_scores(sims, local_feats, *, hand_proto, learned_neg, mined, k: int, alpha: float,
                  zero_shot: bool) -> dict:
    """R-MCM / S-MCM for every (ID, OOD) prototype source -> ``{key: [N]}``. ``sims`` are the job's
    similarities (its local ID prototypes: hand-written for 0-shot, learned for a run)."""
    T, dexp = sims.T, (sims.T if sims.double_exp else None)
    id_logits = {"hand": sims.id_logits} if zero_shot else {
        "learned": sims.id_logits, "hand": ev.similarity_logits(local_feats, hand_proto, T)}
    mined_logits = ev.similarity_logits(local_feats, mined, T)
    neg = {"none": None, "mined": mined_logits}
    if learned_neg is not None:
        neg["learned"] = sims.neg_logits
        neg["learned_mined"] = torch.cat([sims.neg_logits, mined_logits], -1)
    m = ev.mcm(sims.global_logits)
    out = {}
    for id_source, logits in id_logits.items():
        t2i = ev.t2i(ev.patch_softmax(logits), k)
        for ood_source, neg_logits in neg.items():
            p_star, p = ev.patch_class_probs(logits, neg_logits, double_exp_T=dexp)
            i2t = ev.i2t(p_star if p is None else p, k)
            out[source_key("r_mcm", id_source, ood_source)] = ev.r_mcm(m, i2t)
            out[source_key("s_mcm", id_source, ood_source)] = ev.s_mcm(m, i2t, t2i, alpha)
    return out
