"""Caches and runs written before shots were spelled out (``train_k2_s1``, ``runs/toy-k2-s1-iim``) keep
loading: found by --shots / --seed, opened under either spelling, extended without a second copy."""
import json
import shutil

import pytest

from helpers import make_fake_run
from imagegen import make_world
from iim.cache import open_cache
from iim.cache.verify import check_cache
from iim.extract.run import extract
from iim.train.checkpoint import load_checkpoint
from test_extract_cli import run_cli

TINY = dict(model="iim-test-tiny", pretrained="none", workers=0, progress=False)
OLD, NEW = "train_k2_s1", "train_shots2_seed1"
TRAIN = ["--k", "8", "--n-neg", "4", "--n-ctx", "4", "--batch-size", "8", "--epochs", "1", "--no-progress",
         "--device", "cpu"]
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def age(root, new: str, old: str) -> None:
    """Make ``root`` look written by an older iim: split ``new`` renamed to ``old`` on disk and in the
    manifest (which lists the splits)."""
    (root / new).rename(root / old)
    m = json.loads((root / "manifest.json").read_text())
    m["splits"] = {old if n == new else n: e for n, e in m["splits"].items()}
    (root / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def made(world, tmp_path_factory):
    """A cache extracted now and a copy of it aged: (new cache root, old cache root)."""
    root = tmp_path_factory.mktemp("c")
    extract(str(world["toml"]), root / "new", shots=[2], seeds=[1], batch_size=5, log=lambda m: None, **TINY)
    shutil.copytree(root / "new", root / "old")
    age(root / "old", NEW, OLD)
    return root / "new", root / "old"


def test_an_old_split_opens_under_either_name(made):
    new, old = open_cache(made[0]), open_cache(made[1])
    assert old.train_splits() == [OLD] and new.train_splits() == [NEW]
    for name in (OLD, NEW):
        assert old.has_split(name) and old.is_complete(name) and old.stored_name(name) == OLD
        assert new.stored_name(name) == NEW
        g_old, l_old = old.split(name).read()
        g_new, l_new = new.split(name).read()
        assert old.split(name).name == OLD and (g_old == g_new).all() and (l_old == l_new).all()
        assert old.split_status(name)["complete"]
    assert not old.has_split("train_shots2_seed2") and not old.has_split("train_k2_s2")
    check_cache(old)                                     # the aged cache verifies as it did


def test_extracting_into_an_old_cache_keeps_the_old_name(made, world, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(made[1], root)
    logs = []
    c = extract(str(world["toml"]), root, shots=[2], seeds=[1, 2], batch_size=5, log=logs.append, **TINY)
    assert f"{OLD}: complete, skipped" in logs                        # not extracted a second time
    assert c.train_splits() == [OLD, "train_shots2_seed2"]            # a new split: the new name
    assert set(json.loads((root / "manifest.json").read_text())["splits"]) == {
        "ood_noise", "ood_stripes", "test", OLD, "train_shots2_seed2"}
    logs.clear()
    extract(str(world["toml"]), root, shots=[2], seeds=[1], batch_size=5, log=logs.append, **TINY)
    assert logs == [f"{root}: every requested split is complete ({OLD}, test, ood_noise, ood_stripes)"]


def test_an_interrupted_old_split_is_resumed_under_its_old_name(made, world, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(made[1], root)
    m = json.loads((root / "manifest.json").read_text())
    m["splits"][OLD]["complete"] = False                  # killed before the group was even created
    (root / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(root / OLD)
    extract(str(world["toml"]), root, shots=[2], seeds=[1], batch_size=5, log=lambda m: None, **TINY)
    c = open_cache(root)
    assert c.train_splits() == [OLD] and set(c.manifest["splits"]) == {"ood_noise", "ood_stripes", "test", OLD}


def test_shots_and_seed_find_an_old_split_and_an_old_run_folder_scores_and_predicts(made, world, tmp_path,
                                                                                      capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["train", "--cache", made[1], "--shots", "2", "--seed", "1", *TRAIN], capsys,
                             monkeypatch)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "runs" / "toy-shots2-seed1-iim")["config"]["split"] == OLD
    code, out, err = run_cli(["train", "--cache", made[1], "--seed", "1", "--out", "runs/toy-k2-s1-iim", *TRAIN],
                             capsys, monkeypatch)
    assert code == 0, err
    run = tmp_path / "runs" / "toy-k2-s1-iim"                      # the folder name an older iim chose
    code, out, err = run_cli(["score", "--run", run, "--device", "cpu", "--no-plots", "--no-progress"], capsys,
                             monkeypatch)
    assert code == 0 and (run / "results.json").is_file(), err
    assert f"memory bank {OLD}" in out + err
    image = str(world["test"] / open_cache(made[1]).split("test").paths[0])
    code, out, err = run_cli(["predict", "--run", run, image, "--device", "cpu", "--workers", "0"], capsys,
                             monkeypatch)
    assert code == 0 and (run / "predictions.csv").is_file(), err


@pytest.mark.parametrize("cache, recorded", [(1, NEW), (0, OLD)])
def test_a_run_recording_either_spelling_scores_on_a_cache_holding_the_other(made, tmp_path, capsys,
                                                                             monkeypatch, cache, recorded):
    """A run trained on an older cache, scored on one extracted since (and the other way round)."""
    run = make_fake_run(tmp_path / "run", open_cache(made[cache]), config={"split": recorded})
    code, out, err = run_cli(["score", "--run", run, "--device", "cpu", "--no-plots", "--no-progress",
                              "--cache", made[cache]], capsys, monkeypatch)
    assert code == 0 and (run / "results.json").is_file(), err
    assert f"memory bank {open_cache(made[cache]).train_splits()[0]}" in out + err


def test_a_grid_continues_a_one_shot_point_folder_named_without_shots1(tmp_path):
    from iim.sweep.run import _folder_name
    opts = {"shots": 1, "seed": 2, "views": 1, "n_neg": 0}
    assert _folder_name(tmp_path, opts) == "shots1-seed2-n_neg0"           # nothing written yet
    (tmp_path / "seed2-n_neg0").mkdir()                                    # an older iim's point folder
    assert _folder_name(tmp_path, opts) == "seed2-n_neg0"
    (tmp_path / "shots1-seed2-n_neg0").mkdir()                             # both: the new one wins
    assert _folder_name(tmp_path, opts) == "shots1-seed2-n_neg0"
    assert _folder_name(tmp_path, dict(opts, shots=4)) == "shots4-seed2-n_neg0"   # only 1 shot was left out
