"""``iim train``: IIM prompt training from a feature cache (SPEC §3)."""
from __future__ import annotations

from pathlib import Path

import click
from tqdm.auto import tqdm

from ..cache import open_cache
from ..cache.names import parse_train_split, run_name, train_split_name
from .options import cache_option, device_option, out_option, progress_option, seed_option
from ..errors import IIMError
from ..options import click_options
from ..train.config import TrainConfig
from ..train.loop import train as run_training


def resolve_split(cache, shots: int | None, seed: int | None, views: int | None = None):
    """Pick the train split ``train_shots{K}_seed{S}`` (``_views{V}`` for V > 1) -> ``(name, K, S, V)``.
    Options left out are filled in when exactly one complete train split matches the others; several
    matches are listed."""
    found = [t for n in cache.split_names() if (t := parse_train_split(n))]
    match = [f for f in found if all(want is None or want == got
                                     for want, got in zip((shots, seed, views), f[1:]))]
    complete = [f for f in match if cache.is_complete(f[0])]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        names = ", ".join(f[0] for f in complete)
        raise IIMError(f"cache {cache.root} has several train splits ({names}); pick one with "
                       f"--shots K --seed S" + (" --views V" if len({f[3] for f in complete}) > 1 else ""))
    if match:                                  # only incomplete ones: let the cache explain
        cache.split(match[0][0])
    if shots is not None and seed is not None:
        cache.split(train_split_name(shots, seed, views or 1))   # names the complete splits
    have = ", ".join(f[0] for f in found) or "none"
    want = " ".join(f"--{o} {v}" for o, v in (("shots", shots), ("seed", seed), ("views", views))
                    if v is not None)
    raise IIMError(f"cache {cache.root} has no train split{' for ' + want if want else ''} (train splits: "
                   f"{have}); run 'iim extract --shots K --seed S' first")


@click.command("train", short_help="Train IIM (or CoOp, LoCoOp, Local-Prompt) prompts on a cached train split.",
               context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@cache_option("Feature cache written by 'iim extract'.", required=True, name="cache_dir")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Shots K of the train split (default: the only one).")
@seed_option("Split seed S, also the training seed (default: the only train split's seed).")
@click.option("--views", type=click.IntRange(min=1), default=None,
              help="Views V of the train split, when the cache holds several (split name suffix _views{V}).")
@out_option("Run folder [default: runs/<benchmark>-shots{K}-seed{S}-<method>; -views{V} added for V > 1].")
@click_options(TrainConfig)
@device_option
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Discard an existing run in --out and start again.")
@progress_option
def train(cache_dir, shots, seed, views, out, device, resume, overwrite, progress, **options):
    """Train IIM prompts (Eq. 5-11), or a comparison method's (--method, SPEC §8), on a cached train
    split; the image encoder never runs.

    \b
    iim train --cache cache/in1k                       # the cache's only train split
    iim train --cache cache/in1k --shots 16 --seed 1 --out runs/in1k-16-1
    iim train --cache cache/in1k --resume              # continue an interrupted run
    iim train --cache cache/in1k --method locoop       # a comparison method, its paper's defaults

    Writes <out>/checkpoint.pt (contexts, config, prototypes) atomically after every epoch.
    """
    if resume and overwrite:
        raise IIMError("--resume and --overwrite exclude each other")
    cache = open_cache(cache_dir)
    split, shots, seed, views = resolve_split(cache, shots, seed, views)
    if out is None:
        bench = cache.manifest.get("benchmark") or cache.root.name
        out = Path("runs") / run_name(bench, shots, seed, views, options["method"])
    cfg = TrainConfig(cache=str(cache_dir), split=split, out=str(out), seed=seed, device=device, **options)
    run_training(cfg, resume=resume, overwrite=overwrite, progress=progress,
                 log=tqdm.write)   # the command's epoch lines on stdout, above the progress bar
