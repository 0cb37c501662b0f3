"""Stage two, inference: every OOD evaluator of the paper from the feature cache (``iim score``).

    from iim.score import ood_scores
    scores = ood_scores(global_feats, local_feats, global_proto, id_proto, neg_proto, k=50, alpha=1.0)

    evaluators  the pure Eq. 2-4/12 functions (MCM, GL-MCM, R-MCM, S-MCM, i2t, t2i, ID classification)
    scores      ood_scores: composes them for a batch of images
    sweep       every (k, alpha) in one pass
    knn         the KNN baseline (Sun et al. 2022) on cached global features, via faiss
    neglabel    NegLabel's score (SPEC §10): ID softmax mass among [ID prompts, negatives], grouped
    csp         CSP's conjugated semantic pool (its score is NegLabel's on the mined pool)
    adaneg      AdaNeg: NegLabel's score on test-time adaptive proxies from a streaming memory
    pipeline    streams a cache split by split for a run (or zero-shot) and collects scores and metrics
    report      tables, results.json / results.csv / scores_{split}.npz
    plots       score histograms and ROC curves

The commands (``iim score``, ``iim sweep``, ``iim report``) are in :mod:`iim.cli`.
"""
from .scores import SCORE_KEYS, Similarities, evaluate, id_predictions, ood_scores, similarities
from .sweep import sweep_scores

__all__ = ["ood_scores", "sweep_scores", "similarities", "evaluate", "id_predictions", "Similarities",
           "SCORE_KEYS"]
