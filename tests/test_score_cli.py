"""`iim score` / `iim sweep` end to end on a tiny random cache and a fake run folder."""
import json
import os

import numpy as np
import pytest
import torch

from helpers import make_fake_run, make_random_cache, random_manifest
from iim import metrics as M
from iim.cli import _run, load_command
from iim.score import ood_scores


def run_cli(capsys, name, *args):
    """Run a command as the `iim-score` / `iim-sweep` entry points do; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        code = _run(load_command(name), args=[str(a) for a in args], prog_name=f"iim-{name}")
        raise SystemExit(code if isinstance(code, int) else 0)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    cache = make_random_cache(root / "cache")
    run = make_fake_run(root / "runs" / "r1", cache)
    return root, cache, run


def test_score_end_to_end(world, capsys):
    root, cache, run = world
    code, out, err = run_cli(capsys, "score", "--run", run, "--k", 20, "--alpha", 0.5)
    assert code == 0, err
    assert f"Scoring run {run}, cache {cache.root}" in out
    for label in ("MCM", "GL-MCM", "R-MCM*", "R-MCM", "S-MCM*", "S-MCM", "KNN", "far", "near", "Average"):
        assert label in out
    res = json.loads((run / "results.json").read_text())
    assert res["settings"]["k"] == 20 and res["settings"]["alpha"] == 0.5 and res["units"] == "percent"
    assert set(res["metrics"]) == {"mcm", "gl_mcm", "r_mcm", "r_mcm_star", "s_mcm", "s_mcm_star",
                                   "i2t", "i2t_star", "t2i", "knn"}

    # the per-image scores are ood_scores on the cached features with the run's prototypes
    protos = torch.load(run / "checkpoint.pt")["prototypes"]
    saved = {s: dict(np.load(run / f"scores_{s}.npz")) for s in ("test", "ood_far", "ood_near")}
    for s in saved:
        g, loc = cache.split(s).read(view=0)
        want = ood_scores(torch.from_numpy(g), torch.from_numpy(loc), protos["global"], protos["local"],
                          protos["neg"], k=20, alpha=0.5)
        for key, val in want.items():
            np.testing.assert_allclose(saved[s][key], val.numpy(), rtol=1e-5, err_msg=f"{s} {key}")

    # KNN: minus the squared distance to the nearest normalised support feature (brute force)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    bank = unit(cache.split("train_shots2_seed1").read(view=0)[0].astype(np.float64))
    query = unit(cache.split("test").read(view=0)[0].astype(np.float64))
    knn = -((query[:, None] - bank[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(saved["test"]["knn"], knn, atol=1e-4)

    # every metric in results.json is iim.metrics on those scores, in percent
    for method, per in res["metrics"].items():
        for ood in ("far", "near"):
            for metric, value in per[ood].items():
                want = 100 * getattr(M, metric)(saved["test"][method], saved[f"ood_{ood}"][method])
                assert value == pytest.approx(want, abs=1e-9), (method, ood, metric)
            assert per["average"]["fpr95"] == pytest.approx((per["far"]["fpr95"] + per["near"]["fpr95"]) / 2)
    labels, pred = saved["test"]["label"], saved["test"]["pred"]
    assert res["id"]["accuracy"] == pytest.approx(100 * np.mean(labels == pred))
    assert f"ID accuracy (test, 40 images): {res['id']['accuracy']:.2f}%" in out
    assert (run / "results.csv").read_text().count("\n") == 1 + 10 * 3 * 5
    for name in ("hist_s_mcm", "roc_s_mcm", "hist_mcm", "roc_mcm"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000


def test_a_run_is_scored_with_its_recipe_unless_told_otherwise(world, capsys, tmp_path):
    root, cache, _ = world
    run = make_fake_run(tmp_path / "official", cache, config={"recipe": "official"})
    protos = torch.load(run / "checkpoint.pt")["prototypes"]
    g, loc = (torch.from_numpy(x) for x in cache.split("test").read(view=0))
    for args, double in (((), True), (("--recipe", "paper"), False)):
        code, out, err = run_cli(capsys, "score", "--run", run, "--k", 10, "--no-knn", "--no-plots", *args)
        assert code == 0, err
        res = json.loads((run / "results.json").read_text())
        assert res["settings"]["recipe"] == ("official" if double else "paper")
        want = ood_scores(g, loc, protos["global"], protos["local"], protos["neg"], k=10, double_exp=double)
        saved = np.load(run / "scores_test.npz")
        for key in ("s_mcm", "s_mcm_star"):
            np.testing.assert_allclose(saved[key], want[key].numpy(), rtol=1e-5, err_msg=key)


def test_short_form_picks_newest_run_and_sweep_matches_points(world, capsys, monkeypatch):
    root, cache, run = world
    older = make_fake_run(root / "runs" / "r0", cache, seed=1)
    os.utime(older / "checkpoint.pt", (1, 1))
    monkeypatch.chdir(root)
    code, out, err = run_cli(capsys, "score", "--k", "5,20", "--alpha", "0:1:0.5")
    assert code == 0, err
    assert "Scoring run runs/r1 (newest under runs/)" in out and "Best setting per method" in out
    rows = (run / "sweep.csv").read_text().splitlines()
    assert rows[0] == "k,alpha,method,ood_set,fpr95,auroc"
    table = {tuple(r.split(",")[:4]): [float(x) for x in r.split(",")[4:]] for r in rows[1:]}
    assert len(table) == len(rows) - 1
    for k, alpha in [(5, 1.0), (20, 0.0), (20, 0.5)]:
        code, _, err = run_cli(capsys, "score", "--k", k, "--alpha", alpha, "--no-plots", "--no-knn")
        assert code == 0, err
        res = json.loads((run / "results.json").read_text())["metrics"]
        for ood in ("far", "near", "average"):
            for method in ("s_mcm", "s_mcm_star"):
                got = table[(str(k), f"{alpha:.10g}", method, ood)]
                assert got == pytest.approx([res[method][ood]["fpr95"], res[method][ood]["auroc"]], abs=1e-6)
            got = table[(str(k), "", "r_mcm", ood)]
            assert got == pytest.approx([res["r_mcm"][ood]["fpr95"], res["r_mcm"][ood]["auroc"]], abs=1e-6)


def test_sweep_command_and_zero_shot(world, capsys, tmp_path):
    root, cache, run = world
    code, out, err = run_cli(capsys, "sweep", "--zero-shot", "--cache", cache.root, "--out", tmp_path / "zs",
                             "--k", "1,50", "--alpha", "0,1")
    assert code == 0, err
    methods = {line.split(",")[2] for line in (tmp_path / "zs" / "sweep.csv").read_text().splitlines()[1:]}
    assert methods == {"mcm", "gl_mcm", "r_mcm_star", "s_mcm_star", "i2t_star", "t2i"}
    code, out, err = run_cli(capsys, "score", "--zero-shot", "--cache", cache.root, "--out", tmp_path / "zs",
                             "--no-plots")
    assert code == 0, err
    assert "Scoring zero-shot" in out and "KNN baseline: k=1, memory bank train_shots2_seed1" in out
    res = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert set(res["metrics"]) == {"mcm", "gl_mcm", "r_mcm_star", "s_mcm_star", "i2t_star", "t2i", "knn"}
    assert res["zero_shot"] and res["run"] is None


def test_partial_run_is_scored_with_a_warning(world, capsys, tmp_path):
    root, cache, _ = world
    run = make_fake_run(tmp_path / "partial", cache, epoch=1, epochs=3, n_neg=0)
    code, out, err = run_cli(capsys, "score", "--run", run, "--no-plots", "--no-knn", "--ood", "far")
    assert code == 0, err
    assert f"Warning: run {run} is not complete: scoring epoch 1 of 3" in err
    res = json.loads((run / "results.json").read_text())
    assert "s_mcm" not in res["metrics"] and "s_mcm_star" in res["metrics"]   # no negatives
    assert list(res["ood_sets"]) == ["far"]


def test_bad_input_gives_one_line_errors(world, capsys, tmp_path):
    root, cache, run = world
    other = make_random_cache(tmp_path / "vit", manifest=random_manifest(model="ViT-B-16"), ood={"x": 3}, n_test=4)
    fewer = make_random_cache(tmp_path / "c3", classes=3, ood={"x": 3}, n_test=4)
    narrow = make_random_cache(tmp_path / "d16", dim=16, ood={"x": 3}, n_test=4)
    empty = make_random_cache(tmp_path / "empty", ood={"x": 3, "none": 0}, n_test=4)
    cases = [
        (["--run", run, "--cache", other.root], "disagree in model: 'iim-test-tiny' vs 'ViT-B-16'"),
        (["--run", run, "--cache", fewer.root], "disagree in classes: 4 vs 3 classes"),
        (["--run", run, "--cache", narrow.root], "D=32 but the cache's features have D=16"),
        (["--run", run, "--ood", "nowhere"], "has no split 'ood_nowhere'"),
        (["--run", run, "--k", 257], "k=257 is out of range"),          # HW x C = 64 x 4 = 256
        (["--run", run, "--cache", empty.root], "OOD split 'ood_none'"),
        (["--runs-dir", tmp_path / "nothing"], "no runs found under"),
        (["--zero-shot", "--cache", cache.root], "--zero-shot needs --out"),
        (["--run", run, "--alpha", "2:1:0.5"], "cannot read --alpha"),
    ]
    for args, message in cases:
        code, out, err = run_cli(capsys, "score", "--no-plots", *args)
        assert code == 2, (args, out, err)
        assert err.startswith("Error: ") and err.count("\n") == 1 and message in err, (args, err)
    ok = run_cli(capsys, "score", "--run", run, "--k", 256, "--no-plots", "--no-knn")
    assert ok[0] == 0, ok[2]


def test_streaming_reads_at_most_a_chunk_and_does_not_depend_on_it(world, monkeypatch):
    from iim.cache.store import Split
    from iim.score.pipeline import prepare_run, stream_split

    root, cache, run = world
    job = prepare_run(run)
    test = cache.split("test")
    whole, pred_whole = stream_split(test, job, k=7, alpha=0.3, rows=1000, predict=True)
    sizes = []
    read = Split.read
    monkeypatch.setattr(Split, "read", lambda self, a=0, b=None, **kw: sizes.append(b - a) or read(self, a, b, **kw))
    chunked, pred_chunked = stream_split(test, job, k=7, alpha=0.3, rows=6, predict=True)
    assert max(sizes) == 6 and len(sizes) == 7        # 40 images in chunks of 6
    assert np.array_equal(pred_whole, pred_chunked)
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-6, err_msg=key)
