"""A run's checkpoint written from its encoder and optimizer after an epoch, and read back into them
on ``--resume`` (the file format: :mod:`iim.train.checkpoint`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..._version import __version__
from .. import checkpoint as ck
from .. import methods
from ..config import TrainConfig
from .contexts import learned_prototypes


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
