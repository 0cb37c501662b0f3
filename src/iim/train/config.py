"""Every training option, declared once (:mod:`iim.options`): default, help, validation and whether
it changes the result. ``iim train``'s flags, the ``--resume`` check (:data:`RESULT_KEYS`) and
``iim report``'s grouping are derived from this table.

Adding an option = adding one field here (then using it in the loop): it appears as ``--name`` in
``iim train``, and with ``result=True`` (the default) a resumed run must keep it and ``iim report``
only averages runs that share it; ``result=False`` marks an execution detail (device, kernels,
memory placement) that may differ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import click

from ..errors import IIMError
from ..options import BATCH, EPOCHS, SEED, AtLeast, Finite, option, result_keys
from ..recipes import SCORED, load_recipe
from ..text import SDPA_BACKENDS
from .baselines import METHODS
from .losses import DENOMINATORS, OOD_PATCHES

FEATURES_IN = ("auto", "device", "host", "stream")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")   # torch.compile modes
# SPEC §9: the switches each recipe sets (src/iim/recipes/*.toml); a switch given explicitly
# (e.g. --no-class-specific) wins
RECIPES = {name: load_recipe(name)["switches"] for name in SCORED}
POSITIVE_INT, COUNT = AtLeast(1), AtLeast(0)
WEIGHT, POSITIVE = Finite(min=0), Finite(min=0, min_open=True)
# Each method's own defaults (SPEC §3 for IIM: the paper recipe's [train], src/iim/recipes/paper.toml;
# SPEC §8 and the peers' configs for the others); an option left
# at None takes its method's value, and the run records the value used. NOT_USED: the method has no such
# term (giving it is refused). IIM's class_specific comes from its recipe.
NOT_USED = "-"
_IIM_ONLY = dict(train_projection=NOT_USED, denominators=NOT_USED, div_diagonal=NOT_USED)
_NO_VIEWS = dict(pos_views=NOT_USED)          # Local-Prompt's only
METHOD_DEFAULTS = {
    "iim": dict(**load_recipe("paper")["train"], **_NO_VIEWS),
    "coop": dict(k=NOT_USED, n_neg=0, class_specific=False, lambda_neg=NOT_USED, lambda_div=NOT_USED,
                 epochs=50, batch_size=32, lr=0.002, **_IIM_ONLY, **_NO_VIEWS),
    "locoop": dict(k=NOT_USED, n_neg=0, class_specific=False, lambda_neg=NOT_USED, lambda_div=NOT_USED,
                   epochs=50, batch_size=32, lr=0.002, **_IIM_ONLY, **_NO_VIEWS),
    "localprompt": dict(k=50, n_neg=300, class_specific=True, lambda_neg=5.0, lambda_div=0.5, epochs=30,
                        batch_size=256, lr=0.002, **_IIM_ONLY),
}


def _by_method(name: str) -> str:
    vals = ", ".join(f"{m} {d[name]}" for m, d in METHOD_DEFAULTS.items())
    return f" [default: the method's: {vals}]."


@dataclass
class TrainConfig:
    """Every training option (defaults: SPEC §3 / the paper)."""
    # set by `iim train` from --cache, --shots/--seed/--views and --out (iim.cli.options)
    cache: str = option(help="Feature cache written by 'iim extract'.", result=False, cli=False)
    split: str = option(help="Train split train_shots{K}_seed{S}[_views{V}].", cli=False)
    out: str = option(help="Run folder.", result=False, cli=False)
    seed: int = option(1, "Split seed S, also the training seed.", type=SEED, cli=False)
    # the method: IIM (SPEC §3) or a comparison method (SPEC §8); None = the method's default
    method: str = option("iim", "Training method: iim (SPEC §3), or the comparison methods coop, locoop, "
                         "localprompt (SPEC §8), each with its own paper's defaults below.",
                         type=click.Choice(METHODS))
    k: int | None = option(None, "Top-k patches: IIM's positives (ranks k+1..2k are ID-like OOD), "
                           "Local-Prompt's top-k regions" + _by_method("k"), type=POSITIVE_INT)
    n_neg: int | None = option(None, "Negative prompts C_n (0: none)" + _by_method("n_neg"), type=COUNT)
    n_ctx: int = option(16, "Learnable context tokens per prompt.", type=POSITIVE_INT)
    recipe: str = option("paper", "paper (the equations, SPEC §1-4) or official (the authors' code, SPEC §9): "
                         "sets --class-specific, --train-projection, --denominators, --div-diagonal unless "
                         "given, and iim score's default recipe (IIM only).", type=click.Choice(tuple(RECIPES)))
    class_specific: bool | None = option(None, "One context per class instead of one shared context "
                                         "[default: iim the recipe's (paper off, official on); coop, locoop "
                                         "off; localprompt on].")
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
    lambda_neg: float | None = option(None, "Weight of L_neg (Eq. 11; 0 = ablation)" + _by_method("lambda_neg"),
                                      type=WEIGHT)
    lambda_div: float | None = option(None, "Weight of L_div (Eq. 11; 0 = ablation)" + _by_method("lambda_div"),
                                      type=WEIGHT)
    locoop_lambda: float = option(0.25, "LoCoOp: weight of its entropy term (SPEC §8).", type=WEIGHT)
    locoop_top_k: int = option(200, "LoCoOp: a patch is OOD when its label is not among its top-K classes "
                               "(K = min(this, C)).", type=POSITIVE_INT)
    pos_views: int | None = option(None, "Local-Prompt: positive views per image, one optimiser step each "
                                   "[default: min(8, V // 2) of the V cached views: 8 of 16].", type=POSITIVE_INT)
    epochs: int | None = option(None, "Epochs; the first is the constant-lr warm-up" + _by_method("epochs"),
                                type=EPOCHS)
    batch_size: int | None = option(None, "Images per step" + _by_method("batch_size"), type=BATCH)
    lr: float | None = option(None, "SGD learning rate after the warm-up (cosine decay)" + _by_method("lr"),
                              type=POSITIVE)
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


def resolve_method(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every option left at None set to its method's default (:data:`METHOD_DEFAULTS`; IIM's
    context switches then come from its recipe, :func:`resolve_recipe`); an option the method has no use
    for is refused, not ignored. ``pos_views`` needs the split and is set by the training loop."""
    if cfg.method not in METHOD_DEFAULTS:
        raise IIMError(f"--method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    defaults = METHOD_DEFAULTS[cfg.method]
    if cfg.method != "iim" and cfg.recipe != "paper":
        raise IIMError(f"--recipe {cfg.recipe} is IIM's (SPEC §9); it does not apply to --method {cfg.method}")
    for key, value in defaults.items():
        given = getattr(cfg, key)
        neutral = RECIPES["paper"].get(key)          # an IIM switch at its plain value may be given
        if given is not None and ((value == NOT_USED and given != neutral) or (key == "n_neg" and value == 0 and given)):
            raise IIMError(f"--{key.replace('_', '-')} does not apply to --method {cfg.method}")
    return replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None and v != NOT_USED})


def resolve_recipe(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every switch left at None set from its recipe (SPEC §9 table)."""
    from dataclasses import replace
    from ..errors import IIMError
    if cfg.recipe not in RECIPES:
        raise IIMError(f"--recipe {cfg.recipe!r}: choose one of {', '.join(RECIPES)}")
    return replace(cfg, **{k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) is None})
