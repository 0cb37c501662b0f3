"""The stage functions return data and write files; only the click layer prints."""
from helpers import make_fake_run, make_random_cache

from iim.score.pipeline import prepare_run
from iim.score.run import format_score, format_sweep, run_score, run_sweep


def test_score_and_sweep_functions_print_nothing(tmp_path, capsys):
    cache = make_random_cache(tmp_path / "c")
    run = make_fake_run(tmp_path / "r", cache)
    results = run_score(prepare_run(run), k=5, plot=False, progress=False, knn={"k": 1, "all_views": False})
    rows = run_sweep(prepare_run(run), [1, 5], [0.5, 1.0], progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert (run / "results.json").is_file() and (run / "sweep.csv").is_file()
    assert results["metrics"]["s_mcm"]["average"]["auroc"] > 50 and results["knn_bank"].startswith("KNN")
    text = format_score(results)
    assert "k=5" in text and "S-MCM" in text and "ID accuracy (test, 40 images)" in text
    assert "Best setting per method" in format_sweep(rows, [1, 5], [0.5, 1.0])
