"""NegLabel's score (SPEC §10; Jiang et al., ICLR 2024): how much of an image's softmax mass over
[ID prompts, negative labels] falls on the ID prompts, optionally averaged over groups of negatives.

    scores, perm = neglabel_score(image, id_text, neg_text, logit_scale=100.0, groups=100, seed=0)

With logits ``z = logit_scale * cos(x, .)``, ``S(x) = sum_c softmax([z_id, z_neg])_c``, which equals
``sigmoid(logsumexp(z_id) - logsumexp(z_neg))`` (computed that way: stable, no [N, C + M] softmax).
Grouping: ``perm`` = a permutation of the M negatives from ``torch.Generator`` seeded ``seed``; its first
``G * (M // G)`` entries, in order, form G equal groups (the remainder is dropped); S is computed with each
group alone and the G scores are averaged. ``G = 1`` is the ungrouped score and ``perm = arange(M)``.
Higher = more in-distribution. CSP's score is this one on CSP's negatives (:mod:`iim.score.csp`);
AdaNeg (:mod:`iim.score.adaneg`) uses it on its adaptive proxies.
"""
from __future__ import annotations

import torch

from ..errors import IIMError
from ..ops import l2norm


class NegativesError(IIMError, ValueError):
    """Bad settings for a negative-label score: a one-line, user-facing message (an IIMError for the CLI,
    a ValueError for library callers)."""


def group_permutation(n_neg: int, *, groups: int = 1, seed: int = 0) -> torch.Tensor:
    """The recorded order of the ``n_neg`` negatives: ``arange`` for ``groups = 1``, otherwise
    ``torch.randperm`` from a CPU ``torch.Generator`` seeded ``seed`` (the same on every machine)."""
    if groups < 1:
        raise NegativesError(f"--groups must be at least 1, got {groups}")
    if groups > n_neg:
        raise NegativesError(f"--groups {groups} is more than the {n_neg} negative labels: "
                             f"every group needs at least one negative")
    if groups == 1:
        return torch.arange(n_neg)
    return torch.randperm(n_neg, generator=torch.Generator().manual_seed(seed))


def grouped_score(id_logits: torch.Tensor, neg_logits: torch.Tensor, perm: torch.Tensor, *,
                  groups: int = 1) -> torch.Tensor:
    """NegLabel's score from logits ``[N, C]`` / ``[N, M]``: the mean over ``groups`` groups (the first
    ``groups * (M // groups)`` columns of ``neg_logits[:, perm]``, in order) of
    ``sigmoid(logsumexp(id_logits) - logsumexp(group's neg_logits))`` -> ``[N]``."""
    size = len(perm) // groups
    neg = neg_logits[:, perm[:groups * size].to(neg_logits.device)]
    lse_neg = neg.view(len(neg), groups, size).logsumexp(-1)                # [N, G]
    return torch.sigmoid(id_logits.logsumexp(-1, keepdim=True) - lse_neg).mean(-1)


def neglabel_score(image: torch.Tensor, id_text: torch.Tensor, neg_text: torch.Tensor, *,
                   logit_scale: float, groups: int = 1, seed: int = 0,
                   batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """NegLabel's score of every image (SPEC §10) -> ``(scores [N], perm [M])``.

    ``image [N, D]`` global image features, ``id_text [C, D]`` ID class prompts, ``neg_text [M, D]``
    negative labels (any norm, any float dtype; normalised here, computed in float32 at least).
    ``logit_scale``: tau of SPEC §3 (the model's own; NegLabel's code uses 100). ``groups``/``seed``: see the
    module docstring; ``groups > M`` is refused. ``batch_size`` bounds memory (rows of ``image`` at a time)
    and does not change the result.
    """
    perm = group_permutation(len(neg_text), groups=groups, seed=seed)
    ids, negs = l2norm(id_text), l2norm(neg_text)
    out = []
    for x in l2norm(image).split(max(1, batch_size)):
        dtype = torch.promote_types(x.dtype, ids.dtype)
        x = x.to(dtype)
        out.append(grouped_score(logit_scale * x @ ids.to(x).T, logit_scale * x @ negs.to(x).T, perm,
                                 groups=groups))
    scores = torch.cat(out) if out else torch.zeros(0)
    return scores, perm
