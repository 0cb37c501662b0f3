"""The IIM training loop: text-side prompts against cached patch features (SPEC §3).

The image encoder never runs. Each epoch draws ONE of the V cached augmented views per support image,
shuffles, and takes batches (:mod:`.schedule`). Every step encodes all C + Cn prompts once with the
shared-prefix :class:`~iim.text.PromptEncoder`, computes Eq. 5-11 and takes an SGD step on the contexts
only (:mod:`.steps`). The same epoch loop (:func:`train_epochs`, :mod:`.epochs`) trains several runs
together (:mod:`iim.train.joint`).

    cfg = TrainConfig(cache="cache/in1k", split="train_shots16_seed1", out="runs/in1k-shots16-seed1-iim")
    ckpt = train(cfg)                 # checkpoint.pt written atomically after every epoch
    ckpt = train(cfg, resume=True)    # continue an interrupted run from its last checkpoint

One job per file, in the order a run meets them:

    schedule.py   each epoch's learning rate, views, order and batches
    feed.py       the train split's features where they fit (TrainFeatures)
    resources.py  what runs in one process share: caches, text models, global prototypes, features
    contexts.py   the prompt encoder and its initial contexts; what training updates; prototypes
    folder.py     the locked run folder, --resume / --overwrite
    prepare.py    every refusal and everything before the first epoch -> Run
    steps.py      one optimiser step: losses, forward (torch.compile), SGD
    saving.py     the checkpoint written after an epoch, read back on --resume
    epochs.py     THE epoch loop (one run or several)
    one_run.py    train(cfg)
"""
from ..config import COMPILE_MODES, FEATURES_IN, RECIPES, TrainConfig, resolve_recipe
from .contexts import (build_encoder, check_ctx_init, ctx_init_tokens, init_context_embeddings,
                       learned_prototypes, prototypes_of, trainable_projection, trained_parameters)
from .epochs import run_epoch, train_epochs
from .feed import WHERE, TrainFeatures
from .folder import RUN_LOCK, SCORE_OUTPUTS, discard_run, open_run_folder, run_folder
from .one_run import train
from .prepare import Run, full_config, prepare, resolve_logit_scale, validate
from .resources import Resources
from .saving import restore, save
from .schedule import epoch_batches, epoch_draw, lr_at_epoch
from .steps import prompt_losses, sgd_steps, step_function, step_losses, train_step

__all__ = ["COMPILE_MODES", "FEATURES_IN", "RECIPES", "TrainConfig", "resolve_recipe",
           "build_encoder", "check_ctx_init", "ctx_init_tokens", "init_context_embeddings", "learned_prototypes",
           "prototypes_of", "trainable_projection", "trained_parameters", "run_epoch", "train_epochs", "WHERE",
           "TrainFeatures", "RUN_LOCK", "SCORE_OUTPUTS", "discard_run", "open_run_folder", "run_folder", "train",
           "Run", "full_config", "prepare", "resolve_logit_scale", "validate", "Resources", "restore", "save",
           "epoch_batches", "epoch_draw", "lr_at_epoch", "prompt_losses", "sgd_steps", "step_function",
           "step_losses", "train_step"]
