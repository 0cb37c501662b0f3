"""Score histograms (ID vs each OOD set) and ROC curves, written with matplotlib's Agg canvas."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from ..atomic import atomic_write


def panels(n_panels: int = 1, width: float = 4.0):
    """A figure of ``n_panels`` side by side (no pyplot) and its axes."""
    from matplotlib.figure import Figure   # no pyplot: no global state, no display needed

    fig = Figure(figsize=(width * n_panels, 3.2), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _save(fig, path: Path, fmt: str = "png") -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=fmt), binary=True)


def save_formats(fig, stem, formats=("png", "pdf")) -> list[Path]:
    """``fig`` as ``stem.png`` and ``stem.pdf`` (each written atomically); returns the paths."""
    paths = [Path(stem).with_suffix(f".{ext}") for ext in formats]
    for path in paths:
        _save(fig, path, path.suffix[1:])
    return paths


def histograms(path, title: str, id_scores: np.ndarray, ood: dict[str, np.ndarray], *, bins: int = 60) -> None:
    """One panel per OOD set: density histograms of the ID scores and that set's scores."""
    fig, axes = panels(len(ood))
    for ax, (name, scores) in zip(axes, ood.items()):
        lo = min(id_scores.min(), scores.min())
        hi = max(id_scores.max(), scores.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        for values, label in ((id_scores, f"ID (n={len(id_scores)})"), (scores, f"{name} (n={len(scores)})")):
            # one filled polygon per histogram ("stepfilled"), not one rectangle per bin: much cheaper
            ax.hist(values, bins=edges, density=True, histtype="stepfilled", alpha=0.55, label=label)
        ax.set_xlabel(f"{title} score (higher = ID)")
        ax.set_ylabel("density")
        ax.set_title(f"{title}: ID vs {name}", fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, Path(path))


def roc_curves(path, title: str, id_scores: np.ndarray, ood: dict[str, np.ndarray]) -> None:
    """ROC curves (ID positive: x = OOD accepted, y = ID accepted), one line per OOD set."""
    fig, (ax,) = panels(1, width=4.4)
    for name, scores in ood.items():
        y = np.r_[np.ones(len(id_scores)), np.zeros(len(scores))]
        fpr, tpr, _ = roc_curve(y, np.r_[id_scores, scores])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("OOD images accepted (FPR)")
    ax.set_ylabel("ID images accepted (TPR)")
    ax.set_title(f"{title} ROC", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, Path(path))
