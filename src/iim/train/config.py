"""Every training option, declared once (:mod:`iim.options`): default, help, validation and whether
it changes the result. ``iim train``'s flags, the ``--resume`` check (:data:`RESULT_KEYS`) and
``iim report``'s grouping are derived from this table.

Adding an option = adding one field here (then using it in the loop): it appears as ``--name`` in
``iim train``, and with ``result=True`` (the default) a resumed run must keep it and ``iim report``
only averages runs that share it; ``result=False`` marks an execution detail (device, kernels,
memory placement) that may differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from ..options import SEED, option, result_keys
from ..text import SDPA_BACKENDS
from .losses import DENOMINATORS, OOD_PATCHES

FEATURES_IN = ("auto", "device", "host", "stream")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")   # torch.compile modes
# SPEC §9: the switches each recipe sets; a switch given explicitly (e.g. --no-class-specific) wins
RECIPES = {
    "paper": dict(class_specific=False, train_projection=False, denominators="paper", div_diagonal=False),
    "official": dict(class_specific=True, train_projection=True, denominators="official", div_diagonal=True),
}
POSITIVE_INT, COUNT = click.IntRange(min=1), click.IntRange(min=0)
WEIGHT, POSITIVE = click.FloatRange(min=0), click.FloatRange(min=0, min_open=True)


@dataclass
class TrainConfig:
    """Every training option (defaults: SPEC §3 / the paper)."""
    # set by `iim train` from --cache, --shots/--seed/--views and --out (iim.cli_options)
    cache: str = option(help="Feature cache written by 'iim extract'.", result=False, cli=False)
    split: str = option(help="Train split train_k{K}_s{S}[_v{V}].", cli=False)
    out: str = option(help="Run folder.", result=False, cli=False)
    seed: int = option(1, "Split seed S, also the training seed.", type=SEED, cli=False)
    # the method (SPEC §3)
    k: int = option(50, "Top-k positive patches; ranks k+1..2k are ID-like OOD.", type=POSITIVE_INT)
    n_neg: int = option(300, "Negative prompts C_n (0: none).", type=COUNT)
    n_ctx: int = option(16, "Learnable context tokens per prompt.", type=POSITIVE_INT)
    recipe: str = option("paper", "paper (the equations, SPEC §1-4) or official (the authors' code, SPEC §9): "
                         "sets --class-specific, --train-projection, --denominators, --div-diagonal unless "
                         "given, and iim score's default recipe.", type=click.Choice(tuple(RECIPES)))
    class_specific: bool | None = option(None, "One context per class instead of one shared context "
                                         "[default: the recipe's: paper off, official on].")
    train_projection: bool | None = option(
        None, "Also train a copy of text_projection for the local and negative prompts (global prototypes "
        "keep the frozen one) [default: the recipe's: paper off, official on].")
    denominators: str | None = option(
        None, "L_pos/L_neg denominators: paper (Eq. 8-9) or official (each negative's own top-k, each class's "
        "own ranks k+1..2k; SPEC §9) [default: the recipe's].", type=click.Choice(DENOMINATORS))
    div_diagonal: bool | None = option(
        None, "L_div over the full cosine matrix / (n(n-1)), diagonal included (same gradient; SPEC §9) "
        "[default: the recipe's: paper off, official on].")
    ctx_init: str = option("", "Start the ID context from these words' token embeddings (CoOp's option, e.g. "
                           "'a photo of a'), placed right before the class name, the rest N(0, 0.02); at most "
                           "--n-ctx tokens. Default '': all N(0, 0.02) (SPEC §2).")
    lambda_neg: float = option(5.0, "Weight of L_neg (Eq. 11; 0 = ablation).", type=WEIGHT)
    lambda_div: float = option(0.5, "Weight of L_div (Eq. 11; 0 = ablation).", type=WEIGHT)
    epochs: int = option(50, "Epochs; the first is the constant-lr warm-up.", type=POSITIVE_INT)
    batch_size: int = option(32, "Images per step.", type=POSITIVE_INT)
    lr: float = option(2.5e-4, "SGD learning rate after the warm-up (cosine decay).", type=POSITIVE)
    momentum: float = option(0.9, "SGD momentum.", type=WEIGHT)
    weight_decay: float = option(5e-4, "SGD weight decay.", type=WEIGHT)
    warmup_epochs: int = option(1, "Epochs at the constant warm-up learning rate.", type=COUNT)
    warmup_lr: float = option(1e-5, "Learning rate of the warm-up epochs.", type=POSITIVE)
    logit_scale: float | None = option(
        None, "Training similarity exp(logit_scale * cos) (SPEC §3). Default: the cache model's own "
        "logit_scale.exp() (100 for OpenAI CLIP); the run records the value used.", type=POSITIVE)
    hard_negative_mining: bool = option(
        True, "Off = ablation: S_k[c], c != y, summed over the label's top-k patches, not c's own.")
    ood_patches: str = option("next-k", "ID-like OOD patches: ranks k+1..2k (paper) or every patch ranked "
                              "below k.", type=click.Choice(OOD_PATCHES))
    # execution only: may differ when resuming, and between runs that are averaged
    device: str = option("auto", result=False, cli=False)        # the shared --device
    bf16: bool = option(True, "bf16 autocast for the text encoder on GPU.", result=False)
    features_in: str = option("auto", "Where the train features live: GPU memory, host memory, or streamed "
                              "per epoch.", type=click.Choice(FEATURES_IN), result=False)
    pretrained: str | None = option(None, "Path of the cache's local weights file if it moved (checked "
                                    "against its sha256).", result=False)
    attention: str = option(
        "auto", "Prompt encoder attention kernel (same results): auto (torch's SDPA choice), an SDPA "
        "backend (math, efficient, flash), bmm (plain matmuls), blocks (block-sparse, one batched SDPA "
        "call per layer), or flex (one FlexAttention call per layer; CUDA only).",
        type=click.Choice(SDPA_BACKENDS), result=False)
    compile: str = option(
        "off", "torch.compile the step (prompt encoder + losses) in this mode (--compile alone: default; "
        "reduce-overhead adds CUDA graphs); the first step compiles.", type=click.Choice(COMPILE_MODES),
        result=False, is_flag=False, flag_value="default")


RESULT_KEYS = result_keys(TrainConfig)   # options that change what training produces


def resolve_recipe(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every switch left at None set from its recipe (SPEC §9 table)."""
    from dataclasses import replace
    from ..errors import IIMError
    if cfg.recipe not in RECIPES:
        raise IIMError(f"--recipe {cfg.recipe!r}: choose one of {', '.join(RECIPES)}")
    return replace(cfg, **{k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) is None})
