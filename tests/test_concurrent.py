"""Readers beside writers (issue 26): `iim score` / `iim predict` on a run while `iim train --resume` saves a
new checkpoint into it, and on a cache while `iim extract` adds a split, give the old consistent state or a
clear refusal, never a mix. The writer's step is injected at the worst moment (monkeypatched into the
reader, after it has loaded what it reads), as a slow concurrent writer would land it.

Why it holds: a checkpoint, config.json, results.json and the cache manifest are each replaced whole
(temporary file + os.replace), so a reader that opened one sees all of it; score loads the checkpoint once
and records the epoch it scored; predict takes the threshold from scores_test.npz only when results.json
names the checkpoint's epoch and the scores are newer than the checkpoint; a split being extracted is
incomplete until its last chunk, and score refuses an incomplete OOD set or scores the sets it listed."""
import json
import os

import numpy as np
import pytest
import torch

import iim.score.run as score_run
from helpers import make_fake_run, make_random_cache
from iim import Detector
from test_score_cli import run_cli

SCORE = ["--k", "5", "--no-plots", "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _next_epoch(run, to):
    """The checkpoint ``iim train --resume`` would save one epoch later: moved prototypes, epoch + 1."""
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    ckpt["epoch"] += 1
    ckpt["complete"] = ckpt["epoch"] == ckpt["config"]["epochs"]
    ckpt["prototypes"]["local"] = ckpt["prototypes"]["local"] + 0.3
    torch.save(ckpt, to)
    return to


def _metrics(run):
    res = json.loads((run / "results.json").read_text())
    return res["epoch"], res["metrics"]


def _saves_during_scoring(monkeypatch, run, new):
    """The trainer's atomic save lands while score streams its first split."""
    real = score_run.stream_split
    calls = []

    def stream(*a, **kw):
        if not calls:
            os.replace(new, run / "checkpoint.pt")
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(score_run, "stream_split", stream)


def test_score_while_training_saves_an_epoch_scores_the_checkpoint_it_loaded(tmp_path, capsys, monkeypatch):
    cache = make_random_cache(tmp_path / "cache")
    run = make_fake_run(tmp_path / "run", cache, epoch=1, epochs=3)
    ref = make_fake_run(tmp_path / "ref", cache, epoch=1, epochs=3)          # the same checkpoint, alone
    code, _, err = run_cli(capsys, "score", "--run", ref, *SCORE)
    assert code == 0, err
    new = _next_epoch(run, tmp_path / "epoch2.pt")
    _saves_during_scoring(monkeypatch, run, new)
    code, _, err = run_cli(capsys, "score", "--run", run, *SCORE)
    assert code == 0, err
    assert _metrics(run) == _metrics(ref) and _metrics(run)[0] == 1      # the old epoch, whole
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 2


def test_predict_after_a_newer_checkpoint_does_not_take_the_old_threshold(tmp_path, capsys, monkeypatch):
    cache = make_random_cache(tmp_path / "cache")
    run = make_fake_run(tmp_path / "run", cache, epoch=1, epochs=3)
    code, _, err = run_cli(capsys, "score", "--run", run, *SCORE)             # results.json, scores_test.npz
    assert code == 0, err
    os.replace(_next_epoch(run, tmp_path / "epoch2.pt"), run / "checkpoint.pt")   # training went on
    det = Detector.from_run(run, device="cpu")
    assert "scored now" in det.threshold_source                                 # not the epoch-1 scores
    fresh = make_fake_run(tmp_path / "fresh", cache, epoch=1, epochs=3)
    os.replace(_next_epoch(fresh, tmp_path / "e2.pt"), fresh / "checkpoint.pt")
    alone = Detector.from_run(fresh, device="cpu", k=det.k, alpha=det.alpha, T=det.T)
    assert det.threshold == alone.threshold


def test_score_while_extract_adds_an_ood_split(tmp_path, capsys, monkeypatch):
    cache = make_random_cache(tmp_path / "cache", ood={"far": 20})
    run = make_fake_run(tmp_path / "run", cache)
    ref = make_fake_run(tmp_path / "ref", cache)
    code, _, err = run_cli(capsys, "score", "--run", ref, *SCORE)
    assert code == 0, err

    # extraction begins ood_new while score runs: the sets score listed are scored, nothing else
    real = score_run.stream_split
    started = []

    def stream(*a, **kw):
        if not started:
            w = cache.writer("ood_new", n=6, views=1, hw=64, dim=32, labels=[-1] * 6,
                             paths=[f"n{i}.png" for i in range(6)], chunk_rows=2)
            w.append(np.zeros((2, 1, 32), np.float16), np.zeros((2, 1, 64, 32), np.float16))
            started.append(w)
        return real(*a, **kw)
    monkeypatch.setattr(score_run, "stream_split", stream)
    code, out, err = run_cli(capsys, "score", "--run", run, *SCORE)
    assert code == 0, err
    res = json.loads((run / "results.json").read_text())
    assert res["ood_sets"] == {"far": 20} and res["left_out"] == [] and "left out" not in out
    assert res["metrics"] == json.loads((ref / "results.json").read_text())["metrics"]

    # scored again while ood_new is still being written: a clear refusal naming it, nothing rewritten
    monkeypatch.setattr(score_run, "stream_split", real)
    before = (run / "results.json").read_bytes()
    code, _, err = run_cli(capsys, "score", "--run", run, *SCORE)
    assert code == 2 and "ood_new" in err and "incomplete" in err and "--ood far" in err, err
    assert (run / "results.json").read_bytes() == before
