"""iim.Detector and `iim predict`: the scores `iim score` wrote, from the images themselves; bad input."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iim
from helpers import make_fake_run
from imagegen import make_world, truncate, write_image
from iim.data.folders import list_images, load_rgb
from iim.errors import IIMError
from iim.extract.run import extract
from iim.metrics import recall_threshold
from iim.predict.inputs import select_images
from iim.score.run import run_score
from test_extract_cli import run_cli
from iim.score.pipeline import prepare_run, prepare_zero_shot

TINY = dict(model="iim-test-tiny", pretrained="none", workers=0, progress=False, log=lambda m: None)
K, ALPHA = 10, 0.5            # not ScoreOptions' defaults: predict must take them from results.json



def one_line_error(code, err, match):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], err


def special_modes(test_dir: Path) -> None:
    """Replace test images by the modes extract must convert: grayscale, CMYK, RGBA, 16-bit, very large."""
    src = lambda rel: np.asarray(Image.open(test_dir / rel).convert("RGB"))  # noqa: E731
    Image.fromarray(src("ant/000.png")).convert("L").save(test_dir / "ant/000.png")
    Image.fromarray(src("ant/001.jpg")).convert("CMYK").save(test_dir / "ant/001.jpg")
    rgba = np.dstack([src("bee/000.png"), np.linspace(0, 255, 40 * 36).reshape(36, 40).astype(np.uint8)])
    Image.fromarray(rgba).save(test_dir / "bee/000.png")
    gray16 = src("cat/000.png")[..., 1].astype(np.uint16) * 257
    Image.fromarray(gray16).save(test_dir / "cat/000.png")
    assert Image.open(test_dir / "cat/000.png").mode.startswith("I;16")
    write_image(test_dir / "cat/001.jpg", 5, size=(3000, 2200))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    world = make_world(root / "world", test_per_class=4)
    special_modes(world["test"])
    cache = extract(str(world["toml"]), root / "cache", shots=[2], seeds=[1], batch_size=5, **TINY)
    run = make_fake_run(root / "runs" / "r1", cache)
    run_score(prepare_run(run), k=K, alpha=ALPHA, device="cpu", plot=False, progress=False)
    zero = root / "zero"
    run_score(prepare_zero_shot(cache.root, zero), k=K, alpha=ALPHA, device="cpu", plot=False, progress=False)
    test = cache.split("test")
    return dict(root=root, world=world, cache=cache, run=run, zero=zero,
                files=[str(world["test"] / p) for p in test.paths])


# ---- equality with iim score ------------------------------------------------------------------
def test_predict_on_the_test_images_gives_the_scores_iim_score_wrote(setup):
    det = iim.Detector.from_run(setup["run"], device="cpu")
    assert (det.method, det.k, det.alpha, det.T) == ("s_mcm", K, ALPHA, 1.0)
    assert det.settings_source == {"k": "results.json", "alpha": "results.json", "T": "results.json"}
    assert det.classes == ["ant", "bee", "cat"]
    wrote = np.load(setup["run"] / "scores_test.npz")
    pred = det.predict(setup["files"], batch_size=7)          # other batches than the extraction's (5)
    assert pred.ok.all() and pred.paths == setup["files"]
    np.testing.assert_allclose(pred.scores, wrote["s_mcm"], rtol=1e-3, atol=1e-4)   # float16 features
    np.testing.assert_array_equal(pred.class_index, wrote["pred"])
    assert list(pred.classes) == [det.classes[i] for i in wrote["pred"]]
    assert pred.top3_classes.shape == (12, 3) and (pred.top3_classes[:, 0] == pred.classes).all()
    assert (np.diff(pred.top3_probabilities, axis=1) <= 0).all() and (pred.top3_probabilities <= 1).all()
    np.testing.assert_array_equal(pred.decisions, pred.scores >= det.threshold)

    # the cached features themselves give the written scores (same float16 inputs)
    g, loc = setup["cache"].split("test").read(view=0)
    feats = det.score_features(torch.from_numpy(g), torch.from_numpy(loc), batch_size=5)
    np.testing.assert_allclose(feats.scores, wrote["s_mcm"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(feats.scores, pred.scores, rtol=1e-3, atol=1e-4)

    # another method and k
    other = iim.Detector.from_run(setup["run"], device="cpu", method="GL-MCM", k=3, threshold=0.0)
    assert (other.method, other.k, other.alpha) == ("gl_mcm", 3, ALPHA)
    np.testing.assert_allclose(other.predict(setup["files"]).scores, wrote["gl_mcm"], rtol=1e-3, atol=1e-4)


def test_the_shared_scoring_settings_score_as_the_keywords_do(setup):
    """``scoring=`` (iim score's / iim grid's Scoring): its test k for the run, as iim grid picks it
    (the run's training top-k 10 when ks lists it), its alpha, T and recipe."""
    from iim.score.options import Scoring
    files = setup["files"][:6]
    by_keywords = iim.Detector.from_run(setup["run"], device="cpu", method="GL-MCM", k=3, alpha=0.25, T=1.0,
                                        threshold=0.0)
    det = iim.Detector.from_run(setup["run"], device="cpu", method="GL-MCM", threshold=0.0,
                                scoring=Scoring(ks=[3], alphas=[0.25], alpha=0.25))
    assert (det.k, det.alpha, det.T, det.recipe) == (3, 0.25, 1.0, "paper") == (
        by_keywords.k, by_keywords.alpha, by_keywords.T, by_keywords.recipe)
    assert det.settings_source == {"k": "given", "alpha": "given", "T": "given"}
    np.testing.assert_array_equal(det.predict(files).scores, by_keywords.predict(files).scores)
    assert isinstance(by_keywords.scoring, Scoring) and by_keywords.scoring.ks == [3]
    assert iim.Detector.from_run(setup["run"], device="cpu", scoring=Scoring(ks=[3, 10])).k == 10   # train k
    official = iim.Detector.from_run(setup["run"], device="cpu", threshold=0.0, scoring=Scoring(ks=[K], recipe="official"))
    paper = iim.Detector.from_run(setup["run"], device="cpu", threshold=0.0, scoring=Scoring(ks=[K]))
    assert (official.recipe, paper.recipe, official.method) == ("official", "paper", "s_mcm")
    assert not np.allclose(official.predict(files).scores, paper.predict(files).scores)   # SPEC §9's double exp
    with pytest.raises(IIMError, match="^give the scoring settings as scoring= or as k / alpha / T, not both$"):
        iim.Detector.from_run(setup["run"], device="cpu", k=3, scoring=Scoring())


def test_pil_images_and_tensors_equal_paths(setup):
    det = iim.Detector.from_run(setup["run"], device="cpu")
    files = setup["files"][:6]
    by_path = det.predict(files)
    pil = [Image.open(f) for f in files]                      # any mode: converted as extract does
    np.testing.assert_array_equal(det.predict(pil).scores, by_path.scores)
    batch = torch.stack([det.encoder[1](load_rgb(f)) for f in files])
    np.testing.assert_array_equal(det.predict(batch, batch_size=4).scores, by_path.scores)
    assert det.predict(files[0]).scores[0] == by_path.scores[0]


def test_sixteen_bit_images_are_scaled_not_clipped(setup, tmp_path):
    rgb = np.asarray(load_rgb(setup["files"][0]))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g8.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    g16, g8 = (np.asarray(load_rgb(tmp_path / f)) for f in ("g16.png", "g8.png"))
    np.testing.assert_array_equal(g16, g8)
    clipped = np.asarray(Image.open(tmp_path / "g16.png").convert("RGB"))      # PIL alone: white above 255
    assert (clipped == 255).mean() > 0.9 > 0.5 > (g8 == 255).mean()


def test_zero_shot_equals_iim_score_zero_shot(setup):
    det = iim.Detector.from_cache(setup["cache"].root, device="cpu", k=K, alpha=ALPHA)
    assert det.method == "mcm" and det.run_dir is None
    wrote = np.load(setup["zero"] / "scores_test.npz")
    pred = det.predict(setup["files"])
    np.testing.assert_allclose(pred.scores, wrote["mcm"], rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(pred.class_index, wrote["pred"])
    assert "scored now" in det.threshold_source
    with pytest.raises(IIMError, match=r"^--evaluator S-MCM needs negative prompts.*e\.g\. --evaluator S-MCM\*\)$"):
        iim.Detector.from_cache(setup["cache"].root, method="S-MCM")
    with pytest.raises(IIMError, match="^unknown --evaluator 'KNN'; choose from"):   # the option is --evaluator
        iim.Detector.from_cache(setup["cache"].root, method="KNN")


# ---- the threshold ----------------------------------------------------------------------------
def test_threshold_from_scores_test_npz_else_scored_now(setup, tmp_path):
    wrote = np.load(setup["run"] / "scores_test.npz")["s_mcm"]
    det = iim.Detector.from_run(setup["run"], device="cpu")
    assert det.threshold == recall_threshold(wrote, 0.95) and "scores_test.npz" in det.threshold_source
    assert "11 of the 12 ID test images kept" in det.threshold_source     # 11/12 is nearest to 95 %
    copy = tmp_path / "r2"
    shutil.copytree(setup["run"], copy)
    (copy / "scores_test.npz").unlink()
    fresh = iim.Detector.from_run(copy, device="cpu")
    assert "scored now" in fresh.threshold_source
    assert fresh.threshold == pytest.approx(det.threshold, rel=1e-6)
    other_k = iim.Detector.from_run(setup["run"], device="cpu", k=4)    # the npz holds k=10 scores
    assert "scored now" in other_k.threshold_source
    half = iim.Detector.from_run(setup["run"], device="cpu", tpr=0.5)
    assert half.threshold > det.threshold and "6 of the 12" in half.threshold_source
    fixed = iim.Detector.from_run(setup["run"], device="cpu", threshold=1.5)
    assert fixed.threshold == 1.5 and "given" in fixed.threshold_source
    with pytest.raises(IIMError, match="not both"):
        iim.Detector.from_run(setup["run"], threshold=1.0, tpr=0.9)


def test_recall_threshold_against_brute_force():
    rng = np.random.default_rng(0)
    for n, recall in [(12, 0.95), (100, 0.95), (7, 0.5), (40, 1.0), (33, 0.1)]:
        s = np.round(rng.normal(size=n), 1)                   # with ties
        candidates = sorted(set(s.tolist()))                  # low to high: ties in nearness -> lowest
        dist = [abs(np.mean(s >= t) - recall) for t in candidates]
        assert recall_threshold(s, recall) == candidates[int(np.argmin(dist))]


# ---- the command line -------------------------------------------------------------------------
def test_cli_on_a_folder_equals_detector_predict(setup, capsys, monkeypatch, tmp_path):
    folder = setup["world"]["test"]
    code, out, err = run_cli(["predict", "--run", setup["run"], folder, "--device", "cpu", "--workers", "0",
                              "--batch-size", "4", "--out", tmp_path, "--no-progress"], capsys, monkeypatch)
    assert code == 0, err
    det = iim.Detector.from_run(setup["run"], device="cpu")
    files = [str(folder / p) for p in list_images(folder)]
    pred = det.predict(files)
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["path"] for r in rows] == files
    np.testing.assert_allclose([float(r["score"]) for r in rows], pred.scores, rtol=1e-6)
    assert [r["decision"] for r in rows] == ["in" if d else "out" for d in pred.decisions]
    assert [r["class"] for r in rows] == list(pred.classes)
    assert [r["class_3"] for r in rows] == list(pred.top3_classes[:, 2])
    js = json.loads((tmp_path / "predictions.json").read_text())
    assert js["threshold"]["value"] == det.threshold and js["method"] == "s_mcm" and js["k"] == K
    assert js["n_scored"] == 12 and js["skipped"] == [] and js["predictions"][0]["top3"][0][0] == rows[0]["class"]
    assert f"Threshold {det.threshold:.6g}: S-MCM at 95% ID recall" in out and "scores_test.npz" in out


@pytest.mark.parametrize("flag", ["--evaluator", "--method"])     # --method: the old spelling, warned
def test_evaluator_option_and_its_deprecated_alias(setup, capsys, monkeypatch, tmp_path, flag):
    img = setup["files"][0]
    code, out, err = run_cli(["predict", "--run", setup["run"], img, flag, "GL-MCM", "--device", "cpu", "--workers",
                              "0", "--out", tmp_path, "--no-progress"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((tmp_path / "predictions.json").read_text())["method"] == "gl_mcm"
    assert ("--method is deprecated; it is --evaluator now" in err) == (flag == "--method")


def test_default_out_is_the_run_folder_and_zero_shot_needs_out(setup, capsys, monkeypatch, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(setup["run"], run)
    code, out, err = run_cli(["predict", "--run", run, setup["files"][0], "--device", "cpu", "--workers", "0"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert (run / "predictions.csv").is_file() and (run / "predictions.json").is_file()
    one_line_error(*run_cli(["predict", "--zero-shot", "--cache", setup["cache"].root, setup["files"][0]],
                            capsys, monkeypatch)[::2], "--out")


def test_unreadable_files_are_listed_and_the_rest_scored(setup, capsys, monkeypatch, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = [shutil.copy(setup["files"][i], folder / f"ok{i}{Path(setup['files'][i]).suffix}") for i in (1, 5)]
    truncate(shutil.copy(setup["files"][2], folder / "cut.jpg"), keep=0.3)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, out, err = run_cli(["predict", "--run", setup["run"], folder, notes, "--device", "cpu", "--workers",
                              "0", "--out", tmp_path / "o"], capsys, monkeypatch)
    assert code == 0, err
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "o" / "predictions.csv"))}
    assert {n for n, r in rows.items() if r["decision"] == "skipped"} == {"cut.jpg", "empty.png", "text.png",
                                                                        "notes.txt"}
    assert all(rows[n]["reason"] for n in ("cut.jpg", "empty.png", "text.png", "notes.txt"))
    assert "truncated" in rows["cut.jpg"]["reason"].lower() or "OSError" in rows["cut.jpg"]["reason"]
    assert "Skipped 4 file(s):" in out and "notes.txt: UnidentifiedImageError" in out
    det = iim.Detector.from_run(setup["run"], device="cpu")
    want = det.predict(sorted(map(str, good)))
    np.testing.assert_allclose([float(rows[Path(p).name]["score"]) for p in want.paths], want.scores, rtol=1e-6)
    js = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert js["n_scored"] == 2 and js["n_skipped"] == 4 and len(js["skipped"]) == 4


def test_globs_select_files_and_folders(setup, tmp_path):
    test = setup["world"]["test"]
    assert select_images([f"{test}/ant/*.png"]) == [str(test / "ant" / "000.png"), str(test / "ant" / "003.png")]
    both = select_images([f"{test}/**/*.JPEG", test / "ant"])
    assert both[0] == str(test / "ant" / "002.JPEG") and len(both) == 3 + 3     # each file once
    assert select_images([test]) == [str(test / p) for p in list_images(test)]


@pytest.mark.parametrize("case", ["empty folder", "missing", "glob", "no run", "zero-shot and run",
                                  "two k", "method", "both"])
def test_cli_errors_are_one_line(case, setup, capsys, monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    img = setup["files"][0]
    args, match = {
        "empty folder": (["--run", setup["run"], tmp_path / "empty"], "no images to predict"),
        "missing": (["--run", setup["run"], tmp_path / "nope.jpg"], "no such file or folder"),
        "glob": (["--run", setup["run"], str(tmp_path / "*.jpg")], "matches no file"),
        "no run": ([img], "pass --run"),
        "zero-shot and run": (["--zero-shot", "--run", setup["run"], img], "drop --run"),
        "two k": (["--run", setup["run"], "--k", "5,10", img], "one --k value"),
        "method": (["--run", setup["run"], "--evaluator", "knn", img], "--evaluator': unknown evaluator 'knn'"),
        "both": (["--run", setup["run"], "--evaluator", "MCM", "--method", "S-MCM", img], "disagree"),
    }[case]
    code, out, err = run_cli(["predict", *args, "--device", "cpu", "--out", tmp_path / "o"], capsys, monkeypatch)
    one_line_error(code, err, match)
    assert not (tmp_path / "o").exists()


def test_moved_cache_names_the_fix(setup, capsys, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"].root, cache)
    run = make_fake_run(tmp_path / "run", iim.cache.open_cache(cache))
    moved = tmp_path / "moved"
    cache.rename(moved)
    code, _, err = run_cli(["predict", "--run", run, setup["files"][0], "--device", "cpu"], capsys, monkeypatch)
    one_line_error(code, err, "pass its new location with --cache")
    code, out, err = run_cli(["predict", "--run", run, "--cache", moved, setup["files"][0], "--device", "cpu",
                              "--workers", "0"], capsys, monkeypatch)
    assert code == 0, err


def _recorded_as(setup, tmp_path, **manifest):
    """A copy of the cache whose manifest records other weights, and a run on it."""
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"].root, cache)
    m = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps(dict(m, **manifest)))
    return make_fake_run(tmp_path / "run", iim.cache.open_cache(cache))


def test_weights_that_cannot_be_loaded_offline_name_the_fix(setup, capsys, monkeypatch, tmp_path, tiny_model):
    run = _recorded_as(setup, tmp_path, pretrained="openai", weights="openai")
    code, _, err = run_cli(["predict", "--run", run, setup["files"][0], "--device", "cpu"], capsys, monkeypatch)
    one_line_error(code, err, "--pretrained")
    # the same weights as a file: no hash to compare with a tag, the text prototypes tell
    torch.save(tiny_model[0].state_dict(), tmp_path / "same.pt")
    det = iim.Detector.from_run(run, device="cpu", pretrained=str(tmp_path / "same.pt"), k=K, alpha=ALPHA)
    det.load_encoder()
    assert any("same text prototypes" in n for n in det.notes)
    want = iim.Detector.from_run(setup["run"], device="cpu").predict(setup["files"][:3]).scores
    np.testing.assert_array_equal(det.predict(setup["files"][:3]).scores, want)
    other = iim.models.create_model("iim-test-tiny", "none")[0]
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    code, _, err = run_cli(["predict", "--run", run, setup["files"][0], "--device", "cpu", "--pretrained",
                            tmp_path / "other.pt"], capsys, monkeypatch)
    one_line_error(code, err, "text prototypes differ")


def test_a_moved_checkpoint_file_names_the_fix(setup, capsys, monkeypatch, tmp_path, tiny_model):
    torch.save(tiny_model[0].state_dict(), tmp_path / "w.pt")
    sha = iim.models.weights_id(str(tmp_path / "w.pt"))
    run = _recorded_as(setup, tmp_path, pretrained=str(tmp_path / "gone.pt"), weights=sha)
    code, _, err = run_cli(["predict", "--run", run, setup["files"][0], "--device", "cpu"], capsys, monkeypatch)
    one_line_error(code, err, "--pretrained FILE")
    det = iim.Detector.from_run(run, device="cpu", pretrained=str(tmp_path / "w.pt")).load_encoder()
    assert det.encoder is not None
    other = iim.models.create_model("iim-test-tiny", "none")[0]
    with torch.no_grad():
        next(other.parameters()).add_(0.05)
    torch.save(other.state_dict(), tmp_path / "w2.pt")
    with pytest.raises(IIMError, match="are not the weights cache"):
        iim.Detector.from_run(run, device="cpu", pretrained=str(tmp_path / "w2.pt")).load_encoder()


def test_readme_documents_every_flag(capsys, monkeypatch):
    code, out, _ = run_cli(["predict", "--help"], capsys, monkeypatch)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### `iim predict`")[1].split("\n## ")[0]
    flags = {w.strip(",.;:()[]") for w in out.split() if w.startswith("--") and w != "--help"}
    assert code == 0 and len(flags) > 12
    assert not [f for f in sorted(flags) if f"`{f.split('/')[0]}" not in section]
