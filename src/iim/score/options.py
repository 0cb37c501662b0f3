"""The scoring options, declared once (:mod:`iim.options`): ``iim score`` / ``iim sweep`` take their
flags from this table, and ``iim report`` averages only results scored with the same values of the
options that change the result (:data:`RESULT_KEYS`). Adding an option = one field here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import click

from ..options import BATCH, AtLeast, Finite, Grid, option, result_keys
from ..recipes import SCORED as RECIPES
from ..registry import METHODS, TEST_K

K_GRID = "1,5,10,20,50,100,200"       # iim sweep's defaults
ALPHA_GRID = "0:2:0.25"


@dataclass
class ScoreOptions:
    """How a run (or the zero-shot prototypes) is scored (SPEC §4)."""
    k: list = option(TEST_K, "Top-k of i2t/t2i; a list '1,5,10' or range 'a:b:step' sweeps. iim score's "
                     "default for a " + ", ".join(f"{m.label} run is {m.score_k}" for m in METHODS.values()
                                                  if m.score_k != TEST_K) + " (its evaluation script).",
                     type=Grid(integer=True, element=AtLeast(1)))
    alpha: list = option(1.0, "Weight of t2i in S-MCM; a list or range 'a:b:step' sweeps.", type=Grid(element=Finite(min=0)))
    T: float = option(1.0, "Temperature of e(v, t) = exp(cos / T).", flag="--T",
                      type=Finite(min=0, min_open=True))
    chunk: int | None = option(None, "Images per chunk (bounds memory). Default: ~1 GiB of work on CPU, "
                               "8 GiB on GPU.", type=BATCH, result=False)
    recipe: str | None = option(None, "paper (SPEC §4) or official (the authors' double exponential in "
                                "R-MCM/S-MCM with negatives, SPEC §9). Default: the run's recipe (zero-shot: "
                                "paper).", type=click.Choice(RECIPES))
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


@dataclass
class Scoring:
    """The scoring settings ``iim score``, ``iim sweep`` and ``iim grid`` (each grid point) score with, made
    from the flags of :class:`ScoreOptions` (:meth:`from_flags`; its defaults are theirs): results.json at
    (k, alpha), sweep.csv over ks x alphas if several. ``k`` None: each grid point's own training top-k
    when ``ks`` lists it, else :data:`TEST_K` when listed, else ``ks[0]`` (:meth:`test_k`)."""
    ks: list = field(default_factory=lambda: [ScoreOptions.k])
    alphas: list = field(default_factory=lambda: [ScoreOptions.alpha])
    k: int | None = None
    alpha: float = ScoreOptions.alpha
    T: float = ScoreOptions.T
    ood: tuple = ()
    chunk: int | None = ScoreOptions.chunk
    device: str = "auto"
    recipe: str | None = ScoreOptions.recipe     # None: each run's own recipe

    @classmethod
    def from_flags(cls, *, k: list, alpha: list, T: float, chunk=None, recipe=None, ood=(), device="auto"):
        """The settings of the flags ``--k`` / ``--alpha`` (lists), ``--T``, ``--chunk``, ``--recipe``, ``--ood``,
        ``--device``; results.json's alpha is 1.0 when ``alpha`` lists it, else its first."""
        default = ScoreOptions.alpha
        return cls(ks=list(k), alphas=list(alpha), alpha=default if default in alpha else alpha[0], T=T,
                   ood=tuple(ood), chunk=chunk, device=device, recipe=recipe)

    def run_kwargs(self) -> dict:
        """The keyword arguments of :func:`iim.score.run.run_score` / ``run_sweep`` besides k and alpha."""
        return dict(T=self.T, ood=self.ood, chunk=self.chunk, device=self.device, recipe=self.recipe)

    @property
    def sweeps(self) -> bool:
        return len(self.ks) * len(self.alphas) > 1

    def k_for(self, train_k: int) -> int:
        """The test k of a point's results.json."""
        return self.test_k(train_k)[0]

    def test_k(self, train_k: int) -> tuple[int, str]:
        """The test top-k of a point trained with top-k ``train_k``, and why that one (printed by ``iim grid``)."""
        if self.k is not None:
            return self.k, "the test k asked for"
        own = "the method trains without a top-k" if train_k is None else "its training top-k is not in --k"
        if train_k is not None and train_k in self.ks:
            return train_k, "each point's training top-k, which --k lists"
        if TEST_K in self.ks:
            return TEST_K, f"the default test k: {own}"
        return self.ks[0], f"the first --k: {own}, nor is {TEST_K}"

    def key(self) -> dict:
        return dict(ks=list(self.ks), alphas=list(self.alphas), k=self.k, alpha=self.alpha, T=self.T,
                    ood=sorted(self.ood), recipe=self.recipe)
