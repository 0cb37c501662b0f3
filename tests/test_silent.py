"""Nothing silently wrong, round 2 (issue #26): a grid resumed on another cache, duplicate CSV columns,
``--jobs`` reproducibility, EXIF orientation, ambiguous file-list digests, control characters in
printed paths, duplicate log lines."""
import json
import logging
import shutil

import pytest

from helpers import make_random_cache
from test_score_cli import run_cli

FAST = ["--grid", "epochs=1", "--grid", "n_ctx=4", "--grid", "batch_size=4", "--grid", "k=4",
        "--grid", "n_neg=4", "--seed", "1", "--k", "5", "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


# ---- (1) a grid resumed into the same --out with another cache ------------------------------------
@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """Two caches alike in everything (model, classes, split names and shapes) but their features."""
    root = tmp_path_factory.mktemp("two")
    return make_random_cache(root / "c1", seed=0), make_random_cache(root / "c2", seed=7)


def test_a_grid_resumed_with_another_cache_is_refused_not_reused(two_caches, tmp_path, capsys):
    c1, c2 = two_caches
    out = tmp_path / "S"
    code, _, err = run_cli(capsys, "sweep", "--cache", c1.root, *FAST, "--out", out)
    assert code == 0, err
    before = (out / "results.csv").read_text()
    code, stdout, err = run_cli(capsys, "sweep", "--cache", c2.root, *FAST, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "trained on another cache" in err, (stdout, err)
    assert "other features in split train_k2_s1" in err and "done earlier" not in stdout
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "sweep.json").read_text())["cache"] == str(c1.root)

    copy = tmp_path / "c1-copy"                # the same features elsewhere: still the same points
    shutil.copytree(c1.root, copy)
    code, stdout, err = run_cli(capsys, "sweep", "--cache", copy, *FAST, "--out", out)
    assert code == 0 and "done earlier" in stdout, err
    assert (out / "results.csv").read_text() == before


def test_a_point_folder_of_an_older_iim_is_compared_by_its_cache_location(two_caches, tmp_path, capsys):
    c1, c2 = two_caches
    out = tmp_path / "S"
    assert run_cli(capsys, "sweep", "--cache", c1.root, *FAST, "--out", out)[0] == 0
    (state,) = out.glob("points/*/point.json")
    old = json.loads(state.read_text())
    del old["data"]                            # point.json as iim wrote it before the data key
    state.write_text(json.dumps(old))
    code, _, err = run_cli(capsys, "sweep", "--cache", c2.root, *FAST, "--out", out)
    assert code == 2 and f"cache {c1.root.resolve()}, not {c2.root.resolve()}" in err, err
    code, stdout, err = run_cli(capsys, "sweep", "--cache", c1.root, *FAST, "--out", out)
    assert code == 0 and "done earlier" not in stdout, err      # re-scored once, then recorded
    assert "data" in json.loads(state.read_text())


def test_other_scoring_settings_rescore_the_point(two_caches, tmp_path, capsys):
    c1, _ = two_caches
    out = tmp_path / "S"
    assert run_cli(capsys, "sweep", "--cache", c1.root, *FAST, "--out", out)[0] == 0
    code, stdout, err = run_cli(capsys, "sweep", "--cache", c1.root, *FAST, "--T", "2", "--out", out)
    assert code == 0 and "done earlier" not in stdout, err
    assert json.loads(next(out.glob("points/*/point.json")).read_text())["scoring"]["T"] == 2


# ---- (6) log lines once ---------------------------------------------------------------------------
def test_the_command_line_handler_stops_iim_lines_reaching_a_root_handler():
    from iim import log

    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    root = logging.getLogger()
    h = Collect()
    root.addHandler(h)
    was = log.logger.propagate
    try:
        log.console_handler()
        log.info("once")
        assert seen == []
    finally:
        root.removeHandler(h)
        log.logger.propagate = was
