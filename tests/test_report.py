"""`iim report`: mean and std over several scored runs equal numpy's over their results.json."""
import json

import numpy as np
import pytest

from helpers import make_fake_run, make_random_cache
from test_score_cli import run_cli


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cache = make_random_cache(root / "cache")
    runs = [make_fake_run(root / "runs" / f"s{seed}", cache, seed=seed) for seed in (1, 2, 3)]
    return root, cache, runs


def test_report_is_mean_and_std_of_the_runs(scored, capsys):
    root, cache, runs = scored
    for run in runs:
        code, _, err = run_cli(capsys, "score", "--run", run, "--k", 10, "--no-plots")
        assert code == 0, err
    code, out, err = run_cli(capsys, "report", *runs, "--out", root / "summary")
    assert code == 0, err
    assert "Mean over 3 runs (seeds 1, 2, 3)" in out and "Standard deviation" in out
    summary = json.loads((root / "summary" / "summary.json").read_text())
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    for method in ("mcm", "s_mcm", "knn"):
        for cell in ("near", "far", "average"):
            for metric in ("fpr95", "auroc", "aupr_out"):
                vals = [r["metrics"][method][cell][metric] for r in results]
                assert summary["mean"][method][cell][metric] == pytest.approx(np.mean(vals))
                assert summary["std"][method][cell][metric] == pytest.approx(np.std(vals))
    md = (root / "summary" / "summary.md").read_text()
    assert md.startswith("| Method |") and "S-MCM" in md and "±" in md
    s1 = summary["mean"]["s_mcm"]["average"]["auroc"]
    assert f"{s1:.2f}" in out


def test_report_refuses_unscored_or_mismatched_runs(scored, capsys, tmp_path):
    root, cache, runs = scored
    unscored = make_fake_run(tmp_path / "fresh", cache, seed=4)
    code, _, err = run_cli(capsys, "report", runs[0], unscored)
    assert code == 2 and "score it first" in err and err.count("\n") == 1
    for run, k in zip(runs, (10, 10, 5)):
        code, _, err = run_cli(capsys, "score", "--run", run, "--k", k, "--no-plots")
        assert code == 0, err
    code, _, err = run_cli(capsys, "report", *runs)
    assert code == 2 and "k=5" in err and err.count("\n") == 1


def test_report_refuses_runs_that_differ_in_more_than_the_seed(scored, capsys, tmp_path):
    root, cache, runs = scored
    other = make_fake_run(tmp_path / "other", cache, seed=5, config={"lambda_neg": 1.0})
    for run in (runs[0], other):
        code, _, err = run_cli(capsys, "score", "--run", run, "--k", 10, "--no-plots")
        assert code == 0, err
    code, _, err = run_cli(capsys, "report", runs[0], other)
    assert code == 2 and "lambda_neg" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "report", runs[0], runs[0])
    assert code == 2 and "twice" in err


def test_report_averages_runs_that_differ_only_in_execution_options(scored, capsys, tmp_path):
    """--attention, --compile, --device, ... change how a run is computed, not what it computes."""
    root, cache, runs = scored
    execution = {"attention": "blocks", "compile": "default", "device": "cuda", "bf16": False,
                 "features_in": "stream", "pretrained": "/elsewhere/weights.pt"}
    other = make_fake_run(tmp_path / "blocks", cache, seed=6, config=execution)
    for run in (runs[0], other):
        code, _, err = run_cli(capsys, "score", "--run", run, "--k", 10, "--no-plots")
        assert code == 0, err
    code, out, err = run_cli(capsys, "report", runs[0], other)
    assert code == 0, err
    assert "Mean over 2 runs" in out


def test_report_puts_methods_and_zero_shot_side_by_side(scored, capsys, tmp_path):
    root, cache, runs = scored
    coop = [make_fake_run(tmp_path / f"coop{s}", cache, seed=s, n_neg=0, config={"method": "coop"}) for s in (1, 2)]
    lp = [make_fake_run(tmp_path / "lp1", cache, seed=1, config={"method": "localprompt"})]
    for run in runs + coop + lp:
        code, _, err = run_cli(capsys, "score", "--run", run, "--k", 10, "--no-plots")
        assert code == 0, err
    code, _, err = run_cli(capsys, "score", "--zero-shot", "--cache", cache.root, "--out", tmp_path / "zs",
                           "--k", 10, "--no-plots")
    assert code == 0, err
    code, out, err = run_cli(capsys, "report", *runs, *lp, tmp_path / "zs", *coop, "--out", tmp_path / "table")
    assert code == 0, err
    table = json.loads((tmp_path / "table" / "summary.json").read_text())
    assert [g["label"] for g in table["groups"]] == ["0-shot", "2-shot CoOp", "2-shot Local-Prompt", "2-shot IIM"]
    assert table["rows"] == ["0-shot/mcm", "0-shot/gl_mcm", "0-shot/r_mcm_star", "0-shot/s_mcm_star",
                             "2-shot CoOp/mcm", "2-shot CoOp/gl_mcm", "2-shot Local-Prompt/r_mcm",
                             "2-shot IIM/r_mcm", "2-shot IIM/s_mcm"]
    coop_res = [json.loads((r / "results.json").read_text()) for r in coop]
    vals = [r["metrics"]["gl_mcm"]["average"]["fpr95"] for r in coop_res]
    assert table["mean"]["2-shot CoOp/gl_mcm"]["average"]["fpr95"] == pytest.approx(np.mean(vals))
    assert table["std"]["2-shot CoOp/gl_mcm"]["average"]["fpr95"] == pytest.approx(np.std(vals))
    lines = out.splitlines()
    assert lines.index(next(x for x in lines if x.startswith("0-shot MCM"))) < lines.index(
        next(x for x in lines if x.startswith("2-shot IIM S-MCM")))
    md = (tmp_path / "table" / "summary.md").read_text()
    assert "| 2-shot LoCoOp" not in md and "| 2-shot Local-Prompt R-MCM |" in md
