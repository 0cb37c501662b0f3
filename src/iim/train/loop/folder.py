"""The run folder: held by one ``iim train`` at a time, the checkpoint to continue from, and what
``--overwrite`` removes."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ...atomic import check_writable
from ...errors import IIMError
from ...lock import folder_lock
from .. import checkpoint as ck

RUN_LOCK = ".train.lock"                  # held while a process trains into the run folder
SCORE_OUTPUTS = ("results.json", "results.csv", "scores_*.npz")   # removed by --overwrite


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
