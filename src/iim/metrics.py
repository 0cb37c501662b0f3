"""OOD detection metrics (SPEC §5). Higher score = more in-distribution; ID is the positive class.

Every function takes the ID and the OOD scores (numpy arrays, torch tensors or lists; any shape,
flattened) and returns a FRACTION in [0, 1]. Tables, ``results.json`` and ``results.csv`` report them
in percent (x 100).

    fpr95(id, ood)          paper / MCM definition: OOD accepted at the threshold whose ID recall is
                            nearest to 95 %
    recall_threshold(id)    that threshold from the ID scores alone (what ``iim predict --tpr`` uses)
    fpr95_openood(id, ood)  OpenOOD v1.5's FPR@95: OOD positive, first ROC point with TPR >= 95 %
    auroc(id, ood)          sklearn, ID positive
    aupr_in(id, ood)        sklearn average precision, ID positive
    aupr_out(id, ood)       sklearn average precision, OOD positive on negated scores
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .errors import IIMError

RECALL = 0.95
METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_openood")


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):        # torch tensor, any device/dtype
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise IIMError("scores contain NaN (a non-finite feature in the cache? run iim cache verify)")
    return x


def _split(id_scores, ood_scores):
    s_id, s_ood = _as_array(id_scores), _as_array(ood_scores)
    if len(s_id) == 0 or len(s_ood) == 0:
        raise IIMError(f"need ID and OOD scores (got {len(s_id)} ID, {len(s_ood)} OOD)")
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(len(s_id), bool), np.zeros(len(s_ood), bool)])
    return scores, is_id


def fpr95(id_scores, ood_scores, recall: float = RECALL) -> float:
    """False-positive rate at 95 % ID recall, as MCM / LoCoOp / GL-MCM compute it (the paper's FPR95).

    Walk the distinct score values from high to low as thresholds (accept = score >= threshold), down to
    the lowest ID score; take the threshold whose ID recall is NEAREST to ``recall`` and return the
    fraction of OOD images at or above it. Ties in nearness go to the LOWER threshold (MCM's
    ``argmin`` over the reversed curve), which is also what happens when several thresholds share one
    recall: the pessimistic (largest) OOD fraction among them.
    """
    scores, is_id = _split(id_scores, ood_scores)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_id = scores[order], is_id[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last row of each distinct value
    tp = np.cumsum(is_id)[last]
    fp = last + 1 - tp
    n_id, n_ood = int(is_id.sum()), len(scores) - int(is_id.sum())
    stop = int(np.searchsorted(tp, n_id))          # first threshold that recalls every ID image
    dist = np.abs(tp[:stop + 1] / n_id - recall)
    best = stop - int(np.argmin(dist[::-1]))       # nearest; on ties the lowest threshold
    return float(fp[best] / n_ood)


def recall_threshold(id_scores, recall: float = RECALL) -> float:
    """The decision threshold at ``recall`` of ID images kept (accept = score >= threshold), chosen as
    :func:`fpr95` chooses its point: among the distinct ID scores, the one whose ID recall is NEAREST to
    ``recall``, ties to the lower threshold. The OOD images it keeps are at most FPR95's (which also
    counts OOD scores between it and the next lower ID score)."""
    s = _as_array(id_scores)
    if len(s) == 0:
        raise IIMError("need ID scores to set a threshold (got none)")
    values = np.unique(s)[::-1]                                        # distinct, high to low
    kept = len(s) - np.searchsorted(np.sort(s), values, side="left")    # ID scores >= each value
    dist = np.abs(kept / len(s) - recall)
    return float(values[len(values) - 1 - int(np.argmin(dist[::-1]))])  # nearest; ties: lowest


def fpr95_openood(id_scores, ood_scores, recall: float = RECALL) -> float:
    """OpenOOD v1.5's ``FPR@95``: OOD is the POSITIVE class (score = -confidence); the ID false-positive
    rate (fraction of ID images rejected) at the first ROC point where >= 95 % of OOD is detected.

    Computed exactly as OpenOOD v1.5 does (``sklearn.metrics.roc_curve`` with its default
    ``drop_intermediate``). Not comparable with :func:`fpr95`, which the paper reports.
    """
    scores, is_id = _split(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(~is_id, -scores)
    return float(fpr[np.argmax(tpr >= recall)])


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive (sklearn ``roc_auc_score``; ties count one half)."""
    scores, is_id = _split(id_scores, ood_scores)
    return float(roc_auc_score(is_id, scores))


def aupr_in(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with ID positive (sklearn ``average_precision_score``)."""
    scores, is_id = _split(id_scores, ood_scores)
    return float(average_precision_score(is_id, scores))


def aupr_out(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with OOD positive, on negated scores."""
    scores, is_id = _split(id_scores, ood_scores)
    return float(average_precision_score(~is_id, -scores))


