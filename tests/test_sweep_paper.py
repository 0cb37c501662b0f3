"""The paper's numbers beside a sweep's Table 1/2 rows (SPEC §7) and Fig. 3 (``iim prototypes``): the
paper rows appear for one of the paper's benchmarks and not for another; the prototype figure's files
are written and its cosines equal a direct computation."""
import json

import numpy as np
import pytest
import torch

import importlib
from helpers import make_fake_run, make_random_cache, random_manifest
from iim.paper import paper_rows
from iim.score.fig3 import pairwise_cosines, prototype_figure, tsne_2d
from test_score_cli import run_cli
from test_sweep_grid import FAST

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def easy_cache(tmp_path_factory):
    man = random_manifest(benchmark="imagenet500-easy")
    return make_random_cache(tmp_path_factory.mktemp("paper") / "cache", shots=4, manifest=man)


def test_paper_rows_beside_ours_for_a_paper_benchmark_and_not_for_the_demo(easy_cache, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "sweep"
    args = ["--cache", easy_cache.root, "--grid", "n_neg=0,4", "--grid", "k=4", "--seed", "1", *FAST,
            "--k", "4", "--out", out, "--no-progress"]
    code, _, err = run_cli(capsys, "grid", *args)
    assert code == 0, err
    md = (out / "report.md").read_text()
    table = md.split("## Ablation (Table 3 style)")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    ours, paper = rows[1:3], rows[3:]
    assert [r.split(" | ")[0] for r in ours] == ["| 0", "| 4"]
    # SPEC §7, ImageNet-500-Easy: 0-shot R-MCM* 12.10 / 96.98, 4-shot IIM 6.09 / 98.44 (no 16-shot: not swept)
    assert paper == ["| paper: 0-shot | R-MCM* | 3 | – | – | – | – | 12.10 | 96.98 |",
                     "| paper: 4-shot IIM | S-MCM | 3 | – | – | – | – | 6.09 | 98.44 |"]
    assert all(len(r.split(" | ")) == len(rows[0].split(" | ")) for r in rows)    # same columns
    assert "Tables 1-2 (SPEC §7)" in md

    collect = importlib.import_module("iim.sweep.collect")   # (iim.sweep.collect is also a function)
    monkeypatch.setattr(collect, "benchmark", lambda points: "demo")   # the same points, re-collected
    code, stdout, err = run_cli(capsys, "grid", *args)
    assert code == 0 and "done earlier" in stdout, err
    assert "paper" not in (out / "report.md").read_text()
    assert paper_rows("demo") == [] and len(paper_rows("imagenet100")) == 3


def test_prototype_figure_writes_png_and_pdf_and_its_cosines_are_the_direct_ones(tmp_path):
    rng = np.random.default_rng(0)
    runs = {"easy": rng.standard_normal((12, 8)), "hard": rng.standard_normal((9, 8)) + 2.0}
    data = prototype_figure(runs, tmp_path / "fig" / "prototypes", seed=1)
    for ext in ("png", "pdf"):
        assert (tmp_path / "fig" / f"prototypes.{ext}").stat().st_size > 1000
    for label, p in runs.items():
        direct = [float(p[i] @ p[j] / np.linalg.norm(p[i]) / np.linalg.norm(p[j]))
                  for i in range(len(p)) for j in range(i + 1, len(p))]
        np.testing.assert_allclose(data[label]["cosines"], direct, rtol=0, atol=1e-12)
        assert data[label]["tsne"].shape == (len(p), 2) and data[label]["mean"] == pytest.approx(np.mean(direct))
    assert data["hard"]["mean"] > data["easy"]["mean"] + 0.3        # shifted vectors lie closer together
    np.testing.assert_array_equal(tsne_2d(runs["easy"], seed=1), data["easy"]["tsne"])   # fixed random_state
    with pytest.raises(Exception, match="at least 3 classes"):
        tsne_2d(np.eye(2))
    assert pairwise_cosines(np.eye(3)).tolist() == [0.0, 0.0, 0.0]


def test_iim_prototypes_on_two_runs(tmp_path, capsys):
    cache = make_random_cache(tmp_path / "cache", classes=6)
    runs = [make_fake_run(tmp_path / name, cache, seed=s, config={"benchmark": name})
            for s, name in enumerate(("imagenet500-easy", "imagenet500-hard"))]
    code, stdout, err = run_cli(capsys, "prototypes", *runs, "--out", tmp_path / "fig3")
    assert code == 0, err
    summary = json.loads((tmp_path / "fig3" / "prototypes.json").read_text())
    local = torch.load(runs[0] / "checkpoint.pt", weights_only=True)["prototypes"]["local"].double().numpy()
    assert summary["imagenet500-easy"]["classes"] == 6
    assert summary["imagenet500-easy"]["mean"] == pytest.approx(pairwise_cosines(local).mean())
    assert "imagenet500-hard: 6 prototypes, pairwise cosine mean" in stdout
    assert {p.name for p in (tmp_path / "fig3").iterdir()} == {"prototypes.png", "prototypes.pdf", "prototypes.json"}
    code, _, err = run_cli(capsys, "prototypes", *runs, "--label", "a", "--out", tmp_path / "x")
    assert code == 2 and "--label given 1 times for 2 runs" in err and not (tmp_path / "x").exists()
