"""The paper's own numbers (SPEC §7; the paper's Tables 1 and 2): the average FPR95 / AUROC over its four
OOD sets (iNaturalist, SUN, Places, Texture), in percent, per benchmark and shot count. The one place
they are written down; reports put them beside ours (``paper_rows``). Also the 0-shot peers' numbers as
their own papers report them (SPEC §10, :data:`REPORTED`, ``reported_rows``).

    paper_rows("imagenet500-easy", shots=[4])   # [PaperRow(0-shot R-MCM*), PaperRow(4-shot IIM S-MCM)]
    paper_rows("demo")                          # []: not one of the paper's benchmarks
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    benchmark: str       # iim.data.benchmarks name
    shots: int           # 0: zero-shot
    method: str          # the paper's row name: "0-shot", "IIM", "IIM*" (IIM tested without negatives)
    evaluator: str       # iim.score.report.LABELS key of the score the paper reports in that row
    fpr95: float
    auroc: float

    @property
    def label(self) -> str:
        return self.method if self.shots == 0 else f"{self.shots}-shot {self.method}"


def _rows(benchmark, evaluator, method, zero, four, sixteen):
    return [PaperRow(benchmark, 0, "0-shot", "r_mcm_star", *zero),
            PaperRow(benchmark, 4, method, evaluator, *four),
            PaperRow(benchmark, 16, method, evaluator, *sixteen)]


# SPEC §7: | ID set | 0-shot R-MCM* | 4-shot IIM | 16-shot IIM | (ImageNet-100: IIM*, the S-MCM* score)
PAPER = (_rows("imagenet", "s_mcm", "IIM", (33.57, 91.35), (23.17, 94.74), (21.37, 95.27))
         + _rows("imagenet500-easy", "s_mcm", "IIM", (12.10, 96.98), (6.09, 98.44), (5.44, 98.65))
         + _rows("imagenet500-hard", "s_mcm", "IIM", (39.10, 90.04), (27.81, 93.55), (26.30, 93.78))
         + _rows("imagenet100", "s_mcm_star", "IIM*", (19.18, 96.22), (11.84, 97.68), (8.43, 98.21)))

SOURCE = "the paper's Tables 1-2 (SPEC §7)"


def paper_rows(benchmark: str | None, shots=None) -> list[PaperRow]:
    """The paper's rows for ``benchmark``: its 0-shot row and, of the trained rows, those whose shot
    count is in ``shots`` (None: all). Empty for a benchmark the paper does not report."""
    return [r for r in PAPER if r.benchmark == benchmark
            and (r.shots == 0 or shots is None or r.shots in set(shots))]


@dataclass(frozen=True)
class ReportedRow:
    """A peer's number as its own paper reports it (SPEC §10), never measured here: shown apart, as
    "reported:", beside our scores of the same method."""
    benchmark: str
    method: str          # "NegLabel (ICLR 2024)"
    evaluator: str       # the iim.score.report.LABELS key of our score of that method
    fpr95: float
    auroc: float | None  # None: the paper's headline gives FPR95 only


# SPEC §10: CLIP ViT-B/16, ImageNet-1k vs iNaturalist, SUN, Places, Texture (average), 0-shot
REPORTED = (ReportedRow("imagenet", "NegLabel (ICLR 2024)", "neglabel", 25.40, 94.21),
            ReportedRow("imagenet", "CSP (NeurIPS 2024)", "csp", 17.51, None),
            ReportedRow("imagenet", "AdaNeg (NeurIPS 2024)", "adaneg", 18.92, None))
REPORTED_SOURCE = ("their papers (SPEC §10): CLIP ViT-B/16, ImageNet-1k, average over iNaturalist, SUN, "
                   "Places and Texture; not measured here")


def reported_rows(benchmark: str | None) -> list[ReportedRow]:
    """The peers' reported numbers for ``benchmark`` (empty for any other than ImageNet-1k)."""
    return [r for r in REPORTED if r.benchmark == benchmark]
