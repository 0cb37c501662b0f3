"""``iim train``: IIM prompt training from a feature cache (SPEC §3)."""
from __future__ import annotations

import re
from pathlib import Path

import click

from ..cache import open_cache, train_split_name
from ..errors import IIMError
from ..text import SDPA_BACKENDS
from .losses import OOD_PATCHES
from .loop import COMPILE_MODES, FEATURES_IN, TrainConfig, train as run_training

_TRAIN = re.compile(r"train_k(\d+)_s(\d+)(?:_v(\d+))?$")


def resolve_split(cache, shots: int | None, seed: int | None, views: int | None = None):
    """Pick the train split ``train_k{K}_s{S}`` (``_v{V}`` for V > 1 views) -> ``(name, K, S, V)``.
    Options left out are filled in when exactly one complete train split matches the others; several
    matches are listed."""
    found = [(n, int(m[1]), int(m[2]), int(m[3] or 1)) for n in cache.split_names() if (m := _TRAIN.match(n))]
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


@click.command("train", short_help="Train IIM prompts on a cached train split (no image encoder).",
               context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--cache", "cache_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache written by 'iim extract'.")
@click.option("--shots", type=int, default=None, help="Shots K of the train split (default: the only one).")
@click.option("--seed", type=int, default=None,
              help="Split seed S, also the training seed (default: the only train split's seed).")
@click.option("--views", type=int, default=None,
              help="Views V of the train split, when the cache holds several (split name suffix _v{V}).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/<benchmark>-k{K}-s{S}-iim; -v{V} added for V > 1 views].")
@click.option("--k", type=int, default=50, help="Top-k positive patches; ranks k+1..2k are ID-like OOD.")
@click.option("--n-neg", type=int, default=300, help="Negative prompts C_n (0: none).")
@click.option("--n-ctx", type=int, default=16, help="Learnable context tokens per prompt.")
@click.option("--lambda-neg", type=float, default=5.0, help="Weight of L_neg (Eq. 11; 0 = ablation).")
@click.option("--lambda-div", type=float, default=0.5, help="Weight of L_div (Eq. 11; 0 = ablation).")
@click.option("--epochs", type=int, default=50, help="Epochs; the first is the constant-lr warm-up.")
@click.option("--batch-size", type=int, default=32, help="Images per step.")
@click.option("--lr", type=float, default=2.5e-4, help="SGD learning rate after the warm-up (cosine decay).")
@click.option("--class-specific", is_flag=True, help="One context per class instead of one shared context.")
@click.option("--no-hard-negative-mining", is_flag=True,
              help="Ablation: S_k[c], c != y, summed over the label's top-k patches, not c's own.")
@click.option("--ood-patches", type=click.Choice(OOD_PATCHES), default="next-k",
              help="ID-like OOD patches: ranks k+1..2k (paper) or every patch ranked below k.")
@click.option("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
@click.option("--bf16/--no-bf16", default=True, help="bf16 autocast for the text encoder on GPU.")
@click.option("--features-in", type=click.Choice(FEATURES_IN), default="auto",
              help="Where the train features live: GPU memory, host memory, or streamed per epoch.")
@click.option("--attention", type=click.Choice(SDPA_BACKENDS), default="auto",
              help="Prompt encoder attention kernel (same results): auto (torch's SDPA choice), an SDPA "
                   "backend (math, efficient, flash), bmm (plain matmuls), blocks (block-sparse, one "
                   "batched SDPA call per layer), or flex (one FlexAttention call per layer; CUDA only).")
@click.option("--compile", "compile_", type=click.Choice(COMPILE_MODES), default="off", is_flag=False,
              flag_value="default", help="torch.compile the step (prompt encoder + losses) in this mode "
              "(--compile alone: default; reduce-overhead adds CUDA graphs); the first step compiles.")
@click.option("--pretrained", default=None,
              help="Path of the cache's local weights file if it moved (checked against its sha256).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Discard an existing run in --out and start again.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(cache_dir, shots, seed, views, out, k, n_neg, n_ctx, lambda_neg, lambda_div, epochs, batch_size, lr,
          class_specific, no_hard_negative_mining, ood_patches, device, bf16, features_in, attention,
          compile_, pretrained, resume, overwrite, no_progress):
    """Train IIM prompts (Eq. 5-11) on a cached train split; the image encoder never runs.

    \b
    iim train --cache cache/in1k                       # the cache's only train split
    iim train --cache cache/in1k --shots 16 --seed 1 --out runs/in1k-16-1
    iim train --cache cache/in1k --resume              # continue an interrupted run

    Writes <out>/checkpoint.pt (contexts, config, prototypes) atomically after every epoch.
    """
    if resume and overwrite:
        raise IIMError("--resume and --overwrite exclude each other")
    cache = open_cache(cache_dir)
    split, shots, seed, views = resolve_split(cache, shots, seed, views)
    if out is None:
        bench = cache.manifest.get("benchmark") or cache.root.name
        out = Path("runs") / f"{bench}-k{shots}-s{seed}{f'-v{views}' if views > 1 else ''}-iim"
    cfg = TrainConfig(cache=str(cache_dir), split=split, out=str(out), seed=seed, k=k, n_neg=n_neg,
                      n_ctx=n_ctx, class_specific=class_specific, lambda_neg=lambda_neg,
                      lambda_div=lambda_div, epochs=epochs, batch_size=batch_size, lr=lr,
                      hard_negative_mining=not no_hard_negative_mining, ood_patches=ood_patches,
                      device=device, bf16=bf16, features_in=features_in, attention=attention,
                      compile=compile_, pretrained=pretrained)
    run_training(cfg, resume=resume, overwrite=overwrite, progress=not no_progress)
