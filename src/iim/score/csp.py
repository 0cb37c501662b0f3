"""CSP, the Conjugated Semantic Pool (Chen et al., NeurIPS 2024; MengyuanChen21/NeurIPS2024-CSP).

CSP keeps NegLabel's noun candidates and replaces its adjective candidates by a pool of "modified
superclass names": each adjective is conjugated with one of 14 superclass words ("sunny place",
"striped pattern", ...), the word drawn with Python's ``random`` seeded once (CSP's code seeds 0 and draws
one word per adjective, in reading order). NegMining then selects from nouns and pool separately (SPEC §10),
and CSP's score IS NegLabel's on the mined nouns + pool entries (its code scores with NegLabel's grouped
classifier unchanged), so there is no CSP score function here: use
:func:`iim.score.neglabel.neglabel_score` on those negatives.

    pool = csp_candidates(nouns, adjectives)          # ["a nice photo of sunny place", ...]
"""
from __future__ import annotations

import random
from typing import Sequence

# The superclass words CSP conjugates adjectives with (its paper's pool, in its code's order).
SUPERCLASSES = ("environment", "space", "object", "scene", "place", "item", "area", "view", "thing",
                "pattern", "structure", "landscape", "vista", "creature")

# CSP encodes every pool phrase under 4 templates and averages; iim encodes one prompt per candidate
# (as SPEC §10 does for NegLabel) and takes the first of CSP's templates that is a sentence.
POOL_PROMPT = "a nice photo of {}"


def csp_phrases(adjectives: Sequence[str], *, seed: int = 0) -> list[str]:
    """``"{adjective} {superclass}"`` for every adjective, in order, the superclass drawn with
    ``random.Random(seed).choice(SUPERCLASSES)`` once per adjective (CSP's draw)."""
    rng = random.Random(seed)
    return [f"{a} {rng.choice(SUPERCLASSES)}" for a in adjectives]


def csp_candidates(nouns: Sequence[str], adjectives: Sequence[str], *, seed: int = 0,
                   prompt: str = POOL_PROMPT) -> list[str]:
    """The prompt texts of CSP's pool built from a vocabulary, one per adjective: ``prompt`` around
    :func:`csp_phrases`. ``nouns`` are not conjugated (CSP keeps them as NegLabel's noun candidates, with
    NegLabel's noun prompt); as in CSP, where every word is a candidate once, an adjective that is also
    among ``nouns`` or repeats an earlier adjective is left out and takes no draw."""
    seen = set(nouns)
    kept = []
    for a in adjectives:
        if a not in seen:
            seen.add(a)
            kept.append(a)
    return [prompt.format(p) for p in csp_phrases(kept, seed=seed)]
