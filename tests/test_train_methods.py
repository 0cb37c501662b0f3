"""``iim train --method coop|locoop|localprompt`` on a tiny cache (tiny model, CPU): each trains, resumes to
the same contexts after being killed, writes a checkpoint that ``iim score`` scores; refusals."""
import json

import pytest
import torch

from helpers import make_random_cache
from iim.cli import _run, load_command
from iim.errors import IIMError
from iim.train.config import METHOD_DEFAULTS, TrainConfig, resolve_method, resolve_recipe
from iim.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py
METHODS = ("coop", "locoop", "localprompt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_random_cache(tmp_path_factory.mktemp("methods") / "cache", shots=4, views=4, hw=16)


def config(cache, out, method, **kw):
    small = dict(k=4, n_neg=5) if method == "localprompt" else {}
    return TrainConfig(cache=str(cache.root), split="train_shots4_seed1", out=str(out), method=method, n_ctx=4,
                       epochs=3, batch_size=8, **{**small, **kw})


def quiet(*args):
    pass


class Killed(Exception):
    pass


def kill_after_epoch(n):
    def log(msg):
        if msg.startswith(f"epoch {n}/"):      # printed right after that epoch's checkpoint is written
            raise Killed
    return log


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_resumes_after_a_kill_and_is_scored(cache, tmp_path, method, capsys):
    ref = train(config(cache, tmp_path / "ref", method), progress=False, log=quiet)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in ref["history"])
    assert ref["config"]["method"] == method and ref["config"]["lr"] == METHOD_DEFAULTS[method]["lr"]
    with pytest.raises(Killed):
        train(config(cache, tmp_path / "run", method), progress=False, log=kill_after_epoch(1))
    done = train(config(cache, tmp_path / "run", method), resume=True, progress=False, log=quiet)
    assert done["epoch"] == 3 and done["complete"]
    for key in ("ctx", "neg_ctx"):
        assert torch.equal(done["contexts"][key], ref["contexts"][key]), key
    with pytest.raises(IIMError, match="--method"):    # resuming as another method is refused
        train(config(cache, tmp_path / "run", "iim" if method != "iim" else "coop", k=4, n_neg=5),
              resume=True, progress=False, log=quiet)

    protos = done["prototypes"]
    if method == "localprompt":       # frozen global prototypes; class-specific local contexts; negatives
        assert done["contexts"]["ctx"].shape[0] == 4 and protos["neg"].shape[0] == 5
        assert torch.equal(protos["global"], cache.global_prototypes().float())
        assert done["history"][0]["steps"] == 2 * 2           # 2 batches x min(8, 4 // 2) positive views
    else:                             # MCM and GL-MCM on the learned prompts, no negatives
        assert torch.equal(protos["global"], protos["local"]) and protos["neg"].shape[0] == 0
    code = _run(load_command("score"), args=["--run", str(tmp_path / "run"), "--no-plots"], prog_name="iim-score")
    out, err = capsys.readouterr()
    assert isinstance(code, dict), err          # the command returns its results (errors exit 1)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"mcm", "gl_mcm"} <= set(res["metrics"])
    assert res["run_config"]["method"] == method
    if method == "localprompt":
        assert "r_mcm" in res["metrics"] and res["settings"]["k"] == 10 and "k=10" in out
    else:
        assert "r_mcm" not in res["metrics"] and res["settings"]["k"] == 50


def test_locoop_differs_from_coop_only_through_its_entropy_term(cache, tmp_path):
    coop = train(config(cache, tmp_path / "c", "coop"), progress=False, log=quiet)
    same = train(config(cache, tmp_path / "l0", "locoop", locoop_lambda=0.0), progress=False, log=quiet)
    loc = train(config(cache, tmp_path / "l", "locoop", locoop_top_k=1), progress=False, log=quiet)
    assert torch.equal(coop["contexts"]["ctx"], same["contexts"]["ctx"])
    assert not torch.equal(coop["contexts"]["ctx"], loc["contexts"]["ctx"])
    assert any(h["neg"] < 0 for h in loc["history"])      # -entropy of the patches outside the top-1


def test_localprompt_refuses_a_one_view_cache_and_streaming(cache, tmp_path):
    one = make_random_cache(tmp_path / "one", shots=2, views=1, hw=16)
    cfg = TrainConfig(cache=str(one.root), split="train_shots2_seed1", out=str(tmp_path / "r"), method="localprompt")
    with pytest.raises(IIMError, match="--views 16"):
        train(cfg, progress=False, log=quiet)
    with pytest.raises(IIMError, match="cannot stream"):
        train(config(cache, tmp_path / "r", "localprompt", features_in="stream"), progress=False, log=quiet)
    with pytest.raises(IIMError, match="--pos-views 3 or less"):
        train(config(cache, tmp_path / "r", "localprompt", pos_views=4), progress=False, log=quiet)
    assert not (tmp_path / "r").exists()


def test_method_defaults_resolve_and_inapplicable_options_are_refused():
    cfg = resolve_method(TrainConfig(cache="c", split="s", out="o", method="localprompt"))
    assert (cfg.k, cfg.n_neg, cfg.class_specific, cfg.epochs, cfg.batch_size, cfg.lr) == (50, 300, True, 30, 256, 0.002)
    cfg = resolve_method(TrainConfig(cache="c", split="s", out="o", method="iim", lr=0.1))
    assert (cfg.k, cfg.lr, cfg.epochs, cfg.class_specific) == (50, 0.1, 50, None)   # IIM: the recipe's
    assert resolve_recipe(resolve_method(TrainConfig(cache="c", split="s", out="o", method="iim",
                                                     recipe="official"))).class_specific is True
    cfg = resolve_recipe(resolve_method(TrainConfig(cache="c", split="s", out="o", method="coop")))
    assert resolve_method(cfg) == cfg and cfg.k is None and cfg.train_projection is False   # idempotent
    for bad in (dict(k=5), dict(n_neg=3), dict(lambda_div=0.1), dict(train_projection=True),
                dict(recipe="official"), dict(pos_views=2)):
        with pytest.raises(IIMError, match="apply to --method coop"):
            resolve_method(TrainConfig(cache="c", split="s", out="o", method="coop", **bad))
