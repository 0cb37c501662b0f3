"""Joint training (issue 12): runs trained together in one packed forward end exactly where their
separate ``train()`` runs end; a failing run does not stop the others; a killed joint run resumes."""
import dataclasses
import json

import pytest
import torch

import iim.train.joint as joint
import iim.train.loop as loop
from helpers import make_random_cache
from iim.cache.names import train_split_name
from iim.errors import IIMError
from iim.text import PromptEncoder, encode_packed
from iim.train.checkpoint import load_checkpoint
from iim.train.config import TrainConfig
from iim.train.joint import train_jointly
from iim.train.loop import train
from test_sweep_grid import add_train_split

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py
# 4 points differing in seed (and split), k, n_neg, lambda_neg / lambda_div and lr
POINTS = [dict(seed=1, k=4, n_neg=3, lambda_neg=5.0, lambda_div=0.5, lr=2e-3),
          dict(seed=2, k=8, n_neg=0, lambda_neg=0.0, lambda_div=0.0, lr=1e-3),
          dict(seed=1, k=6, n_neg=5, lambda_neg=1.0, lambda_div=2.0, lr=5e-3),
          dict(seed=3, k=4, n_neg=3, lambda_neg=5.0, lambda_div=0.5, lr=2e-3, hard_negative_mining=False)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    c = make_random_cache(tmp_path_factory.mktemp("joint") / "cache")
    add_train_split(c, 2)
    add_train_split(c, 3)
    return c


def configs(cache, root, points=POINTS, **kw):
    base = dict(device="cpu", epochs=2, n_ctx=4, batch_size=4)
    return [TrainConfig(cache=str(cache.root), split=train_split_name(2, p["seed"]), out=str(root / f"p{i}"),
                        **{**base, **p, **kw}) for i, p in enumerate(points)]


def assert_same_run(a, b, *, tol=1e-5):
    for name in ("ctx", "neg_ctx"):
        torch.testing.assert_close(a["contexts"][name], b["contexts"][name], atol=tol, rtol=0)
    assert a["epoch"] == b["epoch"] and a["complete"] == b["complete"]
    for ea, eb in zip(a["history"], b["history"], strict=True):
        for key in ("lr", "loss", "pos", "neg", "div", "steps"):
            assert ea[key] == pytest.approx(eb[key], abs=1e-5), key


def test_packed_forward_equals_each_encoder_alone(tiny_model):
    model, _ = tiny_model
    names = ["apple", "boat", "cat"]
    encs = [PromptEncoder(model, names, n_ctx=4, n_neg=3), PromptEncoder(model, names, n_ctx=4, n_neg=0),
            PromptEncoder(model, names, n_ctx=4, n_neg=3), PromptEncoder(model, names, n_ctx=2, n_neg=2,
                                                                         class_specific=True)]
    alone = [e() for e in encs]
    packed = encode_packed(encs)           # encoders 0 and 2 share a plan: one attention batch
    for (a_id, a_neg), (p_id, p_neg) in zip(alone, packed, strict=True):
        torch.testing.assert_close(p_id, a_id, atol=1e-5, rtol=0)
        torch.testing.assert_close(p_neg, a_neg, atol=1e-5, rtol=0)
    sum(w * (i.square().sum() + n.sum()) for w, (i, n) in zip((1, 2, 3, 4), packed)).backward()
    grads = [e.ctx.grad.clone() for e in encs]
    for w, e in zip((1, 2, 3, 4), encs):
        e.ctx.grad = None
        i, n = e()
        (w * (i.square().sum() + n.sum())).backward()
        scale = e.ctx.grad.abs().max()          # float32 rounding, relative to the gradient's size (~300)
        torch.testing.assert_close(grads[w - 1], e.ctx.grad, atol=float(2e-6 * scale), rtol=0)


def test_joint_training_equals_separate_runs(cache, tmp_path, monkeypatch):
    loads = []
    real_init = loop.TrainFeatures.__init__
    monkeypatch.setattr(loop.TrainFeatures, "__init__", lambda self, split, *a, **kw: (
        loads.append(split.name), real_init(self, split, *a, **kw))[1])
    joint_states = train_jointly(configs(cache, tmp_path / "joint"), progress=False, log=lambda s: None)
    assert sorted(loads) == ["train_shots2_seed1", "train_shots2_seed2", "train_shots2_seed3"]     # each split's features once
    monkeypatch.undo()
    assert all(isinstance(s, dict) and s["complete"] for s in joint_states), joint_states
    for cfg, js in zip(configs(cache, tmp_path / "alone"), joint_states):
        alone = train(cfg, progress=False, log=lambda s: None)
        assert_same_run(js, alone)
        assert js["config"] == dict(alone["config"], out=js["config"]["out"])
        assert load_checkpoint(cfg.out.replace("alone", "joint"))["epoch"] == 2
    # the points really differ: the comparison above is not between equal runs
    assert not torch.allclose(joint_states[0]["contexts"]["ctx"], joint_states[2]["contexts"]["ctx"])
    folder = tmp_path / "joint" / "p0"
    assert {"checkpoint.pt", "config.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["lr"] == POINTS[0]["lr"]


def test_methods_train_jointly_as_they_train_alone(cache, tmp_path):
    """IIM, CoOp and LoCoOp (one step per batch each; CoOp / LoCoOp read the global features) mix."""
    points = [dict(seed=1, method="coop", lr=2e-3), dict(seed=2, method="locoop", lr=2e-3),
              dict(seed=1, k=4, n_neg=3)]
    cfgs = configs(cache, tmp_path / "j", points)
    assert len({joint.joint_key(c) for c in cfgs}) == 1
    for cfg, state in zip(configs(cache, tmp_path / "a", points), train_jointly(cfgs, progress=False,
                                                                                 log=lambda s: None)):
        assert_same_run(state, train(cfg, progress=False, log=lambda s: None))


def test_a_non_finite_point_stops_alone(cache, tmp_path, monkeypatch):
    real = loop.prompt_losses

    calls = []

    def losses(cfg, *args):                # point 2 turns NaN at its 3rd step: epoch 2, step 1
        out = real(cfg, *args)
        if cfg.k == 6:
            calls.append(1)
        return out * float("nan") if cfg.k == 6 and len(calls) >= 3 else out
    monkeypatch.setattr(joint, "prompt_losses", losses)
    lines = []
    states = train_jointly(configs(cache, tmp_path / "j"), progress=False, log=lines.append)
    assert isinstance(states[2], IIMError) and "non-finite loss at epoch 2, step 1 (loss=nan" in str(states[2])
    assert "the last good checkpoint (epoch 1) is kept" in str(states[2])
    assert load_checkpoint(tmp_path / "j" / "p2")["epoch"] == 1
    monkeypatch.undo()
    for i in (0, 1, 3):                    # the others end where their separate runs end
        assert_same_run(states[i], train(configs(cache, tmp_path / "a")[i], progress=False, log=lambda s: None))


class Killed(BaseException):
    """Stands for a kill: nothing catches it."""


def test_a_killed_joint_run_resumes_to_the_same_result(cache, tmp_path, monkeypatch):
    cfgs = configs(cache, tmp_path / "killed", epochs=4)
    real = loop.save

    def save(path, **kw):                 # killed while saving the last point's 3rd epoch
        if path.parent.name == "p3" and kw["history"][-1]["epoch"] == 3:
            raise Killed
        return real(path, **kw)
    monkeypatch.setattr(loop.epochs, "save", save)
    with pytest.raises(Killed):
        train_jointly(cfgs, progress=False, log=lambda s: None)
    monkeypatch.undo()
    assert [load_checkpoint(c.out)["epoch"] for c in cfgs] == [3, 3, 3, 2]      # points at different epochs
    lines = []
    resumed = train_jointly(cfgs, progress=False, log=lines.append)
    assert sum("resuming" in s for s in lines) == 4
    for cfg, state in zip(configs(cache, tmp_path / "ref", epochs=4), resumed):
        assert_same_run(state, train(cfg, progress=False, log=lambda s: None))


def test_auto_pack_is_bounded_by_memory(cache, tmp_path, monkeypatch):
    per = joint.point_bytes(n_tokens=10_000, width=512, layers=12, batch=32, hw=196, dim=512, prompts=1300)
    assert joint.auto_pack(per, torch.device("cpu"), fraction=1e-30) == 1
    assert joint.auto_pack(per, torch.device("cpu")) == max(1, int(loop.feed.available_ram() * 0.25 // per))
    small, large = (joint.run_bytes(c, cache) for c in configs(cache, tmp_path, [dict(seed=1, n_neg=0), dict(seed=1, n_neg=50)]))
    assert 0 < small < large
    # the sweep's groups: as many points as the memory allows, or --pack N
    from iim.sweep import group_points, plan
    with pytest.raises(IIMError, match="--k 50 needs 2k <= 64 patches"):   # the method's default k, checked
        plan(cache.root, {"n_neg": [0, 2], "seed": [1]}, tmp_path / "sw")
    points = plan(cache.root, {"n_neg": [0, 2, 4, 6], "seed": [1, 2], "k": [4]}, tmp_path / "sw")
    assert [len(g) for g in group_points(points)] == [8]
    assert [len(g) for g in group_points(points, max_pack=3)] == [3, 3, 2]
    assert [len(g) for g in group_points(points, max_pack=1)] == [1] * 8
    monkeypatch.setattr(loop.feed, "available_ram", lambda: 5 * large)      # 1.25 of the largest point
    assert [len(g) for g in group_points(points)] == [1] * 8
    # --compile / --attention flex points train alone
    cfg = configs(cache, tmp_path, [dict(seed=1, n_neg=0)])[0]
    assert joint.joint_key(dataclasses.replace(cfg, compile="default")) is None
    assert joint.joint_key(dataclasses.replace(cfg, attention="flex")) is None
    assert joint.joint_key(dataclasses.replace(cfg, lr=1.0)) == joint.joint_key(cfg)
    assert joint.joint_key(dataclasses.replace(cfg, batch_size=2)) != joint.joint_key(cfg)
