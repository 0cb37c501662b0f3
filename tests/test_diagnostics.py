"""Training diagnostics (ID data only) and the collapse warning, against brute force."""
import numpy as np
import pytest
import torch

from helpers import make_fake_run, make_random_cache
from iim.score.pipeline import prepare_run
from iim.train.diagnostics import (COLLAPSE_COSINE, collapse_warnings, epoch_diagnostics, local_predictions,
                                   prototype_cosines)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_prototype_cosines_and_local_predictions_match_brute_force():
    g = torch.Generator().manual_seed(0)
    protos, local = torch.randn(5, 8, generator=g), torch.randn(7, 12, 8, generator=g)
    p = unit(protos.double().numpy())
    pairs = [p[i] @ p[j] for i in range(5) for j in range(5) if i != j]
    mean, top = prototype_cosines(protos)
    assert mean == pytest.approx(np.mean(pairs), abs=1e-6) and top == pytest.approx(max(pairs), abs=1e-6)
    k = 3
    for b in range(7):
        e = np.exp(unit(local[b].double().numpy()) @ p.T)          # [HW, C], T = 1
        p_star = e / e.sum(1, keepdims=True)
        want = np.argmax(np.sort(p_star, axis=0)[::-1][:k].mean(0))
        assert int(local_predictions(local[b:b + 1], protos, k)[0]) == want


def test_collapse_is_detected_and_the_warning_names_causes():
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(4, 8, generator=g)
    labels = torch.arange(4).repeat(10)
    local = protos[labels][:, None].repeat(1, 6, 1) + 0.1 * torch.randn(40, 6, 8, generator=g)
    good = epoch_diagnostics(protos, [(local, labels)], k=2)
    assert good["local_acc"] == 100.0 and not good["collapsed"] and good["chance"] == 25.0
    one = protos[:1].repeat(4, 1) + 1e-4 * torch.randn(4, 8, generator=g)
    bad = epoch_diagnostics(one, [(local, labels)], k=2)
    assert bad["proto_cos_max"] > COLLAPSE_COSINE and bad["collapsed"]
    assert collapse_warnings({"history": [dict(good, epoch=3)]}) == []
    [w] = collapse_warnings({"history": [dict(bad, epoch=3)], "config": {"logit_scale": 100.0, "lr": 0.1}})
    assert "collapsed at epoch 3" in w and "--logit-scale 100.0" in w and "--lr 0.1" in w and "--crop-scale" in w


def test_a_run_below_its_hand_written_start_is_told():
    g = torch.Generator().manual_seed(2)
    start = torch.randn(4, 8, generator=g)                         # the hand-written prototypes
    labels = torch.arange(4).repeat(10)
    local = start[labels][:, None].repeat(1, 6, 1) + 0.1 * torch.randn(40, 6, 8, generator=g)
    worse = start[torch.tensor([1, 0, 2, 3])]                      # apart (not collapsed), half wrong
    d = epoch_diagnostics(worse, [(local, labels)], k=2, start_proto=start)
    want0 = 100.0 * float((local_predictions(local, start, 2) == labels).float().mean())
    assert d["start_local_acc"] == pytest.approx(want0) and d["start_local_acc"] == 100.0
    assert d["local_acc"] == 50.0 and d["below_start"] and not d["collapsed"]
    mean0, top0 = prototype_cosines(start)
    assert (d["start_cos_mean"], d["start_cos_max"]) == (pytest.approx(mean0), pytest.approx(top0))
    [w] = collapse_warnings({"history": [dict(d, epoch=5)]})
    assert "below their hand-written start at epoch 5" in w and "50.0% against 100.0%" in w
    same = epoch_diagnostics(start, [(local, labels)], k=2, start_proto=start)
    assert not same["below_start"] and collapse_warnings({"history": [dict(same, epoch=5)]}) == []


def test_training_records_diagnostics_every_epoch(tmp_path):
    from test_train import config, make_train_cache
    from iim.train.loop import train
    make_train_cache(tmp_path / "cache")
    lines = []
    run = train(config(tmp_path / "cache", tmp_path / "r", epochs=2), progress=False, log=lines.append)
    for h in run["history"]:
        assert {"proto_cos_mean", "proto_cos_max", "local_acc", "chance", "collapsed", "start_local_acc",
                "start_cos_max", "below_start"} <= set(h)
        assert 0 <= h["local_acc"] <= 100 and h["chance"] == 25.0
    assert sum("ID prototypes cos mean" in line for line in lines) == 2


def test_score_repeats_the_collapse_warning(tmp_path):
    cache = make_random_cache(tmp_path / "cache")
    hist = [{"epoch": 3, "proto_cos_mean": 0.999, "proto_cos_max": 0.9995, "local_acc": 25.0, "chance": 25.0,
             "local_at_chance": True, "collapsed": True}]
    run = make_fake_run(tmp_path / "run", cache)
    ckpt = torch.load(run / "checkpoint.pt")
    ckpt["history"] = hist
    torch.save(ckpt, run / "checkpoint.pt")
    job = prepare_run(run)
    assert any("collapsed at epoch 3" in w for w in job.warnings)
    assert job.checkpoint["diagnostics"]["collapsed"] is True
