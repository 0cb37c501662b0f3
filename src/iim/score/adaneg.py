"""AdaNeg (Zhang et al., NeurIPS 2024; the authors' code is YBZh/OpenOOD-VLM): NegLabel's score on
test-time adaptive proxies, built from a memory of the test images seen so far.

    scores = adaneg_scores(image, id_text, neg_text, logit_scale=100.0, order=torch.randperm(len(image)))

Every class and every negative label j owns a memory slot: its text prototype plus up to ``memory``
(normalised) test image features. The images are streamed in ``order``, ``batch_size`` at a time; for
each batch, as the authors' code does:

1. ``S0`` = NegLabel's grouped score (:func:`iim.score.neglabel.grouped_score`) against the text
   prototypes alone;
2. stored, one image after the other in stream order: an image with ``S0 > threshold + gap (1 - threshold)``
   into the slot of its most similar ID class, one with ``S0 < threshold - gap threshold`` into the slot of
   its most similar negative; entropy ``H`` = that of the softmax over the ID (resp. negative) logits. A
   full slot replaces its highest-entropy image when ``H`` is lower than that, else the image is not stored;
3. proxies from the memory: task-adaptive, ``normalize(sum of the slot's features)``; or sample-adaptive
   (``sample_adaptive``), per image x ``normalize(sum_s w_s m_s)``, ``w_s = exp(-beta (1 - cos(x, m_s)))``;
4. score = ``S_ada + weight * S0``, ``S_ada`` = the grouped score against the proxies (same permutation).

How the score depends on ``order``: each image is scored with the memory as left by every image before it
in ``order`` and by its whole batch (a batch is stored before it is scored). With an empty memory the
proxies are the text prototypes and the score is ``(1 + weight) S0``; the first images of a stream see
little more than their own batch, later ones a memory shaped by the stream so far, so a different order
(or ``batch_size``) gives different scores. ``batch_size = 1`` is the purely sequential
stream. ID and OOD images should come interleaved, as a deployed detector would meet them: a random
permutation from a recorded seed. The authors' evaluation starts a fresh memory for every OOD set and
streams that set with the ID test set, shuffled, so an ID image has one AdaNeg score per OOD set.
"""
from __future__ import annotations

import torch

from ..ops import l2norm
from .neglabel import NegativesError, group_permutation, grouped_score


def adaneg_scores(image: torch.Tensor, id_text: torch.Tensor, neg_text: torch.Tensor, *,
                  logit_scale: float, order: torch.Tensor, groups: int = 5, seed: int = 0, memory: int = 9,
                  threshold: float = 0.5, gap: float = 0.5, weight: float = 0.1, beta: float = 5.0,
                  sample_adaptive: bool = True, batch_size: int = 256) -> torch.Tensor:
    """AdaNeg's score of every image -> ``[N]`` (``scores[i]`` belongs to ``image[i]``), higher = more ID.

    ``image [N, D]``, ``id_text [C, D]``, ``neg_text [M, D]``: any norm (normalised here). ``order``: a
    permutation of ``0..N-1``, the stream order. ``groups``/``seed``: NegLabel's grouping (AdaNeg's ImageNet
    script: 5 groups). ``memory``: images per slot (the script's ``memleng 10`` keeps 9: its last slot is
    never written). ``threshold``, ``gap``, ``weight`` (the script's ``lambdaval``), ``beta`` (the script
    passes 5.5, the code truncates it to ``int`` 5): the defaults are the authors' ImageNet settings.
    """
    n, c = len(image), len(id_text)
    order = torch.as_tensor(order, dtype=torch.long).cpu()
    if order.shape != (n,) or not torch.equal(order.sort().values, torch.arange(n)):
        raise NegativesError(f"order must be a permutation of the {n} image rows")
    if memory < 1 or batch_size < 1:
        raise NegativesError(f"memory and batch_size must be at least 1, got {memory} and {batch_size}")
    if not (0 <= threshold <= 1 and 0 <= gap <= 1):
        raise NegativesError(f"threshold and gap must lie in [0, 1], got {threshold} and {gap}")
    perm = group_permutation(len(neg_text), groups=groups, seed=seed)
    x = l2norm(image)
    protos = torch.cat([l2norm(id_text), l2norm(neg_text)]).to(x)                     # [J, D]
    slots = torch.zeros(len(protos), 1 + memory, x.shape[1], dtype=x.dtype, device=x.device)
    slots[:, 0] = protos
    entropy = torch.full((len(protos), memory), float("inf"), dtype=x.dtype, device=x.device)
    counts = [0] * len(protos)
    high, low = threshold + gap * (1 - threshold), threshold - gap * threshold
    scores = torch.empty(n, dtype=x.dtype, device=x.device)
    for rows in order.to(x.device).split(batch_size):
        xb = x[rows]
        logits = logit_scale * xb @ protos.T
        vanilla = grouped_score(logits[:, :c], logits[:, c:], perm, groups=groups)
        for i, s0 in enumerate(vanilla.tolist()):
            if s0 > high or s0 < low:
                first = 0 if s0 > high else c                  # an ID class's slot, or a negative's
                slot, h = best_slot(logits[i, :c] if s0 > high else logits[i, c:])
                store(slots, entropy, counts, first + slot, xb[i], h)
        ada = adaptive_logits(xb, slots, logit_scale=logit_scale, beta=beta, sample_adaptive=sample_adaptive)
        scores[rows] = grouped_score(ada[:, :c], ada[:, c:], perm, groups=groups) + weight * vanilla
    return scores


def best_slot(logits: torch.Tensor) -> tuple[int, float]:
    """The most similar prototype of one image among ``logits [K]`` and the entropy of their softmax."""
    logp = logits.log_softmax(-1)
    return int(logits.argmax()), float(-(logp.exp() * logp).sum())


def store(slots: torch.Tensor, entropy: torch.Tensor, counts: list, slot: int, feat: torch.Tensor,
          h: float) -> None:
    """Put ``feat`` (entropy ``h``) into memory slot ``slot``: the next free place, or, when full, the place
    of the highest-entropy image if ``h`` is lower (ties: the first such place); in place."""
    if counts[slot] < entropy.shape[1]:
        place = counts[slot]
        counts[slot] += 1
    else:
        place = int(entropy[slot].argmax())
        if not h < entropy[slot, place]:
            return
    slots[slot, 1 + place] = feat
    entropy[slot, place] = h


def adaptive_logits(x: torch.Tensor, slots: torch.Tensor, *, logit_scale: float, beta: float = 5.0,
                    sample_adaptive: bool = True) -> torch.Tensor:
    """``logit_scale * cos(x, proxy_j)`` for images ``x [B, D]`` (unit) and memory ``slots [J, S, D]`` (unit
    rows, zeros where empty) -> ``[B, J]``. Task-adaptive: proxy_j = normalize(sum_s m_js). Sample-adaptive:
    proxy_bj = normalize(sum_s w_bjs m_js), w = exp(-beta (1 - x.m)); its cosine is computed without the
    [B, J, D] proxies, as (sum_s w_s x.m_s) / sqrt(w^T Gram_j w)."""
    if not sample_adaptive:
        return logit_scale * x @ l2norm(slots.sum(1)).T
    sims = torch.einsum("jsd,bd->bjs", slots, x)                                       # [B, J, S]
    w = torch.exp(-beta * (1 - sims))
    gram = slots @ slots.transpose(1, 2)                                               # [J, S, S]
    norm2 = (torch.einsum("bjs,jst->bjt", w, gram) * w).sum(-1)
    return logit_scale * (w * sims).sum(-1) / norm2.sqrt()
