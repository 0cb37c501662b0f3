"""The IIM training loop: text-side prompts against cached patch features (SPEC §3).

The image encoder never runs. Each epoch draws ONE of the V cached augmented views per support image
(``torch.Generator`` seeded from ``(seed, epoch)``), shuffles, and takes batches of ``batch_size``
images (the last incomplete batch is dropped when there is at least one full batch, as Dassl's
train loader does). Every step encodes all C + Cn prompts once with the shared-prefix
:class:`~iim.text.PromptEncoder`, computes Eq. 5-11 and takes an SGD step on the contexts only. The
same epoch loop (:func:`train_epochs`) trains several runs together (:mod:`iim.train.joint`).

Learning rate (CoOp/Dassl ``ConstantWarmupScheduler`` + ``CosineAnnealingLR(T_max=epochs)``, stepped
per epoch): epochs ``0 .. warmup-1`` use ``warmup_lr``; epoch ``e >= warmup`` uses
``lr * (1 + cos(pi * (e - warmup) / epochs)) / 2`` (so the first cosine epoch uses the full lr).

    cfg = TrainConfig(cache="cache/in1k", split="train_k16_s1", out="runs/in1k-k16-s1-iim")
    ckpt = train(cfg)                 # checkpoint.pt written atomically after every epoch
    ckpt = train(cfg, resume=True)    # continue an interrupted run from its last checkpoint
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..cache import manifest_key, open_cache
from ..cache.location import record, redact
from ..atomic import atomic_write_text, check_writable
from ..data.splits import split_crop_scale
from ..errors import IIMError
from ..log import info as log_info
from ..lock import folder_lock
from ..models import create_model, is_local_checkpoint, model_logit_scale, resolve_device, weights_id
from ..options import check
from ..text import CTX_INIT_STD, PromptEncoder, encode_packed, global_prototypes, model_tokenizer
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
    tokens = model_tokenizer(model_name)([words])[0]
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


def learned_prototypes(encoder: PromptEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """ID local and negative prototypes of the current contexts, float32 on the CPU (no autocast)."""
    return prototypes_of([encoder])[0]


@torch.no_grad()
def prototypes_of(encoders: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`learned_prototypes` of several encoders of one model in one packed pass."""
    with torch.autocast(encoders[0].ctx.device.type, enabled=False):
        feats = encode_packed(encoders)
    return [(i.float().cpu(), n.float().cpu()) for i, n in feats]


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


def prompt_losses(cfg: TrainConfig, id_f, neg_f, local, labels, *extra) -> torch.Tensor:
    """Eq. 5-11 of one step from the prompts' features (another ``cfg.method``: its losses,
    :mod:`iim.train.methods`) -> ``[loss, pos, neg, div]``. Labels are not range-checked here
    (``train`` checks the split's once): no GPU sync mid-step."""
    if cfg.method != "iim":
        return methods.method_losses(cfg, id_f, neg_f, local, labels, *extra)
    terms = iim_losses(local, labels, id_f, neg_f, k=cfg.k, logit_scale=cfg.logit_scale,
                       hard_negative_mining=cfg.hard_negative_mining, ood_patches=cfg.ood_patches,
                       denominators=cfg.denominators, check_labels=False)
    div = diversity_loss(id_f, neg_f, diagonal=cfg.div_diagonal)
    loss = total_loss(terms["pos"], terms["neg"], div, lambda_neg=cfg.lambda_neg, lambda_div=cfg.lambda_div)
    return torch.stack([loss, terms["pos"], terms["neg"], div])


def step_losses(encoder, local, labels, cfg: TrainConfig, amp: dict, *extra) -> torch.Tensor:
    """The forward of one step: all C + Cn prompts once, then :func:`prompt_losses`."""
    with torch.autocast(**amp):
        id_f, neg_f = encoder()
    return prompt_losses(cfg, id_f, neg_f, local, labels, *extra)


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


def sgd_steps(values: list, optimizers: list) -> tuple[np.ndarray, np.ndarray]:
    """One SGD step of each run from its ``[loss, pos, neg, div]``: ONE backward through the sum of the
    losses (the runs' parameters are disjoint: each gets exactly its own gradient), then each run's own
    update, skipped where a value is non-finite -> ``(values [P, 4], finite [P])``."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    (values[0][0] if len(values) == 1 else torch.stack([v[0] for v in values]).sum()).backward()
    out = torch.stack([v.detach().float() for v in values]).cpu().numpy()      # one device sync
    finite = np.isfinite(out).all(axis=1)
    for opt, ok in zip(optimizers, finite):
        if ok:
            opt.step()
    return out, finite


def _loss_text(values) -> str:
    return f"loss={values[0]}, pos={values[1]}, neg={values[2]}, div={values[3]}"


def train_step(forward, optimizer, *inputs) -> np.ndarray:
    """One SGD step on the contexts; returns ``[loss, pos, neg, div]``. A non-finite loss raises
    ``FloatingPointError`` BEFORE the update, leaving the contexts as they were."""
    values, finite = sgd_steps([forward(*inputs)], [optimizer])
    if not finite[0]:
        raise FloatingPointError(_loss_text(values[0]))
    return values[0]


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


class Resources:
    """What the runs trained in one process share, each made once: the opened caches, each cache's
    text model (per device) and global prototypes, each train split's features (:class:`TrainFeatures`;
    every run reads them through its own shallow copy, which holds its own epoch draw)."""

    def __init__(self, *, progress: bool = True):
        self.progress, self._made = progress, {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def cache(self, path):
        return self._once(("cache", str(Path(path).resolve())), lambda: open_cache(path))

    def model(self, cache, device, pretrained):
        return self._once(("model", str(cache.root), str(device), pretrained),
                          lambda: load_text_model(cache.manifest, device, pretrained))

    def global_prototypes(self, cache, model) -> torch.Tensor:
        return self._once(("global", str(cache.root), id(model)), lambda: (
            cache.global_prototypes() if cache.has_global_prototypes()      # damaged: refused
            else global_prototypes(model, cache.classnames)))            # caches from before they were stored

    def features(self, cache, split, device, where: str) -> TrainFeatures:
        key = ("feats", str(cache.root), split.name, str(device), where)
        return self._once(key, lambda: TrainFeatures(split, device, where, progress=self.progress))


def _steps(feats, batches):
    """The inputs of every optimiser step of ``batches``, fetched as they are taken."""
    for idx in batches:
        yield from feats.steps(idx)


def run_epoch(epoch: int, runs: list[Run], forward, bar, *, compiled: bool) -> list:
    """One epoch of every run in ``runs`` (same split, batch size, steps): each its own lr, its own
    seed's views and order (:func:`epoch_draw`), then every step of all runs together
    (``forward(runs, inputs) -> [[loss, pos, neg, div]]``, :func:`sgd_steps`) -> each run's history
    entry, with :mod:`iim.train.diagnostics` of its new ID prototypes on this epoch's support views,
    or the ``FloatingPointError`` that stopped it (before its update). A failing compile raises
    :class:`_StepFailed`."""
    orders, steps = [], []
    for r in runs:
        c = r.cfg
        lr = lr_at_epoch(epoch, lr=c.lr, epochs=c.epochs, warmup_epochs=c.warmup_epochs, warmup_lr=c.warmup_lr)
        for group in r.optimizer.param_groups:
            group["lr"] = lr
        view, order = epoch_draw(c.seed, epoch, r.feats.split.n, r.feats.split.views)
        r.feats.start_epoch(view)
        orders.append(order)
        steps.append(_steps(r.feats, epoch_batches(order, c.batch_size)))
    t0 = time.perf_counter()
    bar.set_description(f"epoch {epoch + 1}/{runs[0].cfg.epochs}")
    sums, n_steps = np.zeros((len(runs), 4)), 0
    stopped: list = [None] * len(runs)
    for step, inputs in enumerate(zip(*steps)):
        live = [i for i, e in enumerate(stopped) if e is None]
        if not live:
            break
        try:
            values, finite = sgd_steps(forward([runs[i] for i in live], [inputs[i] for i in live]),
                                       [runs[i].optimizer for i in live])
        except Exception as e:            # the first step compiles (--compile, flex): say what failed
            if compiled or not _compile_error(e):
                raise
            raise _StepFailed(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}") from e
        compiled, n_steps = True, n_steps + 1
        for i, v, ok in zip(live, values, finite):
            sums[i] += v
            if not ok:
                stopped[i] = FloatingPointError(f"step {step + 1} ({_loss_text(v)})")
        v = values[0]
        bar.set_postfix(loss=f"{v[0]:.3f}", pos=f"{v[1]:.3f}", neg=f"{v[2]:.3f}", div=f"{v[3]:.3f}",
                        lr=f"{runs[live[0]].optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        bar.update()
    seconds = time.perf_counter() - t0
    entries = []
    done = [r for r, err in zip(runs, stopped) if err is None]
    for r, protos in zip(done, prototypes_of([r.encoder for r in done]) if done else []):
        r.protos = protos                 # the new prototypes, for the checkpoint
    for r, order, total, err in zip(runs, orders, sums, stopped):
        if err is not None:
            entries.append(err)
            continue
        # ID-only diagnostics of the new prototypes on this epoch's support views (no test or OOD image)
        id_p = r.protos[0]
        k = r.cfg.k if r.cfg.k is not None else min(50, r.feats.split.hw)   # CoOp / LoCoOp have no k of their own
        diag = epoch_diagnostics(id_p.to(r.feats.device), (r.feats.batch(i) for i in order.split(256)), k,
                                 start_proto=r.global_protos.to(r.feats.device))
        loss_m, pos_m, neg_m, div_m = (float(v) for v in total / n_steps)
        entries.append({"epoch": epoch + 1, "lr": r.optimizer.param_groups[0]["lr"], "loss": loss_m,
                        "pos": pos_m, "neg": neg_m, "div": div_m, "steps": n_steps, "seconds": seconds, **diag})
    return entries


def train_epochs(runs: list[Run], forward, *, progress: bool = True) -> None:
    """THE epoch loop, of ``iim train`` (one run) and of joint training (several, same epochs and
    steps): every remaining epoch of every run (a run resumed further along joins at its epoch), a
    checkpoint and an epoch line per run after each. A run whose loss turns non-finite stops with its
    last good checkpoint kept (``run.error``); the others go on."""
    first, epochs, n_steps = min(r.start for r in runs), runs[0].cfg.epochs, runs[0].n_steps
    bar = tqdm(total=epochs * n_steps, initial=first * n_steps, unit="step",
               disable=None if progress else True,  # None: no bar when stderr is not a terminal
               dynamic_ncols=True, desc=f"epoch {first + 1}/{epochs}")
    try:
        for epoch in range(first, epochs):
            live = [r for r in runs if r.error is None and r.start <= epoch]
            if not live:
                break
            try:
                entries = run_epoch(epoch, live, forward, bar, compiled=epoch > first)
            except _StepFailed as e:
                hint = "without --compile" if live[0].cfg.compile != "off" else "with --attention auto"
                raise IIMError(f"torch.compile failed ({e}); train {hint}") from e.__cause__
            for r, entry in zip(live, entries):
                if isinstance(entry, FloatingPointError):
                    kept = (f"the last good checkpoint (epoch {r.state['epoch']}) is kept in {r.path}" if r.state
                            else "no checkpoint was written")
                    r.error = IIMError(f"non-finite loss at epoch {epoch + 1}, {entry}; training stopped and "
                                       f"{kept}; try a smaller --lr")
                    continue
                r.history.append(entry)
                r.state = save(r.path, cfg=r.cfg, config=r.config, fingerprint=r.fingerprint, encoder=r.encoder,
                               optimizer=r.optimizer, global_protos=r.global_protos, history=r.history,
                               protos=r.protos)
                r.log(f"epoch {epoch + 1}/{epochs}  loss {entry['loss']:.4f} (pos {entry['pos']:.4f}, neg "
                      f"{entry['neg']:.4f}, div {entry['div']:.4f})  lr {entry['lr']:.2e}  "
                      f"{format_diagnostics(entry)}{'  COLLAPSED' if entry['collapsed'] else ''}  "
                      f"{entry['seconds']:.1f}s  -> {r.path}")
    finally:
        bar.close()
    for r in runs:
        if r.error is None:
            for w in collapse_warnings(r.state):
                r.log(f"warning: {w}")


def save(path: Path, *, cfg: TrainConfig, config: dict, fingerprint: dict, encoder, optimizer,
         global_protos: torch.Tensor, history: list, protos: tuple | None = None) -> dict:
    """Write the checkpoint after the last epoch of ``history`` (atomically) and return it; ``protos``:
    the encoder's :func:`learned_prototypes`, when already computed."""
    epoch = history[-1]["epoch"]
    id_p, neg_p = protos if protos is not None else learned_prototypes(encoder)
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


@contextlib.contextmanager
def run_folder(out: Path):
    """Hold the run folder ``out`` (``.train.lock``: a second ``iim train`` into it is refused); a
    folder this call created and nothing was written to is removed again."""
    made = not out.exists()
    check_writable(out)                     # creates it; refused here, before any work
    try:
        with folder_lock(out, RUN_LOCK, "iim train"):
            yield out
    finally:
        if made and out.is_dir() and not any(out.iterdir()):   # refused before writing anything
            out.rmdir()


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log=log_info) -> dict:
    """Train IIM prompts; returns the final checkpoint dict (also at ``<out>/checkpoint.pt``). The run
    folder is locked meanwhile (``.train.lock``: a second ``iim train`` into it is refused)."""
    with run_folder(Path(cfg.out)):
        run = prepare(cfg, Resources(progress=progress), resume=resume, overwrite=overwrite, log=log)
        if isinstance(run, dict):
            return run
        fn = step_function(run.encoder, run.cfg, run.amp)
        train_epochs([run], lambda runs, inputs: [fn(*inputs[0])], progress=progress)
        if run.error is not None:
            raise run.error from None
        return run.state


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
        return shared.model(cache, device, cfg.pretrained)
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
