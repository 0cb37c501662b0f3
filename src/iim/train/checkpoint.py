"""The run folder's ``checkpoint.pt``: atomic save, safe load, and the checks before ``--resume``.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``):

    config             every training option + cache, split, model, weights, classnames, benchmark
    cache_fingerprint  iim.cache.manifest_key(manifest) of the cache it was trained on
    epoch, complete    last completed epoch; True only after the last one
    prototypes         {"global" [C, D], "local" [C, D], "neg" [Cn, D]} float32, from the saved contexts
    contexts           {"ctx", "neg_ctx"} the learnable context vectors
    optimizer          SGD state (momentum buffers); scheduler {"last_epoch", "lr"} (the schedule is a
                       pure function of the epoch, see loop.lr_at_epoch)
    rng                torch / numpy / python RNG states; history: one dict of loss means per epoch
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..cache.fingerprint import compare
from ..atomic import atomic_write
from ..errors import IIMError
from .config import RESULT_KEYS

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def save_checkpoint(path, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader (or a
    crash) sees the previous checkpoint or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path, *, need=("contexts",)) -> dict:
    """Load a checkpoint (file or run folder) onto the CPU; a missing or unreadable file, or one without
    ``config`` and the entries in ``need`` (scoring needs only ``"prototypes"``), is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise IIMError(f"no checkpoint at {path} (train first: iim train --cache ...)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's message is advice about weights_only, which does not apply to a damaged file
        raise IIMError(f"{path} is not a readable iim checkpoint ({type(e).__name__}: truncated, damaged or "
                       f"not written by iim); train again with --overwrite, or copy the file again") from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in ("config", *need)):
        raise IIMError(f"{path} is not an iim training checkpoint (needs {', '.join(('config', *need))})")
    return ckpt


def check_compatible(ckpt: dict, config: dict, fingerprint: dict, *, path="checkpoint") -> None:
    """Refuse to resume ``ckpt`` on another cache (model, weights, classes, features) or with options
    that change the result (:data:`RESULT_KEYS`)."""
    diff = compare(ckpt.get("cache_fingerprint") or {}, fingerprint)
    if diff:
        d = diff[0]
        if d.key == "classnames":
            raise IIMError(f"{path} was trained on other classes than the cache holds ({d}); "
                           f"use another --out folder")
        raise IIMError(f"{path} was trained on a cache with {d.key}={d.a!r}, but this cache "
                       f"has {d.key}={d.b!r}; use another --out folder")
    diff = compare(ckpt["config"], config, RESULT_KEYS)
    if diff:
        d = diff[0]
        raise IIMError(f"{path} was trained with --{d.key.replace('_', '-')} {d.a!r}, not {d.b!r}; "
                       f"resume with the same options, or use --overwrite / another --out folder")


def rng_state() -> dict:
    """Every global RNG, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
