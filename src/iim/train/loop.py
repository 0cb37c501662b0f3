"""The IIM training loop: text-side prompts against cached patch features (SPEC §3).

The image encoder never runs. Each epoch draws ONE of the V cached augmented views per support image
(``torch.Generator`` seeded from ``(seed, epoch)``), shuffles, and takes batches of ``batch_size``
images (the last incomplete batch is dropped when there is at least one full batch, as Dassl's
train loader does). Every step encodes all C + Cn prompts once with the shared-prefix
:class:`~iim.text.PromptEncoder`, computes Eq. 5-11 and takes an SGD step on the contexts only.

Learning rate (CoOp/Dassl ``ConstantWarmupScheduler`` + ``CosineAnnealingLR(T_max=epochs)``, stepped
per epoch): epochs ``0 .. warmup-1`` use ``warmup_lr``; epoch ``e >= warmup`` uses
``lr * (1 + cos(pi * (e - warmup) / epochs)) / 2`` (so the first cosine epoch uses the full lr).

    cfg = TrainConfig(cache="cache/in1k", split="train_k16_s1", out="runs/in1k-k16-s1-iim")
    ckpt = train(cfg)                 # checkpoint.pt written atomically after every epoch
    ckpt = train(cfg, resume=True)    # continue an interrupted run from its last checkpoint
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..cache import manifest_key, open_cache
from ..cache.location import record
from ..atomic import atomic_write_text, check_writable
from ..data.splits import split_crop_scale
from ..errors import IIMError
from ..log import info as log_info
from ..lock import folder_lock
from ..models import create_model, is_local_checkpoint, model_logit_scale, resolve_device, weights_id
from ..options import check
from ..text import CTX_INIT_STD, PromptEncoder, global_prototypes
from . import checkpoint as ck
from . import methods
from .config import COMPILE_MODES, FEATURES_IN, RECIPES, TrainConfig, resolve_recipe  # noqa: F401  (re-exported)
from .diagnostics import collapse_warnings, epoch_diagnostics, format_diagnostics
from .losses import diversity_loss, iim_losses, total_loss

WHERE = {"device": "in device memory", "host": "in host memory", "stream": "streamed per epoch"}
RUN_LOCK = ".train.lock"                  # held while a process trains into the run folder
SCORE_OUTPUTS = ("results.json", "results.csv", "scores_*.npz")   # removed by --overwrite


def lr_at_epoch(epoch: int, *, lr: float, epochs: int, warmup_epochs: int = 1,
                warmup_lr: float = 1e-5) -> float:
    """Learning rate of 0-based ``epoch``: constant warm-up, then Dassl's per-epoch cosine."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def epoch_draw(seed: int, epoch: int, n: int, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(view [n], order [n])``: the view used for each image and the shuffled image order of
    ``epoch``; a pure function of ``(seed, epoch)`` so that a resumed run draws what it would have."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    view = torch.randint(views, (n,), generator=g)
    return view, torch.randperm(n, generator=g)


def epoch_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class TrainFeatures:
    """The train split's patch features where they fit: ``device`` (whole [N, V, HW, D] in GPU
    memory), ``host`` (whole, in pinned CPU memory, batches copied per step) or ``stream`` (each epoch
    reads the split chunk by chunk and keeps only the drawn view of each image)."""

    def __init__(self, split, device: torch.device, where: str = "auto", *, progress: bool = True):
        self.split, self.device, self.progress = split, device, progress
        self.labels = torch.from_numpy(split.labels).to(device)
        self.nbytes = split.n * split.views * split.hw * split.dim * 2
        self.where = _choose_storage(self.nbytes, device) if where == "auto" else where
        if self.where == "device" or (self.where == "host" and device.type == "cpu"):
            self.local = self._load(device, pin=False)
        elif self.where == "host":
            self.local = self._load(torch.device("cpu"), pin=True)
        self._epoch_local = None

    def _load(self, device, pin: bool) -> torch.Tensor:
        s = self.split
        shape = (s.n, s.views, s.hw, s.dim)
        try:
            out = torch.empty(shape, dtype=torch.float16, device=device, pin_memory=pin)
        except RuntimeError:                 # pinning refused (limits): pageable memory still works
            out = torch.empty(shape, dtype=torch.float16, device=device)
        bar = tqdm(total=s.n, desc=f"loading {s.name} ({self.nbytes / 2**30:.1f} GiB)", unit="img",
                   disable=None if self.progress else True, leave=False)
        for chunk in s.iter_chunks(view=None):
            out[chunk.start:chunk.start + len(chunk.labels)].copy_(chunk.local_feats)
            bar.update(len(chunk.labels))
        bar.close()
        return out

    def start_epoch(self, view: torch.Tensor) -> None:
        """Use ``view[i]`` of image i during this epoch."""
        if self.where != "stream":
            self.view = view.to(self.local.device)
            return
        s = self.split
        pin = self.device.type == "cuda"
        try:
            local = torch.empty((s.n, s.hw, s.dim), dtype=torch.float16, pin_memory=pin)
        except RuntimeError:                 # pinning refused (limits): pageable memory still works
            local = torch.empty((s.n, s.hw, s.dim), dtype=torch.float16)
        for chunk in s.iter_chunks(view=None):
            rows = torch.arange(chunk.start, chunk.start + len(chunk.labels))
            local[rows] = chunk.local_feats[torch.arange(len(rows)), view[rows]]
        self._epoch_local = local

    def steps(self, idx: torch.Tensor) -> list[tuple]:
        """The inputs of each optimiser step of batch ``idx``: IIM takes one (another method's steps:
        :class:`iim.train.methods.StepInputs`, which wraps this)."""
        return [self.batch(idx)]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features ``[b, HW, D]`` (float16, on the device) and labels of images ``idx``."""
        if self.where == "stream":
            local = self._epoch_local[idx]
        else:
            i = idx.to(self.local.device)
            local = self.local[i, self.view[i]]
        return local.to(self.device, non_blocking=True), self.labels[idx.to(self.labels.device)]


def _compile_error(e: BaseException) -> bool:
    """Whether ``e`` comes from torch.compile (Dynamo or Inductor), not from the step's own code."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(e).__mro__)


def _choose_storage(nbytes: int, device: torch.device) -> str:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < 0.85 * free - (6 << 30):        # leave room for the text encoder's activations
            return "device"
    if nbytes < 0.6 * _available_ram():
        return "host" if device.type == "cuda" else "device"
    return "stream"


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def load_text_model(manifest: dict, device, pretrained: str | None = None):
    """The cache's CLIP model (for its text tower), with its weights verified against the manifest."""
    name = manifest.get("model")
    recorded = manifest.get("weights")
    source = pretrained or manifest.get("pretrained") or recorded
    if not name or not source:
        raise IIMError("the cache manifest does not name its model and weights; re-extract with iim extract")
    if str(recorded).startswith("sha256:"):
        if not is_local_checkpoint(source):
            raise IIMError(f"the cache was extracted with the checkpoint file {source}, which is not there; "
                           f"pass --pretrained /path/to/that/file")
        if weights_id(source) != recorded:
            raise IIMError(f"{source} is not the checkpoint the cache was extracted with (sha256 differs "
                           f"from {recorded[:19]}...); pass the right file with --pretrained")
    elif pretrained and weights_id(pretrained) != recorded:
        raise IIMError(f"--pretrained {pretrained} differs from the weights the cache was extracted with "
                       f"({recorded!r})")
    model, _ = create_model(name, source, device=device)
    return model


def build_encoder(model, classnames, cfg: TrainConfig) -> PromptEncoder:
    """The prompt encoder with contexts drawn from N(0, 0.02) by a CPU generator seeded with the run's
    seed, so that the initial contexts are the same on every device; with ``train_projection`` (SPEC §9)
    it gets a trainable copy of the model's ``text_projection`` (the model's own stays frozen)."""
    cfg = resolve_recipe(cfg)
    enc = PromptEncoder(model, classnames, n_ctx=cfg.n_ctx, n_neg=cfg.n_neg,
                        class_specific=cfg.class_specific, attention=cfg.attention)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for p in (enc.ctx, enc.neg_ctx):
            p.copy_(torch.randn(p.shape, generator=g) * CTX_INIT_STD)
    if cfg.ctx_init:
        words = init_context_embeddings(model, cfg.ctx_init, cfg.n_ctx)          # [t, W]
        with torch.no_grad():
            enc.ctx[..., cfg.n_ctx - len(words):, :] = words.to(enc.ctx.dtype)
    if cfg.train_projection:
        enc.projection = nn.Parameter(trainable_projection(model))
    return enc


def ctx_init_tokens(model_name: str, words: str) -> torch.Tensor:
    """The token ids of ``--ctx-init`` words (no SOT/EOT), with the model's tokenizer."""
    tokens = open_clip.get_tokenizer(model_name)([words])[0]
    return tokens[1:int(tokens.argmax())]


def check_ctx_init(words: str, n_ctx: int, model_name: str) -> None:
    """``--ctx-init`` must fit in the ``--n-ctx`` context tokens."""
    n = len(ctx_init_tokens(model_name, words)) if words else 0
    if n > n_ctx:
        raise IIMError(f"--ctx-init {words!r} is {n} tokens, longer than --n-ctx {n_ctx}; shorten it or raise "
                       f"--n-ctx")
    if words and n == 0:
        raise IIMError(f"--ctx-init {words!r} holds no tokens")


@torch.no_grad()
def init_context_embeddings(model, words: str, n_ctx: int) -> torch.Tensor:
    """CoOp's context init: the frozen token embeddings of ``words`` -> ``[t, W]``, t <= n_ctx."""
    name = getattr(model, "iim_model_name", "ViT-B-16")
    check_ctx_init(words, n_ctx, name)
    ids = ctx_init_tokens(name, words).to(model.token_embedding.weight.device)
    return model.token_embedding(ids).float().cpu()


def trainable_projection(model) -> torch.Tensor:
    """A copy of the text tower's ``text_projection`` matrix ``[W, D]`` (the official recipe trains it)."""
    proj = model.text_projection
    if not isinstance(proj, torch.Tensor):
        raise IIMError(f"--train-projection needs a text_projection matrix; {type(model).__name__} has "
                       f"{type(proj).__name__}")
    return proj.detach().clone()


def trained_parameters(encoder: PromptEncoder) -> dict[str, torch.Tensor]:
    """What training updates (and the checkpoint's ``contexts`` holds): ``ctx``, ``neg_ctx`` (if any
    negatives), ``projection`` (with --train-projection)."""
    out = {"ctx": encoder.ctx}
    if encoder.n_neg:
        out["neg_ctx"] = encoder.neg_ctx
    if encoder.projection is not None:
        out["projection"] = encoder.projection
    return out


@torch.no_grad()
def learned_prototypes(encoder: PromptEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """ID local and negative prototypes of the current contexts, float32 on the CPU (no autocast)."""
    with torch.autocast(encoder.ctx.device.type, enabled=False):
        id_f, neg_f = encoder()
    return id_f.float().cpu(), neg_f.float().cpu()


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


def open_run_folder(out: Path, config: dict, fingerprint: dict, *, resume: bool, overwrite: bool, log):
    """The checkpoint to continue from (``--resume``), or None to start; refuses to silently replace a
    run; ``--overwrite`` returns None (:func:`discard_run` deletes the old run later, after every check)."""
    path = out / ck.CHECKPOINT
    if not path.exists():
        if resume:
            log(f"no checkpoint in {out} yet; starting a new run")
        return None
    if resume:
        ckpt = ck.load_checkpoint(path)
        ck.check_compatible(ckpt, config, fingerprint, path=str(path))
        return ckpt
    if overwrite:                           # deleted by discard_run, once every check has passed
        return None
    old = ck.load_checkpoint(path)
    state = "complete" if old.get("complete") else f"stopped after epoch {old.get('epoch')}"
    raise IIMError(f"{out} already holds a training run ({state}); pass --resume to continue it "
                   f"or --overwrite to start again")


def discard_run(out: Path) -> None:
    """``--overwrite``: remove the old checkpoint and its score outputs (after every refusal)."""
    for pattern in (ck.CHECKPOINT,) + SCORE_OUTPUTS:
        for f in out.glob(pattern):
            f.unlink()


def step_losses(encoder, local, labels, cfg: TrainConfig, amp: dict, *extra) -> torch.Tensor:
    """The forward of one step: all C + Cn prompts once, then Eq. 5-11 (another ``cfg.method``: its
    losses, :mod:`iim.train.methods`) -> ``[loss, pos, neg, div]``.
    Labels are not range-checked here (``train`` checks the split's once): no GPU sync mid-step."""
    with torch.autocast(**amp):
        id_f, neg_f = encoder()
    if cfg.method != "iim":
        return methods.method_losses(cfg, id_f, neg_f, local, labels, *extra)
    terms = iim_losses(local, labels, id_f, neg_f, k=cfg.k, logit_scale=cfg.logit_scale,
                       hard_negative_mining=cfg.hard_negative_mining, ood_patches=cfg.ood_patches,
                       denominators=cfg.denominators, check_labels=False)
    div = diversity_loss(id_f, neg_f, diagonal=cfg.div_diagonal)
    loss = total_loss(terms["pos"], terms["neg"], div, lambda_neg=cfg.lambda_neg, lambda_div=cfg.lambda_div)
    return torch.stack([loss, terms["pos"], terms["neg"], div])


def step_function(encoder, cfg: TrainConfig, amp: dict):
    """``forward(local, labels) -> [loss, pos, neg, div]`` for :func:`train_step`; compiled with
    ``torch.compile`` in mode ``cfg.compile`` (encoder and losses as one graph, backward included;
    ``reduce-overhead`` also replays it from CUDA graphs) unless that is ``"off"``."""
    cfg = resolve_recipe(methods.resolve_method(cfg))
    if cfg.logit_scale is None:             # callers outside train() (benchmarks): the model's own
        cfg = dataclasses.replace(cfg, logit_scale=model_logit_scale(encoder.model))

    def forward(local, labels, *extra):
        return step_losses(encoder, local, labels, cfg, amp, *extra)
    if cfg.compile == "off":
        return forward
    # torch's own code warns while compiling; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*_prims_common\.check.* is deprecated", category=FutureWarning)
    return torch.compile(forward, mode=None if cfg.compile == "default" else cfg.compile, dynamic=False)


def train_step(forward, optimizer, *inputs) -> np.ndarray:
    """One SGD step on the contexts; returns ``[loss, pos, neg, div]``. A non-finite loss raises
    ``FloatingPointError`` BEFORE the update, leaving the contexts as they were."""
    values = forward(*inputs)
    optimizer.zero_grad(set_to_none=True)
    values[0].backward()
    values = values.detach().float().cpu().numpy()
    if not np.isfinite(values).all():
        raise FloatingPointError(f"loss={values[0]}, pos={values[1]}, neg={values[2]}, div={values[3]}")
    optimizer.step()
    return values


def restore(state: dict, encoder, optimizer) -> tuple[int, list]:
    """Load a checkpoint's contexts, optimizer and RNG states -> ``(epochs done, history)``."""
    with torch.no_grad():
        encoder.ctx.copy_(state["contexts"]["ctx"])
        encoder.neg_ctx.copy_(state["contexts"]["neg_ctx"])
        if encoder.projection is not None:
            encoder.projection.copy_(state["contexts"]["projection"])
    optimizer.load_state_dict(state["optimizer"])
    ck.set_rng_state(state["rng"])
    return int(state["epoch"]), list(state.get("history", []))


class _StepFailed(Exception):
    """A step failed with an error the caller turns into a one-line message (``hint``)."""


def run_epoch(epoch: int, cfg: TrainConfig, forward, optimizer, feats: TrainFeatures, n: int, bar,
              *, compiled: bool, encoder: PromptEncoder | None = None) -> dict:
    """One epoch: set its lr, draw its views and order, take every step -> the epoch's history entry,
    with :mod:`iim.train.diagnostics` of ``encoder``'s new ID prototypes on this epoch's support views.
    A non-finite loss raises ``FloatingPointError``, a failing compile :class:`_StepFailed`."""
    lr = lr_at_epoch(epoch, lr=cfg.lr, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                     warmup_lr=cfg.warmup_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    view, order = epoch_draw(cfg.seed, epoch, n, feats.split.views)
    feats.start_epoch(view)
    bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
    batches = epoch_batches(order, cfg.batch_size)
    sums, n_steps = np.zeros(4), 0
    for step, inputs in enumerate(x for idx in batches for x in feats.steps(idx)):
        try:
            values = train_step(forward, optimizer, *inputs)
        except FloatingPointError as e:
            raise FloatingPointError(f"step {step + 1} ({e})") from None
        except Exception as e:            # the first step compiles (--compile, flex): say what failed
            if compiled or not _compile_error(e):
                raise
            raise _StepFailed(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}") from e
        compiled, n_steps = True, n_steps + 1
        sums += values
        bar.set_postfix(loss=f"{values[0]:.3f}", pos=f"{values[1]:.3f}", neg=f"{values[2]:.3f}",
                        div=f"{values[3]:.3f}", lr=f"{lr:.2e}", refresh=False)
        bar.update()
    loss_m, pos_m, neg_m, div_m = (float(v) for v in sums / n_steps)
    seconds = time.perf_counter() - t0
    # ID-only diagnostics of the new prototypes on this epoch's support views (no test or OOD image)
    diag = {}
    if encoder is not None:
        id_p, _ = learned_prototypes(encoder)
        k = cfg.k if cfg.k is not None else min(50, feats.split.hw)     # CoOp / LoCoOp have no k of their own
        diag = epoch_diagnostics(id_p.to(feats.device), (feats.batch(i) for i in order.split(256)), k)
    return {"epoch": epoch + 1, "lr": lr, "loss": loss_m, "pos": pos_m, "neg": neg_m, "div": div_m,
            "steps": n_steps, "seconds": seconds, **diag}


def save(path: Path, *, cfg: TrainConfig, config: dict, fingerprint: dict, encoder, optimizer,
         global_protos: torch.Tensor, history: list) -> dict:
    """Write the checkpoint after the last epoch of ``history`` (atomically) and return it."""
    epoch = history[-1]["epoch"]
    id_p, neg_p = learned_prototypes(encoder)
    state = {
        "format": ck.FORMAT, "iim_version": __version__, "config": config,
        "cache_fingerprint": fingerprint, "epoch": epoch, "complete": epoch == cfg.epochs,
        "prototypes": {"global": methods.scoring_global(cfg, global_protos, id_p), "local": id_p, "neg": neg_p},
        "contexts": {"ctx": encoder.ctx.detach().float().cpu(),
                     "neg_ctx": encoder.neg_ctx.detach().float().cpu(),
                     **({} if encoder.projection is None else
                        {"projection": encoder.projection.detach().float().cpu()})},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": epoch, "lr": history[-1]["lr"]},
        "rng": ck.rng_state(), "history": history,
    }
    ck.save_checkpoint(path, state)
    return state


def train(cfg: TrainConfig, **kw) -> dict:
    """Train IIM prompts; returns the final checkpoint dict (also at ``<out>/checkpoint.pt``). The run
    folder is locked meanwhile (``.train.lock``: a second ``iim train`` into it is refused)."""
    out = Path(cfg.out)
    made = not out.exists()
    check_writable(out)                     # creates it; refused here, before any work
    try:
        with folder_lock(out, RUN_LOCK, "iim train"):
            return _train(cfg, **kw)
    finally:
        if made and out.is_dir() and not any(out.iterdir()):   # refused before writing anything
            out.rmdir()


def _train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
           log=log_info) -> dict:
    check(cfg)                              # bad option values: one line, before anything is opened
    cache = open_cache(cfg.cache)
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
    model = None

    def text_model():
        nonlocal model
        if model is None:
            model = load_text_model(cache.manifest, device, cfg.pretrained)
        return model
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
    global_protos = (cache.global_prototypes() if cache.has_global_prototypes()   # damaged: refused
                     else global_prototypes(model, classnames))   # caches from before they were stored

    if overwrite:
        discard_run(out)
    for stale in out.glob(f".{ck.CHECKPOINT}.*.tmp"):     # left by a run killed while saving
        stale.unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    feats = methods.StepInputs(cfg, TrainFeatures(split, device, cfg.features_in, progress=progress), device,
                               global_protos, progress=progress)
    log(f"training {cfg.split} of {cfg.cache} ({split.n} images x {split.views} view(s), {len(classnames)} "
        f"classes; features {WHERE[feats.where]}) on {device} -> {path}")
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    forward = step_function(encoder, cfg, amp)
    n_steps = len(epoch_batches(torch.arange(split.n), cfg.batch_size)) * methods.steps_per_batch(cfg)
    bar = tqdm(total=cfg.epochs * n_steps, initial=start * n_steps, unit="step",
               disable=None if progress else True,  # None: no bar when stderr is not a terminal
               dynamic_ncols=True, desc=f"epoch {start + 1}/{cfg.epochs}")
    for epoch in range(start, cfg.epochs):
        try:
            entry = run_epoch(epoch, cfg, forward, optimizer, feats, split.n, bar, compiled=epoch > start,
                              encoder=encoder)
        except FloatingPointError as e:
            bar.close()
            kept = (f"the last good checkpoint (epoch {state['epoch']}) is kept in {path}" if state
                    else "no checkpoint was written")
            raise IIMError(f"non-finite loss at epoch {epoch + 1}, {e}; training stopped and {kept}; "
                           f"try a smaller --lr") from None
        except _StepFailed as e:
            bar.close()
            hint = "without --compile" if cfg.compile != "off" else "with --attention auto"
            raise IIMError(f"torch.compile failed ({e}); train {hint}") from e.__cause__
        history.append(entry)
        state = save(path, cfg=cfg, config=config, fingerprint=fingerprint, encoder=encoder,
                     optimizer=optimizer, global_protos=global_protos, history=history)
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {entry['loss']:.4f} (pos {entry['pos']:.4f}, neg "
            f"{entry['neg']:.4f}, div {entry['div']:.4f})  lr {entry['lr']:.2e}  {format_diagnostics(entry)}"
            f"{'  COLLAPSED' if entry['collapsed'] else ''}  {entry['seconds']:.1f}s  -> {path}")
    bar.close()
    for w in collapse_warnings(state):
        log(f"warning: {w}")
    return state
