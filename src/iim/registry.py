"""The methods and evaluators, each named ONCE (ground floor: imports nothing of iim, nor torch).

    METHODS["localprompt"].label       # "Local-Prompt"
    METHODS["iim"].evaluators          # the evaluators its paper reports: report rows, the demo table
    EVALUATORS["s_mcm"].label          # "S-MCM"; .needs: what scoring it takes (a run, negatives, ...)
    score_k("localprompt")             # 10: iim score's default test k for a run of the method

Report rows and method names (:mod:`iim.score.summary`, :mod:`iim.score.report`), the demo table
(:mod:`iim.demo.run`), ``iim predict --evaluator``'s choices and the help texts are derived from these
tables. The R-MCM / S-MCM variants with any source of ID and OOD prototypes
(``s_mcm_hand_mined``, ...) are composed by :mod:`iim.score.sources` and labelled there.
"""
from __future__ import annotations

from dataclasses import dataclass

TEST_K = 50            # the test top-k of i2t / t2i where nothing else decides (SPEC §4)

# what an evaluator needs beyond the cache's frozen prototypes
RUN = "run"                 # a trained run's prompts (learned ID prototypes or negative prompts)
NEGATIVES = "negatives"     # learned negative prompts (a run with n_neg > 0)
VOCABULARY = "vocabulary"   # negative labels mined from a vocabulary (iim negatives, iim score --negatives)
SUPPORT = "support"         # the few-shot support images' features (a memory bank)


@dataclass(frozen=True)
class Evaluator:
    key: str                 # results.json / results.csv key
    label: str               # how tables and commands name it
    needs: tuple = ()        # RUN, NEGATIVES, VOCABULARY, SUPPORT


@dataclass(frozen=True)
class Method:
    name: str                # iim train --method NAME; results.csv column train_method
    label: str               # how tables name it ("4-shot Local-Prompt")
    trains: str              # what it learns
    evaluators: tuple        # the evaluators its paper reports (SPEC §8), in table order
    score_k: int = TEST_K    # iim score's default test k for a run of it


EVALUATORS = {e.key: e for e in (
    Evaluator("mcm", "MCM"),
    Evaluator("gl_mcm", "GL-MCM"),
    Evaluator("r_mcm", "R-MCM", (RUN, NEGATIVES)),
    Evaluator("r_mcm_star", "R-MCM*"),
    Evaluator("s_mcm", "S-MCM", (RUN, NEGATIVES)),
    Evaluator("s_mcm_star", "S-MCM*"),
    Evaluator("i2t", "i2t", (RUN, NEGATIVES)),
    Evaluator("i2t_star", "i2t*"),
    Evaluator("t2i", "t2i"),
    Evaluator("knn", "KNN", (SUPPORT,)),
    Evaluator("neglabel", "NegLabel", (VOCABULARY,)),
    Evaluator("csp", "CSP", (VOCABULARY,)),
    Evaluator("adaneg", "AdaNeg", (VOCABULARY,)),
)}

# the scores iim predict (and iim.Detector) can flag images with: no memory bank, no vocabulary
PREDICT_EVALUATORS = tuple(k for k, e in EVALUATORS.items() if not {SUPPORT, VOCABULARY} & set(e.needs))

ZERO_SHOT = Method("zero_shot", "0-shot", "nothing: the frozen 'a photo of a {c}.' prototypes",
                   ("mcm", "gl_mcm", "r_mcm_star", "s_mcm_star", "neglabel", "csp", "adaneg", "s_mcm_hand_mined"))
METHODS = {m.name: m for m in (          # table order: the comparison methods, then IIM
    Method("coop", "CoOp", "a shared context for the global prompt (cross-entropy)", ("mcm", "gl_mcm")),
    Method("locoop", "LoCoOp", "CoOp + entropy on the non-top-K patches", ("mcm", "gl_mcm")),
    Method("localprompt", "Local-Prompt", "class-specific local contexts and negative prompts", ("r_mcm",),
           score_k=10),                  # its evaluation script's k
    Method("iim", "IIM", "local ID contexts and negative prompts from intra-image mining (Eq. 5-11)",
           ("r_mcm", "s_mcm", "s_mcm_learned_mined", "s_mcm_learned_learned_mined")),
)}

# results.csv / points.csv: the training option `method` and the evaluator, in columns of their own names
METHOD_COLUMN, EVALUATOR_COLUMN = "train_method", "evaluator"


def method(name: str | None) -> Method:
    """The method ``name`` (None: IIM, as runs from before ``--method`` were); an unknown name is kept as
    its own label."""
    name = name or "iim"
    if name == ZERO_SHOT.name:
        return ZERO_SHOT
    return METHODS.get(name) or Method(name, name, "", ())


def score_k(name: str | None, default: int = TEST_K) -> int:
    """``iim score``'s default test k for a run of method ``name``: its own when it has one, else ``default``."""
    m = METHODS.get(name or "iim")
    return m.score_k if m is not None and m.score_k != TEST_K else default


def label(key: str) -> str:
    """An evaluator's label (the key itself for one not in :data:`EVALUATORS`)."""
    return EVALUATORS[key].label if key in EVALUATORS else key
