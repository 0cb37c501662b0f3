"""What ``iim report`` trusts in a run folder: ``results.json`` as ``iim score`` wrote it (a checksum of its
content, :func:`seal` / :func:`check_seal`) and a ``config.json`` that agrees with the run's checkpoint
(:func:`check_run_config`).

    report.write_json(out / "results.json", seal(results))     # adds "sha256"
    check_seal(json.loads(path.read_text()), path)              # IIMError when edited since
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import IIMError

SEAL = "sha256"
IDENTITY = ("model", "weights", "benchmark", "classnames")    # besides the training result keys


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(results: dict) -> dict:
    """``results`` as JSON stores it, with ``"sha256"``: the digest of everything else (sorted keys)."""
    body = json.loads(json.dumps(results, default=str))
    body.pop(SEAL, None)
    return dict(body, **{SEAL: _digest(body)})


def check_seal(results: dict, path) -> None:
    """A ``results.json`` changed after ``iim score`` wrote it is refused; files from before the
    checksum (no ``"sha256"``) are accepted."""
    if SEAL not in results:
        return
    body = {k: v for k, v in results.items() if k != SEAL}
    if _digest(body) != results[SEAL]:
        raise IIMError(f"{path} was changed after 'iim score' wrote it (its sha256 no longer matches): the "
                       f"numbers may not be the run's; score the run again (iim score --run {Path(path).parent})")


def check_run_config(run_dir, ckpt_config: dict) -> None:
    """``config.json`` of a run folder must agree with its checkpoint on what changes the result (the
    training options, model, weights, classes): otherwise it was edited by hand or ``checkpoint.pt``
    comes from another run, and the folder does not say what its checkpoint is."""
    from ..cache.fingerprint import compare
    from ..train.config import RESULT_KEYS
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return
    try:
        written = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IIMError(f"{path} cannot be read ({e}); restore it or train the run again") from None
    recorded = json.loads(json.dumps(ckpt_config, default=str))          # as config.json holds it
    diff = compare(written, recorded, (*RESULT_KEYS, *IDENTITY), missing_ok=True)
    if diff:
        raise IIMError(f"{path} and {Path(run_dir) / 'checkpoint.pt'} disagree in {diff[0]} (config.json first): "
                       f"config.json was edited, or the checkpoint comes from another run; iim goes by the "
                       f"checkpoint, so restore config.json or train the run again")
