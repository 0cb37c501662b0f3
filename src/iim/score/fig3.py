"""Fig. 3: how the learned ID prototypes spread — a histogram of their pairwise cosine similarities and
a t-SNE map of them, one run beside another (the paper: ImageNet-500-Easy against -Hard, whose
man-made classes lie denser). ``iim prototypes RUN RUN ... --out DIR`` (``make fig3``).

    protos, bench = load_prototypes("runs/easy")     # [C, D] float64: the checkpoint's prototypes.local
    cos = pairwise_cosines(protos)                     # the C (C - 1) / 2 cosines of distinct classes
    xy = tsne_2d(protos, seed=0)                       # [C, 2]
    data = prototype_figure({"Easy": p1, "Hard": p2}, "results/fig3/prototypes")   # .png and .pdf
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..errors import IIMError
from ..options import SEED, Finite
from .plots import panels, save_formats
from .report import write_text

FIGURE = "prototypes"


def load_prototypes(run) -> tuple[np.ndarray, str | None]:
    """A trained run's learned ID prototypes (``checkpoint.pt``'s ``prototypes.local``, [C, D]) and the
    benchmark it was trained on."""
    from ..train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run, need=("prototypes",))
    return ckpt["prototypes"]["local"].double().numpy(), ckpt["config"].get("benchmark")


def pairwise_cosines(protos: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of distinct prototypes (upper triangle, row-major), [C (C - 1) / 2]."""
    p = np.asarray(protos, dtype=np.float64)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return (p @ p.T)[np.triu_indices(len(p), k=1)]


def tsne_2d(protos: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """scikit-learn's t-SNE of the unit-normalised prototypes, [C, 2]; the perplexity is capped below C
    (t-SNE needs perplexity < number of points) and ``seed`` fixes the layout."""
    from sklearn.manifold import TSNE

    p = np.asarray(protos, dtype=np.float64)
    if len(p) < 3:
        raise IIMError(f"a t-SNE of {len(p)} prototypes says nothing; Fig. 3 needs at least 3 classes")
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    perplexity = min(perplexity, (len(p) - 1) / 3)          # sklearn's default 30 for C >= 91
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(p)


def prototype_figure(runs: dict[str, np.ndarray], stem, *, bins: int = 50, seed: int = 0,
                     perplexity: float = 30.0) -> dict:
    """Write ``stem.png`` / ``stem.pdf``: the cosine histograms of every run overlaid (densities), then one
    t-SNE panel per run. Returns per run the cosines, the t-SNE points and summary numbers."""
    data = {label: dict(cosines=pairwise_cosines(p), tsne=tsne_2d(p, seed=seed, perplexity=perplexity))
            for label, p in runs.items()}
    fig, axes = panels(1 + len(runs))
    lo = min(d["cosines"].min() for d in data.values())
    hi = max(d["cosines"].max() for d in data.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    for label, d in data.items():
        axes[0].hist(d["cosines"], bins=edges, density=True, histtype="stepfilled", alpha=0.5,
                     label=f"{label} (mean {d['cosines'].mean():.3f})")
    axes[0].set_xlabel("cosine similarity of two ID prototypes")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    for ax, (label, d) in zip(axes[1:], data.items()):
        ax.scatter(d["tsne"][:, 0], d["tsne"][:, 1], s=6)
        ax.set_title(f"{label}: t-SNE of {len(d['tsne'])} prototypes", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    save_formats(fig, stem)
    for d in data.values():
        c = d["cosines"]
        d.update(classes=len(d["tsne"]), mean=float(c.mean()), std=float(c.std()), median=float(np.median(c)))
    return data


def _labels(runs, benchmarks, given) -> list[str]:
    """``--label`` values, else each checkpoint's benchmark, else (on a clash) the folder names."""
    if given:
        return list(given)
    names = [b or Path(r).name for r, b in zip(runs, benchmarks)]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


@click.command("prototypes")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/fig3"),
              show_default=True, metavar="DIR", help="Writes prototypes.png, prototypes.pdf and prototypes.json.")
@click.option("--label", "labels", multiple=True, help="A name per run (default: its benchmark).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="t-SNE random_state.")
@click.option("--perplexity", default=30.0, show_default=True, type=Finite(min=0, min_open=True),
              help="t-SNE perplexity (capped at (C - 1) / 3).")
def prototypes_cmd(runs, out, labels, seed, perplexity):
    """Fig. 3: pairwise cosine histogram and t-SNE of each run's learned ID prototypes, side by side.

    \b
    iim prototypes runs/easy-k16-s1 runs/hard-k16-s1 --out results/fig3
    """
    if labels and len(labels) != len(runs):
        raise IIMError(f"--label given {len(labels)} times for {len(runs)} runs; give one per run or none")
    if len(set(labels)) < len(labels):
        raise IIMError("--label: two runs share a name; give each its own")
    loaded = [load_prototypes(r) for r in runs]                    # every run read before any work
    names = _labels(runs, [b for _, b in loaded], labels)
    protos = {n: p for n, (p, _) in zip(names, loaded)}
    data = prototype_figure(protos, Path(out) / FIGURE, seed=seed, perplexity=perplexity)
    summary = {n: dict(run=str(r), **{k: data[n][k] for k in ("classes", "mean", "std", "median")})
               for n, r in zip(names, runs)}
    write_text(Path(out) / f"{FIGURE}.json", json.dumps(summary, indent=2) + "\n")
    for n, s in summary.items():
        click.echo(f"{n}: {s['classes']} prototypes, pairwise cosine mean {s['mean']:.3f} ± {s['std']:.3f} "
                   f"(median {s['median']:.3f})")
    click.echo(f"Wrote {out}/{FIGURE}.png, {FIGURE}.pdf, {FIGURE}.json")
