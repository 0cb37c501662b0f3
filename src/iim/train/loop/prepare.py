"""Everything before a run's first epoch: every refusal (before anything is written), the resolved
options and ``config.json``, the encoder built or restored, and its features -> a :class:`Run`."""
from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from ...atomic import atomic_write_text
from ...cache import manifest_key
from ...cache.location import record, redact
from ...data.splits import split_crop_scale
from ...errors import IIMError
from ...log import info as log_info
from ...models import model_logit_scale, resolve_device
from ...options import check
from ...text import PromptEncoder
from .. import checkpoint as ck
from .. import methods
from ..config import TrainConfig, resolve_recipe
from .contexts import build_encoder, check_ctx_init, trained_parameters
from .feed import WHERE
from .folder import discard_run, open_run_folder
from .resources import Resources
from .saving import restore
from .schedule import epoch_batches


@dataclasses.dataclass
class Run:
    """One run folder being trained (:func:`prepare`): its resolved options, encoder, optimizer, train
    features, history so far and last saved checkpoint (``state``); ``error`` once it has stopped."""
    cfg: TrainConfig
    config: dict
    fingerprint: dict
    out: Path
    encoder: PromptEncoder
    optimizer: torch.optim.Optimizer
    feats: "methods.StepInputs"
    global_protos: torch.Tensor
    amp: dict
    n_steps: int                   # optimiser steps per epoch
    start: int                     # epochs done before this process
    history: list
    state: dict | None
    log: object
    error: Exception | None = None
    protos: tuple | None = None    # the last epoch's learned_prototypes

    @property
    def path(self) -> Path:
        return self.out / ck.CHECKPOINT


def validate(cfg: TrainConfig, split, model_name: str | None = None) -> None:
    """The option table's checks (:func:`iim.options.check`), plus those that need the split (and the
    model's tokenizer, for --ctx-init)."""
    check(cfg)
    if cfg.ctx_init and model_name:
        check_ctx_init(cfg.ctx_init, cfg.n_ctx, model_name)
    if cfg.method == "iim" and split.hw < 2 * cfg.k:
        raise IIMError(f"--k {cfg.k} needs 2k <= {split.hw} patches per image (use --k {split.hw // 2} or less)")
    if split.n == 0:
        raise IIMError(f"split {split.name} has no images")


def resolve_logit_scale(cfg: TrainConfig, manifest: dict, load_model) -> float:
    """tau of SPEC §3: ``--logit-scale``, else the cache manifest's record of the model's own
    ``logit_scale.exp()``, else (caches extracted before it was recorded) read from the weights."""
    if cfg.logit_scale is not None:
        return float(cfg.logit_scale)
    if manifest.get("logit_scale") is not None:
        return float(manifest["logit_scale"])
    return model_logit_scale(load_model())


def full_config(cfg: TrainConfig, cache) -> dict:
    m = cache.manifest
    return dict(dataclasses.asdict(cfg), cache=record(cfg.cache), model=m.get("model"),
                weights=m.get("weights"), benchmark=m.get("benchmark"), classnames=cache.classnames,
                crop_scale=split_crop_scale(cache.split(cfg.split).attrs))


def prepare(cfg: TrainConfig, shared: Resources, *, resume: bool = False, overwrite: bool = False,
            log=log_info) -> Run | dict:
    """Everything before the first epoch of a run: every refusal (before anything is written), the
    run folder opened (:func:`open_run_folder`), the encoder built or restored, ``config.json`` written,
    the features from ``shared`` -> the :class:`Run`, or the checkpoint of a run already complete."""
    check(cfg)                              # bad option values: one line, before anything is opened
    cache = shared.cache(cfg.cache)
    split = cache.split(cfg.split)          # refuses a missing or incomplete split
    cfg = methods.resolve(cfg, split)       # the method's defaults for options left at None
    validate(cfg, split, cache.manifest.get("model"))
    classnames, labels = cache.classnames, split.labels
    if len(classnames) == 0 or labels.min() < 0 or labels.max() >= len(classnames):
        raise IIMError(f"split {cfg.split} has labels outside the cache's {len(classnames)} classes")
    device = resolve_device(cfg.device)    # refusals first: --overwrite below deletes the old run
    if cfg.attention == "flex" and device.type != "cuda":
        raise IIMError(f"--attention flex trains on CUDA only (torch's FlexAttention has no {device.type} "
                       f"backward); leave --attention at auto on this device")

    def text_model():
        return shared.model(cache, device, cfg.pretrained, note=log)
    cfg = dataclasses.replace(resolve_recipe(cfg), logit_scale=resolve_logit_scale(cfg, cache.manifest, text_model))
    config, fingerprint = full_config(cfg, cache), manifest_key(cache.manifest)
    out = Path(cfg.out)
    path = out / ck.CHECKPOINT
    state = open_run_folder(out, config, fingerprint, resume=resume, overwrite=overwrite, log=log)
    if state is not None and state.get("complete"):
        log(f"{path} is already complete ({state['epoch']} epochs); nothing to do")
        return state

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = text_model()
    encoder = build_encoder(model, classnames, cfg)
    optimizer = torch.optim.SGD(list(trained_parameters(encoder).values()), lr=cfg.warmup_lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    start, history = 0, []
    if state is not None:
        start, history = restore(state, encoder, optimizer)
        log(f"resuming {out} after epoch {start}/{cfg.epochs}")
    global_protos = shared.global_prototypes(cache, model)

    if overwrite:
        discard_run(out)
    for stale in out.glob(f".{ck.CHECKPOINT}.*.tmp"):     # left by a run killed while saving
        stale.unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    own = copy.copy(shared.features(cache, split, device, cfg.features_in))   # its own epoch draw, shared tensors
    feats = methods.StepInputs(cfg, own, device, global_protos, progress=shared.progress)
    log(f"training {cfg.split} of {redact(cfg.cache)} ({split.n} images x {split.views} view(s), {len(classnames)} "
        f"classes; features {WHERE[feats.where]}) on {device} -> {path}")
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    n_steps = len(epoch_batches(torch.arange(split.n), cfg.batch_size)) * methods.steps_per_batch(cfg)
    return Run(cfg, config, fingerprint, out, encoder, optimizer, feats, global_protos, amp, n_steps, start,
               history, state, log)
