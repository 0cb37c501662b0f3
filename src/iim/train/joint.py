"""Joint training: several runs that share a train split, epochs and batch size trained in ONE process,
ONE packed prompt-encoder pass per step (issue 12).

    states = train_jointly([cfg_a, cfg_b, cfg_c])    # each: its final checkpoint dict, or the exception

Each step encodes the prompts of every run at once (:func:`iim.text.encode_packed`: their packed rows
back to back, the token-wise work of each layer as one call, attention per run, batched over runs with
the same packing plan), computes each run's losses on its OWN batch (its own seed's
:func:`~iim.train.loop.epoch_draw`) with its own k, lambdas, negatives and recipe switches, and takes
ONE backward through the sum of the losses. The runs' parameters are disjoint and every operation of
the packed pass is row-wise or within one run's rows, so each run gets exactly its own gradient; each
has its own SGD (lr schedule, momentum, weight decay). The epoch loop, checkpoints, epoch lines and run
folders are those of ``iim train`` (:func:`iim.train.loop.train_epochs`), so each run ends where its
separate ``iim train`` ends (each history's ``seconds``: the joint epoch's wall time). A run whose
loss turns non-finite stops (its last good checkpoint kept,
``iim train``'s message) and the others go on.

Every method trains jointly (the runs' steps per epoch must agree: same split size and batch size; one
step per batch for IIM, CoOp and LoCoOp, ``pos_views`` for Local-Prompt: :func:`joint_key`). ``--compile`` and ``--attention flex`` runs train on their own: the
compiled graph and FlexAttention's block mask are per encoder.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..cache.names import parse_train_split
from ..log import info as log_info
from ..models import model_config
from ..text import encode_packed
from .config import RECIPES, TrainConfig, resolve_method
from .loop import Resources, prepare, prompt_losses, run_folder, train_epochs

ACTIVATION_FACTOR = 24        # saved activations per token, layer and width unit (ln, qkv, attention, MLP x4 ...)


def joint_key(cfg: TrainConfig):
    """Runs with equal keys can train together: same cache, train split shots and views (the split's
    seed may differ: each split's features are loaded once), epochs, batch size and optimiser steps per
    batch (so the same steps: IIM, CoOp and LoCoOp take one per batch and mix freely), same device and
    execution options. None: the run trains alone (``--compile``, ``--attention flex``)."""
    if cfg.compile != "off" or cfg.attention == "flex":
        return None
    c = resolve_method(cfg)
    split = parse_train_split(c.split)
    steps = ("localprompt", c.pos_views) if c.method == "localprompt" else 1    # optimiser steps per batch
    return (str(Path(c.cache).resolve()), (split.shots, split.views) if split else c.split, steps, c.epochs,
            c.batch_size, c.device, c.attention, c.features_in, c.bf16, c.pretrained)


def packed_forward(amp: dict):
    """``forward(runs, inputs)`` for :func:`~iim.train.loop.train_epochs`: one packed encoder pass over
    every run's prompts, then each run's :func:`~iim.train.loop.prompt_losses` on its own inputs."""
    def forward(runs, inputs):
        with torch.autocast(**amp):
            feats = encode_packed([r.encoder for r in runs])
        return [prompt_losses(r.cfg, id_f, neg_f, *x) for r, (id_f, neg_f), x in zip(runs, feats, inputs)]
    return forward


def train_jointly(cfgs: list[TrainConfig], *, resume: bool = True, progress: bool = True, log=log_info) -> list:
    """Train the runs ``cfgs`` (:func:`joint_key` equal) together -> per run its final checkpoint dict, or
    the exception that stopped it (a refusal, a non-finite loss; an error of the shared pass, such as out
    of memory, stops every run). ``log``: one callable for every run's lines, or a list of one per run.
    Each run folder is locked and written exactly as ``iim train`` does; ``resume`` continues each run
    from its own checkpoint (runs at different epochs: the one behind trains alone until it catches up)."""
    logs = list(log) if isinstance(log, (list, tuple)) else [log] * len(cfgs)
    keys = {joint_key(c) for c in cfgs}
    if len(cfgs) > 1 and (None in keys or len(keys) > 1):
        raise ValueError("train_jointly: these runs cannot train together (see joint_key)")
    results: list = [None] * len(cfgs)
    runs = []
    shared = Resources(progress=progress)
    with contextlib.ExitStack() as folders:
        for i, cfg in enumerate(cfgs):
            try:
                folders.enter_context(run_folder(Path(cfg.out)))
                run = prepare(cfg, shared, resume=resume, log=logs[i])
            except Exception as e:         # noqa: BLE001  (a refused run must not stop the others)
                results[i] = e
                continue
            if isinstance(run, dict):        # complete already
                results[i] = run
            else:
                runs.append((i, run))
        parts: dict = {}                     # the same steps per epoch (a split of another size: apart)
        for _, r in runs:
            parts.setdefault((r.n_steps, r.cfg.epochs), []).append(r)
        for part in parts.values():
            try:
                train_epochs(part, packed_forward(part[0].amp), progress=progress)
            except Exception as e:         # noqa: BLE001  (the shared pass failed: every run stops)
                for r in part:
                    r.error = r.error or e
        for i, r in runs:
            results[i] = r.error if r.error is not None else r.state
    return results


def run_bytes(cfg: TrainConfig, cache) -> int:
    """:func:`point_bytes` of run ``cfg`` on ``cache`` (the text tower's size from its model config; the
    prompts' token count estimated from the class names: no model is loaded)."""
    c = resolve_method(cfg)
    text = (model_config(cache.manifest.get("model") or "ViT-B-16") or {}).get("text_cfg", {})
    split = cache.split(c.split)
    names = cache.classnames
    suffix = sum(2 * len(str(n).split()) + 2 for n in names)           # name tokens, ".", EOT
    class_specific = bool(c.class_specific if c.class_specific is not None else
                          RECIPES[c.recipe]["class_specific"] if c.method == "iim" else False)
    heads = (len(names) if class_specific else 1) * (1 + c.n_ctx)
    tokens = heads + suffix + c.n_neg * (c.n_ctx + 3)
    return point_bytes(n_tokens=tokens, width=text.get("width", 512), layers=text.get("layers", 12),
                       batch=c.batch_size * (c.pos_views or 1), hw=split.hw, dim=split.dim,
                       prompts=len(names) + c.n_neg)


def point_bytes(*, n_tokens: int, width: int, layers: int, batch: int, hw: int, dim: int, prompts: int,
                element: int = 4) -> int:
    """A rough upper estimate of one run's training memory in a packed step: the encoder's saved
    activations (``ACTIVATION_FACTOR x n_tokens x width`` per layer) and its losses' batch x patches x
    prompts similarity tensors (a few float32 copies for the sort and softmax)."""
    return ACTIVATION_FACTOR * n_tokens * width * layers * element + 6 * batch * hw * (prompts + dim) * 4


def auto_pack(per_point: int, device: torch.device, *, fraction: float | None = None) -> int:
    """How many runs of ``per_point`` bytes pack into one process: a fraction of the free GPU memory
    (``torch.cuda.mem_get_info``; half) or of the available RAM (a quarter), at least 1."""
    from .loop.feed import available_ram
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        budget = free * (0.5 if fraction is None else fraction)
    else:
        budget = available_ram() * (0.25 if fraction is None else fraction)
    return max(1, int(budget // max(per_point, 1)))
