"""The scoring options, declared once (:mod:`iim.options`): ``iim score`` / ``iim sweep`` take their
flags from this table, and ``iim report`` averages only results scored with the same values of the
options that change the result (:data:`RESULT_KEYS`). Adding an option = one field here.
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from ..options import BATCH, AtLeast, Finite, Grid, option, result_keys

K_GRID = "1,5,10,20,50,100,200"       # iim sweep's defaults
ALPHA_GRID = "0:2:0.25"


@dataclass
class ScoreOptions:
    """How a run (or the zero-shot prototypes) is scored (SPEC §4)."""
    k: list = option(50, "Top-k of i2t/t2i; a list '1,5,10' or range 'a:b:step' sweeps. iim score's "
                     "default for a Local-Prompt run is 10 (its evaluation script).",
                     type=Grid(integer=True, element=AtLeast(1)))
    alpha: list = option(1.0, "Weight of t2i in S-MCM; a list or range 'a:b:step' sweeps.", type=Grid(element=Finite(min=0)))
    T: float = option(1.0, "Temperature of e(v, t) = exp(cos / T).", flag="--T",
                      type=Finite(min=0, min_open=True))
    chunk: int | None = option(None, "Images per chunk (bounds memory). Default: ~1 GiB of work on CPU, "
                               "8 GiB on GPU.", type=BATCH, result=False)
    recipe: str | None = option(None, "paper (SPEC §4) or official (the authors' double exponential in "
                                "R-MCM/S-MCM with negatives, SPEC §9). Default: the run's recipe (zero-shot: "
                                "paper).", type=click.Choice(("paper", "official")))
    knn_k: int = option(1, "KNN baseline: distance to the k-th nearest support feature.",
                        type=AtLeast(1))
    knn_all_views: bool = option(False, "Put every augmented view into the KNN bank (default: view 0).")


@dataclass
class NegativeOptions:
    """How ``iim score --negatives NEG`` scores mined negative labels (SPEC §10)."""
    negatives: str | None = option(None, "A NEG folder of 'iim negatives': adds NegLabel, CSP, AdaNeg and "
                                   "R-MCM / S-MCM with mined negatives (every source of ID and OOD prototypes).",
                                   result=False, metavar="NEG")
    groups: int = option(100, "NegLabel / CSP: average over G groups of the mined negatives (NegLabel's "
                         "ImageNet setting; 1 = ungrouped). Needs --negatives.", type=AtLeast(1))
    neg_seed: int = option(0, "Seed of the negatives' grouping permutation and of AdaNeg's order over the "
                           "images (both recorded). Needs --negatives.", type=AtLeast(0))


RESULT_KEYS = result_keys(ScoreOptions) + result_keys(NegativeOptions)   # other values: not averaged
SWEEP_SKIPS = ("knn_k", "knn_all_views")  # a sweep has no KNN row
