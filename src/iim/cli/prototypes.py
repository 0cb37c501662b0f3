"""``iim prototypes``: Fig. 3, the learned ID prototypes of several runs side by side (``make fig3``)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import IIMError
from ..options import SEED, Finite
from ..score.fig3 import FIGURE, load_prototypes, prototype_figure
from ..score.report import write_text


def _labels(runs, benchmarks, given) -> list[str]:
    """``--label`` values, else each checkpoint's benchmark, else (on a clash) the folder names."""
    if given:
        return list(given)
    names = [b or Path(r).name for r, b in zip(runs, benchmarks)]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


@click.command("prototypes", short_help="Fig. 3: pairwise cosines and t-SNE of each run's learned ID prototypes, side by side.")
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
    iim prototypes runs/easy-shots16-seed1 runs/hard-shots16-seed1 --out results/fig3
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
