"""``iim grid --cache C --grid NAME=VALUES``: grid parsing and refusals, a 2 x 2 grid end to end
through the CSV and the report, a failing point, overlap reuse, and resume after a killed sweep."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import make_random_cache
from iim.cache.names import train_split_name
from iim.errors import IIMError
from iim.sweep import expand, parse_specs, point_name
from iim.train.checkpoint import load_checkpoint
from iim.train.config import TrainConfig
from test_score_cli import run_cli

FAST = ["--grid", "epochs=2", "--grid", "n_ctx=4", "--grid", "batch_size=4"]
CLI = "import sys; from iim.cli import main; sys.argv[0] = 'iim'; main()"
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def add_train_split(cache, seed: int, shots: int = 2):
    """A second support set (train_split_name(shots, seed)): the first one's features plus noise."""
    src = cache.split(train_split_name(shots, 1))
    g, loc = src.read()
    rng = np.random.default_rng(seed)
    w = cache.writer(train_split_name(shots, seed), n=src.n, views=src.views, hw=src.hw, dim=src.dim,
                     labels=src.labels, paths=[f"s{seed}/{i}.png" for i in range(src.n)])
    w.append(g + 0.05 * rng.standard_normal(g.shape).astype(np.float16),
             loc + 0.05 * rng.standard_normal(loc.shape).astype(np.float16))
    w.finish()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    c = make_random_cache(tmp_path_factory.mktemp("grid") / "cache")
    add_train_split(c, 2)
    return c


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---- grammar ------------------------------------------------------------------------------------
def test_grid_values_are_read_with_each_options_own_type():
    grid = parse_specs(["n_neg=0,10,20", "lambda-neg=0:5:2.5", "hard_negative_mining=on,off",
                        "ood_patches=all-rest,next-k", "lr=1e-3,5e-4"], seeds=[3, 1])
    assert grid == {"n_neg": [0, 10, 20], "lambda_neg": [0.0, 2.5, 5.0], "hard_negative_mining": [True, False],
                    "ood_patches": ["all-rest", "next-k"], "lr": [0.0005, 0.001], "seed": [3, 1]}
    assert parse_specs(["recipe=official,paper", "class_specific=on,off", "ctx_init=a photo of a,"]) == \
        {"recipe": ["official", "paper"], "class_specific": [True, False], "ctx_init": ["a photo of a"]}
    points = expand(grid)
    assert len(points) == 3 * 3 * 2 * 2 * 2 * 2 and points[1] == dict(points[0], seed=1)
    # names: split first, then only the options that differ from their defaults (stable across grids)
    default_n_neg = {"shots": 4, "seed": 1, "views": 1, "n_neg": TrainConfig.n_neg, "lambda_neg": 0.0}
    assert point_name(default_n_neg) == "shots4-seed1-lambda_neg0"
    assert point_name({"shots": 4, "seed": 2, "views": 8, "hard_negative_mining": False}) == \
        "shots4-seed2-views8-hard_negative_miningoff"


@pytest.mark.parametrize("specs, message", [
    (["nope=1"], "--grid nope: not a training option that changes the result"),
    (["alpha=0,1"], "test-time k and alpha: --k / --alpha"),
    (["device=cpu"], "--grid device: not a training option"),          # result=False: not sweepable
    (["n_neg=a,b"], "cannot read --grid n_neg 'a,b'"),
    (["k=2.5"], "--grid k must be whole numbers"),
    (["n_neg=-1,3"], "--grid n_neg: -1 is refused by --n-neg"),
    (["lr=0"], "--grid lr: 0.0 is refused by --lr"),
    (["hard_negative_mining=maybe"], "'maybe' is refused by --hard-negative-mining"),
    (["ood_patches=all"], "'all' is refused by --ood-patches"),
    (["n_neg="], "--grid n_neg '' names no values"),
    (["ood_patches=,"], "names no values"),
    (["n_neg"], "write NAME=VALUES"),
    (["n_neg=1", "n_neg=2"], "given twice"),
])
def test_grid_refusals(specs, message):
    with pytest.raises(IIMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_specs(specs)


def test_refusals_are_one_line_errors_before_any_training(cache, tmp_path, capsys):
    out = tmp_path / "sw"
    for args, message in [
        (["--grid", "n_neg=0,x"], "cannot read --grid n_neg"),
        (["--seed", "1,5", "--grid", "k=8"], "has no train split train_shots2_seed5 (train splits: train_shots2_seed1, "
         f"train_shots2_seed2); add it first with 'iim extract --benchmark random --shots 2 --seed 5 --out {cache.root}'"),
        (["--grid", "shots=2,8", "--seed", "1", "--grid", "k=8"], "iim extract --benchmark random --shots 8 --seed 1"),
        (["--grid", "k=8,40", "--seed", "1"], "--k 40 needs 2k <= 64 patches"),          # as iim train refuses it
        (["--grid", "k=8", "--seed", "1", "--k", "1000"], "k=1000 is out of range"),   # test k, before training
        (["--grid", "k=8"], "several train splits"),    # two seeds, none chosen
    ]:
        code, _, err = run_cli(capsys, "grid", "--cache", cache.root, "--out", out, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
        assert not out.exists(), args


@pytest.mark.parametrize("flag, value", [("--grid", "n_neg=0"), ("--seed", "1"), ("--pack", "1"), ("--jobs", "2")])
def test_sweep_cannot_start_training(cache, tmp_path, capsys, flag, value):
    """``iim sweep`` only re-scores: a grid option names ``iim grid`` in one line, nothing is written."""
    out = tmp_path / "sw"
    code, _, err = run_cli(capsys, "sweep", "--cache", cache.root, "--k", "1,5", flag, value, "--out", out)
    assert code == 2 and err.count("\n") == 1, err
    assert f"iim sweep only re-scores runs (k x alpha); {flag} belongs to a training grid" in err
    assert "iim grid --cache CACHE --grid NAME=VALUES" in err
    assert not out.exists()


def test_sweep_with_a_cache_rescores_the_newest_run_and_never_trains(cache, tmp_path, capsys):
    """``iim sweep --cache C --k 1,5`` started a training grid; now it looks for a run to re-score."""
    out = tmp_path / "sw"
    code, _, err = run_cli(capsys, "sweep", "--cache", cache.root, "--k", "1,5", "--runs-dir", tmp_path / "none",
                           "--out", out)
    assert code == 2 and err.count("\n") == 1 and "no runs found under" in err and "iim train" in err, err
    assert not out.exists()


def test_the_test_k_of_a_point_and_why():
    from iim.registry import TEST_K
    from iim.sweep import Scoring
    assert TEST_K == 50
    assert Scoring(ks=[4, 8]).test_k(8) == (8, "each point's training top-k, which --k lists")
    assert Scoring(ks=[4, 50]).test_k(8) == (50, "the default test k: its training top-k is not in --k")
    assert Scoring(ks=[4, 50]).test_k(None) == (50, "the default test k: the method trains without a top-k")
    assert Scoring(ks=[4, 5]).test_k(8) == (4, "the first --k: its training top-k is not in --k, nor is 50")
    assert Scoring(ks=[4, 8], k=5).test_k(8) == (5, "the test k asked for")
    assert Scoring().ks == [TEST_K] and Scoring().k_for(8) == TEST_K
    from types import SimpleNamespace as NS
    from iim.cli.grid import scored_at
    points = [NS(config=NS(k=k)) for k in (8, 4, 8)]
    assert scored_at(Scoring(ks=[8, 50]), points) == (
        "scored at test k=8 for 2 point(s) (each point's training top-k, which --k lists); "
        "test k=50 for 1 point(s) (the default test k: its training top-k is not in --k)")


def test_one_scoring_settings_object_for_score_sweep_and_grid():
    import iim.sweep
    from iim.score.options import ScoreOptions, Scoring
    assert iim.sweep.Scoring is Scoring
    s = Scoring.from_flags(k=[5, 20], alpha=[0.0, 1.0], T=2.0, ood=["a"])
    assert (s.ks, s.alphas, s.alpha, s.T, s.ood, s.k) == ([5, 20], [0.0, 1.0], 1.0, 2.0, ("a",), None)
    assert Scoring.from_flags(k=[5], alpha=[0.5, 2.0], T=1.0).alpha == 0.5      # 1.0 not listed: the first
    assert s.run_kwargs() == dict(T=2.0, ood=("a",), chunk=None, device="auto", recipe=None)
    d = Scoring()                                   # the flags' own defaults (ScoreOptions)
    assert (d.ks, d.alphas, d.alpha, d.T, d.chunk, d.recipe) == (
        [ScoreOptions.k], [ScoreOptions.alpha], ScoreOptions.alpha, ScoreOptions.T, None, None) == (
        [50], [1.0], 1.0, 1.0, None, None)


# ---- end to end ---------------------------------------------------------------------------------
@pytest.fixture
def swept(cache, tmp_path):
    """A 2 x 2 grid (n_neg x train k), seed 1, scored over test k 5,20 x alpha 0,1."""
    out = tmp_path / "nneg_k"
    return out, ["--cache", cache.root, "--grid", "n_neg=0,4", "--grid", "k=4,8", "--seed", "1", *FAST,
                 "--k", "5,20", "--alpha", "0,1", "--out", out, "--no-progress"]


def test_two_by_two_grid_end_to_end(cache, swept, capsys):
    out, args = swept
    code, stdout, err = run_cli(capsys, "grid", *args)
    assert code == 0, err
    names = ["shots2-seed1-k4-n_neg0-n_ctx4-epochs2-batch_size4", "shots2-seed1-k8-n_neg0-n_ctx4-epochs2-batch_size4",
             "shots2-seed1-k4-n_neg4-n_ctx4-epochs2-batch_size4", "shots2-seed1-k8-n_neg4-n_ctx4-epochs2-batch_size4"]
    for i, name in enumerate(names, 1):
        assert f"[{i}/4] {name}: S-MCM{'*' if 'n_neg0' in name else ''} average FPR95" in stdout
    assert "4/4 points done, 0 failed; scored at test k=5 (the default test k" not in stdout
    assert ("4/4 points done, 0 failed; scored at test k=5 (the first --k: its training top-k is not in --k, "
            "nor is 50), alpha=1") in stdout

    # every point is an ordinary run folder with the options it stands for
    for name in names:
        ck = load_checkpoint(out / "points" / name)
        assert ck["complete"] and ck["epoch"] == 2 and ck["config"]["split"] == "train_shots2_seed1"
        want = (int(name.split("-k")[1][0]), int(name.split("n_neg")[1][0]))
        assert (ck["config"]["k"], ck["config"]["n_neg"]) == want
        assert {"results.json", "sweep.csv", "scores_test.npz", "config.json", "point.json"} <= \
            {p.name for p in (out / "points" / name).iterdir()}
        log = (out / "points" / name / "train.log").read_text()      # its own lines (trained jointly)
        assert log.count("epoch 1/2") == log.count("epoch 2/2") == 1 and f"{name}/checkpoint.pt" in log

    # the tidy CSV: results.json rows at (test k 5, alpha 1) with every metric, sweep.csv rows for the rest
    rows = read_csv(out / "results.csv")
    assert {"point", "k", "n_neg", "seed", "shots", "lambda_neg", "test_k", "alpha", "evaluator", "ood_set",
            "fpr95", "auroc", "aupr_in"} <= set(rows[0])
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)) and "train_method" in header and "method" not in header
    assert {r["train_method"] for r in rows} == {"iim"}
    keys = [(r["point"], r["test_k"], r["alpha"], r["evaluator"], r["ood_set"]) for r in rows]
    assert len(keys) == len(set(keys))
    for name in names:
        res = json.loads((out / "points" / name / "results.json").read_text())["metrics"]
        sweep = read_csv(out / "points" / name / "sweep.csv")
        mine = {(r["test_k"], r["alpha"], r["evaluator"], r["ood_set"]): r for r in rows if r["point"] == name}
        knn = 3                                        # far, near, average: scored by run_score only
        assert len(mine) == len({(r["k"], r["alpha"], r["method"], r["ood_set"]) for r in sweep}) + knn
        for method, per in res.items():
            k = "5" if method not in ("mcm", "gl_mcm", "knn") else ""
            a = "1" if method in ("s_mcm", "s_mcm_star") else ""
            for ood, vals in per.items():
                for metric, v in vals.items():
                    assert float(mine[(k, a, method, ood)][metric]) == pytest.approx(v, abs=1e-7)
        for r in sweep:
            got = mine[(r["k"], r["alpha"], r["method"], r["ood_set"])]
            assert float(got["fpr95"]) == pytest.approx(float(r["fpr95"]), abs=1e-6)
        assert {r["n_neg"] for r in mine.values()} == {name.split("n_neg")[1][0]}

    # the report: one Table 3 row per setting, evaluators side by side, figures as PNG and PDF
    md = (out / "report.md").read_text()
    avg = {r["point"]: float(r["fpr95"]) for r in rows
           if r["ood_set"] == "average" and r["test_k"] == "5" and r["alpha"] == "1"
           and r["evaluator"] == ("s_mcm_star" if "n_neg0" in r["point"] else "s_mcm")}
    assert f"| 4 | 8 | S-MCM | 1 | " in md and f"{avg[names[3]]:.2f}" in md
    assert "## Evaluators side by side: average FPR95" in md and "| GL-MCM |" in md
    for fig in ("vs_n_neg", "vs_k", "vs_alpha", "train_k_vs_test_k", "evaluators"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000, fig

    # an overlapping grid in the same folder reuses its points
    code, stdout, err = run_cli(capsys, "grid", "--cache", cache.root, "--grid", "n_neg=4", "--grid", "k=8",
                                "--seed", "1", *FAST, "--k", "5,20", "--alpha", "0,1", "--out", out, "--no-progress")
    assert code == 0, err
    assert f"[1/1] {names[3]}: S-MCM average FPR95 {avg[names[3]]:.2f}" in stdout and "done earlier" in stdout
    assert {r["point"] for r in read_csv(out / "results.csv")} == {names[3]}


@pytest.mark.parametrize("pack", ["1", "2"])          # trained alone / jointly with the other point
def test_a_failing_point_is_recorded_and_the_others_continue(cache, tmp_path, capsys, monkeypatch, pack):
    import iim.train.joint as joint
    import iim.train.loop as loop
    real = loop.prompt_losses

    def losses(cfg, *args):                   # the n_neg 4 point's loss is NaN
        out = real(cfg, *args)
        return out * float("nan") if cfg.n_neg == 4 else out

    monkeypatch.setattr(loop.steps, "prompt_losses", losses)
    monkeypatch.setattr(joint, "prompt_losses", losses)
    out = tmp_path / "sw"
    code, stdout, err = run_cli(capsys, "grid", "--cache", cache.root, "--grid", "n_neg=0,4", "--seed", "1",
                                "--grid", "epochs=1", "--grid", "k=4", *FAST[2:], "--out", out, "--no-progress",
                                "--pack", pack)
    assert code == 1
    assert "FAILED: non-finite loss at epoch 1, step 1 (loss=nan" in stdout and "1/2 points done, 1 failed" in stdout
    points = {r["point"]: r for r in read_csv(out / "points.csv")}
    failed = [r for r in points.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["n_neg"] == "4" and "non-finite loss" in failed[0]["error"]
    assert "## Failed points" in (out / "report.md").read_text()
    assert {r["n_neg"] for r in read_csv(out / "results.csv")} == {"0"}


def test_resume_after_a_killed_sweep_skips_finished_points_and_gives_the_same_csv(cache, tmp_path, capsys):
    grid = ["--cache", str(cache.root), "--grid", "n_neg=4", "--grid", "lambda_neg=0,5", "--seed", "1,2",
            "--grid", "k=4", *FAST, "--k", "5,20", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    victim = subprocess.Popen([sys.executable, "-c", CLI, "grid", *grid, "--out", str(tmp_path / "killed")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while victim.poll() is None and time.time() < deadline and \
            len(list((tmp_path / "killed").glob("points/*/point.json"))) < 1:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
    finished = {p.parent.name for p in (tmp_path / "killed").glob("points/*/point.json")}
    assert 1 <= len(finished) < 4

    code, stdout, err = run_cli(capsys, "grid", *grid, "--out", tmp_path / "killed")
    assert code == 0, err
    for name in finished:
        assert any(name in line and "done earlier" in line for line in stdout.splitlines()), stdout
    assert stdout.count("done earlier") == len(finished)
    code, stdout, err = run_cli(capsys, "grid", *grid, "--out", tmp_path / "ref")
    assert code == 0, err
    assert (tmp_path / "killed" / "results.csv").read_text() == (tmp_path / "ref" / "results.csv").read_text()

    # Table 3 rows: mean ± std over the two seeds, from the CSV
    rows = read_csv(tmp_path / "ref" / "results.csv")
    md = (tmp_path / "ref" / "report.md").read_text()
    for lam in ("0", "5"):
        v = [float(r["fpr95"]) for r in rows if r["lambda_neg"] == lam and r["evaluator"] == "s_mcm"
             and r["ood_set"] == "average" and r["test_k"] == "5" and r["alpha"] == "1"]
        assert len(v) == 2
        assert f"| {lam} | S-MCM | 2 | " in md and f"{np.mean(v):.2f} ± {np.std(v):.2f}" in md
