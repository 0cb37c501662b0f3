"""Every metric against a brute-force implementation, including heavily tied scores."""
import numpy as np
import pytest
import torch

from iim.errors import IIMError
from iim import metrics


def brute_fpr95(s_id, s_ood, recall=0.95):
    """Paper FPR95: try every distinct threshold t >= min(ID); nearest ID recall, ties -> lowest t."""
    best = None
    for t in sorted(set(np.r_[s_id, s_ood].tolist())):
        if t < s_id.min():
            continue
        tpr = np.sum(s_id >= t) / len(s_id)
        key = (abs(tpr - recall), t)
        if best is None or key < best[0]:
            best = (key, np.sum(s_ood >= t) / len(s_ood))
    return best[1]


def brute_fpr95_openood(s_id, s_ood, recall=0.95):
    """OpenOOD v1.5: OOD positive on -score, 'positive if -score >= t' for every distinct t from high to
    low. Like sklearn's roc_curve (default drop_intermediate), a point in the middle of a straight run of
    equal (fp, tp) steps is dropped; then the first point with OOD recall >= 0.95 gives the ID rate."""
    pos, neg = -s_ood, -s_id
    pts = [(np.sum(neg >= t), np.sum(pos >= t)) for t in sorted(set(np.r_[pos, neg].tolist()), reverse=True)]
    step = lambda a, b: (b[0] - a[0], b[1] - a[1])  # noqa: E731
    kept = [p for i, p in enumerate(pts)
            if i in (0, len(pts) - 1) or step(pts[i - 1], p) != step(p, pts[i + 1])]
    for fp, tp in kept:
        if tp / len(pos) >= recall:
            return fp / len(neg)


def brute_auroc(s_id, s_ood):
    diff = s_id[:, None] - s_ood[None, :]
    return np.mean((diff > 0) + 0.5 * (diff == 0))


def brute_ap(pos, neg):
    """Average precision: sum over distinct thresholds of (recall step) x precision."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(np.r_[pos, neg].tolist()), reverse=True):
        tp, fp = np.sum(pos >= t), np.sum(neg >= t)
        recall = tp / len(pos)
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def cases():
    rng = np.random.default_rng(0)
    out = []
    for n_id, n_ood in [(50, 40), (200, 73), (37, 200)]:
        out.append((rng.normal(1, 1, n_id), rng.normal(0, 1, n_ood)))                  # continuous
        out.append((rng.integers(0, 6, n_id).astype(float), rng.integers(0, 4, n_ood).astype(float)))  # ties
        out.append((rng.integers(0, 3, n_id) / 2, rng.integers(0, 3, n_ood) / 2))     # heavy ties
    out.append((np.ones(20), np.ones(30)))                                             # all tied
    out.append((np.arange(100.0), np.arange(100.0) - 0.5))
    return out


@pytest.mark.parametrize("case", range(len(cases())))
def test_metrics_match_brute_force(case):
    s_id, s_ood = cases()[case]
    assert metrics.fpr95(s_id, s_ood) == pytest.approx(brute_fpr95(s_id, s_ood), abs=1e-12)
    assert metrics.fpr95_openood(s_id, s_ood) == pytest.approx(brute_fpr95_openood(s_id, s_ood), abs=1e-12)
    assert metrics.auroc(s_id, s_ood) == pytest.approx(brute_auroc(s_id, s_ood), abs=1e-12)
    assert metrics.aupr_in(s_id, s_ood) == pytest.approx(brute_ap(s_id, s_ood), abs=1e-12)
    assert metrics.aupr_out(s_id, s_ood) == pytest.approx(brute_ap(-s_ood, -s_id), abs=1e-12)


def test_fpr95_nearest_recall_and_tie_rule():
    # 20 ID scores 1..20, so recall 0.95 is reached exactly at threshold 2 (19 of 20 ID at or above)
    s_id = np.arange(1.0, 21.0)
    assert metrics.fpr95(s_id, np.array([0.5, 2.0, 2.5, 30.0])) == 0.75   # 2.0, 2.5, 30 accepted
    # an OOD score at 1.5 is a second threshold with recall 0.95: MCM's rule takes the lower one
    assert metrics.fpr95(s_id, np.array([1.5, 2.0, 2.5, 30.0])) == 1.0
    # recalls 0.9 / 1.0 only (ID in pairs): both 0.05 away -> the lower threshold (recall 1.0) wins
    s_id = np.repeat(np.arange(10.0), 2)
    s_ood = np.array([-1.0, 0.5, 9.5])
    assert metrics.fpr95(s_id, s_ood) == pytest.approx(2 / 3)   # threshold 0: 0.5 and 9.5 accepted


def test_accepts_torch_and_separates_perfectly():
    s_id, s_ood = torch.linspace(1, 2, 30), torch.linspace(-1, 0, 30)
    assert metrics.fpr95(s_id, s_ood) == 0.0 and metrics.fpr95_openood(s_id, s_ood) == 0.0
    assert metrics.auroc(s_id, s_ood) == 1.0 and metrics.aupr_in(s_id, s_ood) == 1.0
    assert metrics.aupr_out(s_id, s_ood) == 1.0
    # reversed: every OOD image outranks every ID one
    assert metrics.fpr95(s_ood, s_id) == 1.0 and metrics.auroc(s_ood, s_id) == 0.0


def test_bad_input():
    with pytest.raises(IIMError, match="need ID and OOD"):
        metrics.auroc(np.ones(3), np.array([]))
    with pytest.raises(IIMError, match="NaN"):
        metrics.fpr95(np.array([1.0, np.nan]), np.ones(2))
