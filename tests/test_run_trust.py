"""Run folders and result files that do not say what they hold (issue 26): a config.json edited by hand or a
checkpoint from another run, a checkpoint of another model, an edited results.json given to `iim report`, and
`iim report` over runs of different caches or models: refused with the reason, or reported with the
difference marked."""
import json
import shutil

import pytest

from helpers import make_fake_run, make_random_cache, random_manifest
from test_score_cli import run_cli
from test_sweep_grid import add_train_split

FAST = ["--k", "8", "--n-neg", "4", "--n-ctx", "4", "--batch-size", "8", "--epochs", "1", "--no-progress"]
SCORE = ["--k", "5", "--no-plots", "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    cache = make_random_cache(root / "cache")
    add_train_split(cache, 2)
    runs = {}
    for seed in (1, 2):
        run = root / f"run{seed}"
        code, _, err = run_cli(_Quiet(), "train", "--cache", cache.root, "--out", run, "--seed", seed, *FAST)
        assert code == 0, err
        runs[seed] = run
    return root, cache, runs


class _Quiet:
    def readouterr(self):
        return "", ""


def _copy(run, to):
    shutil.copytree(run, to)
    for f in ("results.json", "results.csv"):
        (to / f).unlink(missing_ok=True)
    return to


def one_line(code, err, match):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], err


def test_a_hand_edited_config_json_is_refused_by_score_and_predict(world, tmp_path, capsys):
    root, cache, runs = world
    run = _copy(runs[1], tmp_path / "edited")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(cfg, epochs=30, lr=0.1)))
    code, _, err = run_cli(capsys, "score", "--run", run, *SCORE)
    one_line(code, err, "disagree in epochs: 30 vs 1 (config.json first)")
    assert not (run / "results.json").exists()
    code, _, err = run_cli(capsys, "predict", "--run", run, "--no-progress", __file__)
    one_line(code, err, "config.json was edited, or the checkpoint comes from another run")
    assert not (run / "predictions.csv").exists()


def test_a_checkpoint_from_another_run_is_refused(world, tmp_path, capsys):
    root, cache, runs = world
    run = _copy(runs[1], tmp_path / "swapped")
    shutil.copy(runs[2] / "checkpoint.pt", run / "checkpoint.pt")
    code, _, err = run_cli(capsys, "score", "--run", run, *SCORE)
    one_line(code, err, "disagree in split: 'train_shots2_seed1' vs 'train_shots2_seed2'")
    code, _, err = run_cli(capsys, "score", "--run", runs[1], *SCORE)          # the untouched run scores
    assert code == 0, err


def test_a_checkpoint_of_another_model_is_refused(world, tmp_path, capsys):
    root, cache, runs = world
    other = make_random_cache(tmp_path / "other", manifest=random_manifest(weights="sha256:0123"))
    code, _, err = run_cli(capsys, "score", "--run", runs[1], "--cache", other.root, *SCORE)
    one_line(code, err, "disagree in weights")


def _scored(run, capsys, *extra):
    code, _, err = run_cli(capsys, "score", "--run", run, *SCORE, *extra)
    assert code == 0, err
    return run


def test_an_edited_results_json_is_refused_by_report(world, tmp_path, capsys):
    root, cache, runs = world
    a, b = (_scored(_copy(runs[s], tmp_path / f"r{s}"), capsys) for s in (1, 2))
    code, out, err = run_cli(capsys, "report", a, b)
    assert code == 0 and "Mean over 2 runs" in out and "Note:" not in out, err
    res = json.loads((b / "results.json").read_text())
    res["metrics"]["s_mcm"]["average"]["auroc"] = 99.9
    (b / "results.json").write_text(json.dumps(res, indent=2))
    code, _, err = run_cli(capsys, "report", a, b, "--out", tmp_path / "table")
    one_line(code, err, "results.json was changed after 'iim score' wrote it")
    assert not (tmp_path / "table").exists()
    del res["sha256"]                             # a file from before the checksum is taken as it is
    (b / "results.json").write_text(json.dumps(res, indent=2))
    code, out, err = run_cli(capsys, "report", a, b)
    assert code == 0, err


def test_report_refuses_zero_shot_results_of_different_models(world, tmp_path, capsys):
    root, cache, runs = world
    other = make_random_cache(tmp_path / "other", manifest=random_manifest(weights="sha256:0123"))
    for name, c in (("za", cache), ("zb", other)):
        code, _, err = run_cli(capsys, "score", "--zero-shot", "--cache", c.root, "--out", tmp_path / name, *SCORE)
        assert code == 0, err
    code, _, err = run_cli(capsys, "report", tmp_path / "za", tmp_path / "zb")
    one_line(code, err, "was scored on a cache with weights")


def test_report_marks_runs_scored_on_other_caches(world, tmp_path, capsys):
    root, cache, runs = world
    copy = tmp_path / "cache-copy"
    shutil.copytree(cache.root, copy)
    a = _scored(_copy(runs[1], tmp_path / "r1"), capsys)
    b = _scored(_copy(runs[2], tmp_path / "r2"), capsys, "--cache", copy)
    code, out, err = run_cli(capsys, "report", a, b, "--out", tmp_path / "table")
    assert code == 0, err
    assert "Note: these runs: its runs were scored on 2 caches" in out and str(copy) in out
    assert "scored on 2 caches" in (tmp_path / "table" / "summary.md").read_text()
    # side by side: a zero-shot group on a cache of other weights is shown, and marked
    other = make_random_cache(tmp_path / "other", manifest=random_manifest(weights="sha256:0123"))
    code, _, err = run_cli(capsys, "score", "--zero-shot", "--cache", other.root, "--out", tmp_path / "z", *SCORE)
    assert code == 0, err
    code, out, err = run_cli(capsys, "report", tmp_path / "z", a, "--out", tmp_path / "side")
    assert code == 0, err
    assert "Note: 2-shot IIM was scored on a cache that differs from 0-shot's in weights" in out, out
    assert "differs from 0-shot's in weights" in (tmp_path / "side" / "summary.md").read_text()
