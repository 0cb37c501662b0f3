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
    code, _, err = run_cli(capsys, "grid", "--cache", c1.root, *FAST, "--out", out)
    assert code == 0, err
    before = (out / "results.csv").read_text()
    code, stdout, err = run_cli(capsys, "grid", "--cache", c2.root, *FAST, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "trained on another cache" in err, (stdout, err)
    assert "other features in split train_shots2_seed1" in err and "done earlier" not in stdout
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "sweep.json").read_text())["cache"] == str(c1.root)

    copy = tmp_path / "c1-copy"                # the same features elsewhere: still the same points
    shutil.copytree(c1.root, copy)
    code, stdout, err = run_cli(capsys, "grid", "--cache", copy, *FAST, "--out", out)
    assert code == 0 and "done earlier" in stdout, err
    assert (out / "results.csv").read_text() == before


def test_a_point_folder_of_an_older_iim_is_compared_by_its_cache_location(two_caches, tmp_path, capsys):
    c1, c2 = two_caches
    out = tmp_path / "S"
    assert run_cli(capsys, "grid", "--cache", c1.root, *FAST, "--out", out)[0] == 0
    (state,) = out.glob("points/*/point.json")
    old = json.loads(state.read_text())
    del old["data"]                            # point.json as iim wrote it before the data key
    state.write_text(json.dumps(old))
    code, _, err = run_cli(capsys, "grid", "--cache", c2.root, *FAST, "--out", out)
    assert code == 2 and f"cache {c1.root.resolve()}, not {c2.root.resolve()}" in err, err
    code, stdout, err = run_cli(capsys, "grid", "--cache", c1.root, *FAST, "--out", out)
    assert code == 0 and "done earlier" not in stdout, err      # re-scored once, then recorded
    assert "data" in json.loads(state.read_text())


def test_other_scoring_settings_rescore_the_point(two_caches, tmp_path, capsys):
    c1, _ = two_caches
    out = tmp_path / "S"
    assert run_cli(capsys, "grid", "--cache", c1.root, *FAST, "--out", out)[0] == 0
    code, stdout, err = run_cli(capsys, "grid", "--cache", c1.root, *FAST, "--T", "2", "--out", out)
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


# ---- (5) file lists hashed unambiguously; control characters not printed raw -----------------------
def test_the_file_list_digest_tells_a_newline_in_a_name_from_two_names():
    from iim.data.splits import files_digest

    assert files_digest(["a\nb"]) != files_digest(["a", "b"])
    assert files_digest(["a", "b"]) == files_digest(["a", "b"]) != files_digest(["b", "a"])
    assert files_digest(["a\nb"], "newline") == files_digest(["a", "b"], "newline")   # why it changed


@pytest.mark.parametrize("recorded, now, warned", [
    ("newline", ["test/0.png", "test/1.png"], False),   # a cache of an older iim, the same files
    ("newline", ["test/0.png", "test/2.png"], True),
    ("json-list", ["test/0.png", "test/1.png"], False),
    ("json-list", ["test/0.png\ntest/1.png"], True),
])
def test_a_split_keeps_being_compared_with_the_encoding_it_was_hashed_with(tmp_path, recorded, now, warned):
    import zarr

    from iim.cache import open_cache
    from iim.data.splits import SplitPlan, file_attrs, files_digest
    from iim.extract.run import _check_same_files

    cache = make_random_cache(tmp_path / "c", n_test=2, ood={"far": 2})
    files = ["test/0.png", "test/1.png"]
    attrs = dict(files_sha256=files_digest(files, recorded))
    if recorded != "newline":
        attrs["files_hash"] = recorded
    zarr.open_group(str(cache.root / "test"), mode="a").attrs.update(attrs)
    lines = []
    plan = SplitPlan("test", "test", tmp_path, now, [0] * len(now), attrs=file_attrs(now))
    _check_same_files(open_cache(cache.root), plan, lines.append)
    assert bool(lines) == warned and all("extracted from other files" in m for m in lines)


def test_the_predict_table_escapes_control_characters_in_paths():
    from iim.cli.predict import format_rows

    row = dict(path="a\nb\x1b[2J.png", decision="in", score=0.5, **{"class": "cat"}, probability=0.9, reason="")
    bad = dict(row, path="c\rd.png", decision="skipped", reason="cannot\nread")
    text = format_rows([row, bad])
    assert text.count("\n") == 3 and "\x1b" not in text and "\r" not in text
    assert "a\\nb\\x1b[2J.png" in text and "c\\rd.png: cannot\\nread" in text


# ---- (4) EXIF orientation ---------------------------------------------------------------------------
def test_an_image_tagged_rotate_90_is_read_upright_where_extract_and_predict_read_it(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from iim.data.folders import ImageRows, to_rgb

    upright = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                # Orientation: rotate 90 CW to display
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    with Image.open(tmp_path / "phone.png") as im:
        assert im.size == (20, 40)                  # stored sideways
        assert to_rgb(im).tobytes() == upright.tobytes()      # predict's PIL-image path
    tensor = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32).copy())  # noqa: E731
    rows = ImageRows(tmp_path, ["phone.png", "upright.png"], tensor, image_size=40)   # extract, predict paths
    (_, a, err_a), (_, b, err_b) = rows[0], rows[1]
    assert err_a == err_b == "" and a.shape == b.shape and torch.equal(a, b)


def test_a_cache_from_before_the_orientation_was_recorded_still_loads_and_says_so(tmp_path, capsys):
    cache = make_random_cache(tmp_path / "old")          # a manifest without "orientation"
    assert "orientation" not in json.loads((cache.root / "manifest.json").read_text())
    from iim.cache import open_cache
    assert open_cache(cache.root).split("test").read()[0].shape[0] == 40
    code, out, err = run_cli(capsys, "cache", "info", cache.root)
    assert code == 0 and "EXIF orientation ignored" in out, err


# ---- option edge cases -------------------------------------------------------------------------------
@pytest.mark.parametrize("command, extra", [
    ("score", []), ("sweep", []), ("grid", ["--grid", "n_neg=4", "--seed", "1"]), ("predict", ["x.png"]),
])
def test_a_negative_alpha_is_a_one_line_error(two_caches, tmp_path, capsys, command, extra):
    from helpers import make_fake_run
    c1, _ = two_caches
    where = ["--run", make_fake_run(tmp_path / "run", c1)] if "--grid" not in extra else ["--cache", c1.root]
    code, _, err = run_cli(capsys, command, *where, "--alpha", "-1", *extra)
    assert code == 2 and err.count("\n") == 1 and "--alpha" in err and "-1.0 is not in the range x>=0" in err, err
    assert not (tmp_path / "run" / "results.json").exists()
