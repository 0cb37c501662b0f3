"""``train(cfg)``: one run from its first (or next) epoch to its last, in its locked run folder."""
from __future__ import annotations

from pathlib import Path

from ...log import info as log_info
from ..config import TrainConfig
from .epochs import train_epochs
from .folder import run_folder
from .prepare import prepare
from .resources import Resources
from .steps import step_function


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
