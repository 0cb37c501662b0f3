"""Nothing silently wrong (issue 16): damaged caches, concurrent runs, destructive refusals, I/O faults.
Each test injects one fault (tests/faults.py) and expects a one-line refusal, not wrong numbers."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

import faults
from helpers import make_fake_run, make_random_cache, random_manifest
from iim.cli import main
from iim.train.checkpoint import load_checkpoint
from test_train import make_train_cache

FAST = ["--k", "8", "--n-neg", "4", "--n-ctx", "4", "--batch-size", "8", "--no-progress", "--epochs", "1"]
pytestmark = pytest.mark.usefixtures("one_thread")


def iim(monkeypatch, capsys, *args):
    """``iim ARGS`` in-process -> (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["iim", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def refused(code, err, *words):
    assert code == 2, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def cache(tmp_path):
    return make_random_cache(tmp_path / "cache", hw=16, n_test=40,
                             manifest=random_manifest(embed_dim=32, num_patches=16))


# ---- 1, 2: a missing chunk never reads as zeros -------------------------------------------------

@pytest.mark.parametrize("split,array", [("test", "local"), ("test", "global"), ("ood_far", "local"),
                                         ("test", "label")])
def test_missing_feature_chunk_is_refused_by_score_and_quick_verify(cache, tmp_path, monkeypatch, capsys,
                                                                    split, array):
    run = make_fake_run(tmp_path / "run", cache)
    f = faults.delete_chunk(cache.root, split, array)
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-progress")
    refused(code, err, f"split {split}", "rows 0..", str(f))
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", "--quick", cache.root)
    assert code == 2 and str(f) in err


def test_missing_train_chunk_is_refused_by_train(cache, tmp_path, monkeypatch, capsys):
    f = faults.delete_chunk(cache.root, "train_shots2_seed1", "local")
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", tmp_path / "r", *FAST)
    refused(code, err, "split train_shots2_seed1", str(f))
    assert not (tmp_path / "r").exists()


def test_deleted_prototype_chunk_fails_verify_score_and_train(cache, tmp_path, monkeypatch, capsys):
    root = cache.root
    shutil.rmtree(root / "global_proto" / "c")
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", root)
    assert code == 2 and "global prototypes were never stored" in err
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", root, "--out", tmp_path / "r", *FAST)
    refused(code, err, "global prototypes")
    code, _, err = iim(monkeypatch, capsys, "score", "--cache", root, "--zero-shot", "--out", tmp_path / "zs", "--k", 5,
                       "--no-progress")
    refused(code, err, "global prototypes")


# ---- 3, 4: --overwrite refuses before deleting; one trainer per run folder ----------------------

def test_overwrite_refuses_before_deleting_the_old_run(cache, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", run, *FAST)
    assert code == 0, err
    (run / "results.json").write_text("{}")
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", run, "--overwrite",
                       *FAST, "--n-ctx", 100)
    assert code == 2, err
    assert (run / "checkpoint.pt").read_bytes() == before and (run / "results.json").exists()


def test_a_run_folder_is_locked_while_training(cache, tmp_path, monkeypatch, capsys):
    import os
    import socket
    from iim.train.loop import RUN_LOCK
    run = tmp_path / "r"
    run.mkdir()
    (run / RUN_LOCK).write_text(f"{socket.gethostname()} {os.getppid()}")          # a live owner
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", run, *FAST)
    refused(code, err, "another 'iim train'", str(run))
    assert not (run / "checkpoint.pt").exists()
    (run / RUN_LOCK).write_text(f"{socket.gethostname()} 999999999")               # killed owner
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", run, *FAST)
    assert code == 0, err
    assert not (run / RUN_LOCK).exists()


def test_two_trainers_racing_into_one_folder(cache, tmp_path):
    run = tmp_path / "r"
    args = ("train", "--cache", cache.root, "--out", run, *FAST[:-1], 3)
    results = faults.race([faults.iim_command(*args), faults.iim_command(*args)],
                          env={"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"})
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    loser = max(results)[1]          # refused: locked out, or (if it came late) the run is already there
    assert "another 'iim train'" in loser or "already holds a training run" in loser, loser
    assert load_checkpoint(run)["complete"]


# ---- 6: report refuses unfinished runs unless asked ----------------------------------------------

def scored_runs(cache, tmp_path, monkeypatch, capsys, epochs=(3, 3)):
    runs = [make_fake_run(tmp_path / "runs" / f"s{i}", cache, seed=i, epoch=e, epochs=3)
            for i, e in enumerate(epochs, 1)]
    for run in runs:
        code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-plots", "--no-progress")
        assert code == 0, err
    return runs


def test_report_refuses_an_unfinished_run_unless_allowed(cache, tmp_path, monkeypatch, capsys):
    runs = scored_runs(cache, tmp_path, monkeypatch, capsys, epochs=(3, 2))
    code, _, err = iim(monkeypatch, capsys, "report", *runs)
    refused(code, err, str(runs[1]), "epoch 2 of 3", "--allow-incomplete")
    code, out, err = iim(monkeypatch, capsys, "report", *runs, "--allow-incomplete", "--out", tmp_path / "sum")
    assert code == 0, err
    assert "(1 unfinished)" in out and str(runs[1]) in err
    summary = json.loads((tmp_path / "sum" / "summary.json").read_text())
    assert summary["incomplete"] == [{"run": str(runs[1]), "epoch": 2, "epochs": 3}]
    assert "unfinished run" in (tmp_path / "sum" / "summary.md").read_text()


def test_report_metrics_results_keys_and_twice_listed_runs(cache, tmp_path, monkeypatch, capsys):
    runs = scored_runs(cache, tmp_path, monkeypatch, capsys)
    for bad in ("bogus", "", "fpr95,,nope"):
        code, _, err = iim(monkeypatch, capsys, "report", *runs, "--metrics", bad)
        refused(code, err, "--metrics", "fpr95")
    res = json.loads((runs[1] / "results.json").read_text())
    del res["metrics"]
    (runs[1] / "results.json").write_text(json.dumps(res))
    code, _, err = iim(monkeypatch, capsys, "report", *runs)
    refused(code, err, "lacks metrics", "score the run again")
    code, _, err = iim(monkeypatch, capsys, "report", runs[0], tmp_path / "runs" / ".." / "runs" / "s1")
    refused(code, err, "listed twice", str(runs[0]), "runs/../runs/s1")


# ---- 7: a missing OOD set never silently leaves the average -------------------------------------

def test_missing_or_incomplete_ood_set_is_refused_unless_named(cache, tmp_path, monkeypatch, capsys):
    run = make_fake_run(tmp_path / "run", cache)
    code, out, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-plots", "--no-progress")
    assert code == 0 and "Average over 2 OOD set(s): far, near" in out
    assert json.loads((run / "results.json").read_text())["average_over"] == ["far", "near"]
    cache._zroot["ood_near"].attrs.update(complete=False)                  # interrupted
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-plots", "--no-progress")
    refused(code, err, "ood_near", "incomplete", "--ood far")
    shutil.rmtree(cache.root / "ood_near")
    cache.update_manifest(splits={"ood_near": {"complete": True}})          # recorded, then deleted
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-plots", "--no-progress")
    refused(code, err, "ood_near", "missing")
    code, out, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-plots", "--no-progress",
                         "--ood", "far")
    assert code == 0, err
    assert "Average over 1 OOD set(s): far (left out with --ood: near)" in out
    assert json.loads((run / "results.json").read_text())["average_over"] == ["far"]
    code, out, err = iim(monkeypatch, capsys, "sweep", "--run", run, "--k", "5,6", "--alpha", 1, "--no-progress")
    refused(code, err, "ood_near")


# ---- 8: labels -------------------------------------------------------------------------------------

def test_verify_checks_labels_against_class_folders(tmp_path, monkeypatch, capsys):
    classes = ["apple", "boat", "cat", "dog"]
    c = make_random_cache(tmp_path / "c", hw=16, manifest=random_manifest(
        embed_dim=32, num_patches=16, class_dirs=[f"d_{n}" for n in classes]))
    for name in ("test", "train_shots2_seed1"):                   # paths as extraction writes them
        labels = c.split(name).labels
        c._zroot[name]["path"][:] = np.array([f"d_{classes[y]}/{i}.png" for i, y in enumerate(labels)],
                                             dtype=object)
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", c.root)
    assert code == 0, err
    labels = c._zroot["train_shots2_seed1"]["label"][:]
    labels[3] = (labels[3] + 1) % 4                         # another valid class
    c._zroot["train_shots2_seed1"]["label"][:] = labels
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", "--quick", c.root)
    assert code == 2 and "train_shots2_seed1: 1 label(s) disagree with their class folder, e.g. row 3" in err


def test_score_refuses_test_labels_outside_the_classes(cache, tmp_path, monkeypatch, capsys):
    run = make_fake_run(tmp_path / "run", cache)
    labels = cache._zroot["test"]["label"][:]
    labels[7] = 99
    cache._zroot["test"]["label"][:] = labels
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-plots", "--no-progress")
    refused(code, err, "row 7 has label 99", "0..3")


# ---- tracebacks -> one-line errors: options ---------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (("score", "--alpha", "inf"), ("--alpha", "not a finite number")),
    (("score", "--alpha", "nan"), ("--alpha", "not a finite number")),
    (("score", "--T", "nan"), ("--T", "not a finite number")),
    (("sweep", "--alpha", "inf"), ("--alpha", "not a finite number")),
    (("sweep", "--alpha", "0:1:0.0000001"), ("10,000,001 values", "at most 10,000")),
    (("sweep", "--k", "1:60:1", "--alpha", "0:1:0.005"), ("12,060 settings", "at most 10,000")),
])
def test_score_options_are_validated(cache, tmp_path, monkeypatch, capsys, args, words):
    run = make_fake_run(tmp_path / "run", cache)
    code, _, err = iim(monkeypatch, capsys, *args, "--run", run, "--no-progress")
    refused(code, err, *words)
    assert not (run / "results.json").exists() and not (run / "sweep.csv").exists()


@pytest.mark.parametrize("args", [("--lr", "inf"), ("--lr", "nan"), ("--warmup-lr", "inf"),
                                  ("--lambda-neg", "nan"), ("--seed", 2**32)])
def test_train_options_are_validated(cache, tmp_path, monkeypatch, capsys, args):
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", tmp_path / "r", *FAST, *args)
    refused(code, err, args[0])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [("demo", "--seeds", "-1"), ("extract", "-b", "demo", "--seed", "-1")])
def test_seeds_outside_the_range_are_refused_before_writing(tmp_path, monkeypatch, capsys, args):
    code, _, err = iim(monkeypatch, capsys, *args, "--out", tmp_path / "o")
    refused(code, err, "0<=x<=4294967295")
    assert not (tmp_path / "o").exists()


# ---- tracebacks -> one-line errors: unwritable folders, full disks --------------------------------

def test_unwritable_output_folders_are_refused_before_work(cache, tmp_path, monkeypatch, capsys, unwritable):
    run = make_fake_run(tmp_path / "run", cache)
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-progress")   # scored once
    assert code == 0, err
    ro = tmp_path / "ro"
    ro.mkdir()
    unwritable(ro)
    cases = [("score", "--run", run, "--k", 5, "--no-progress", "--out", ro / "s"),
             ("sweep", "--run", run, "--k", "5,6", "--alpha", 1, "--no-progress", "--out", ro),
             ("train", "--cache", cache.root, "--out", ro / "t", *FAST),
             ("report", run, "--out", ro / "sum")]
    for args in cases:
        code, _, err = iim(monkeypatch, capsys, *args)
        refused(code, err, "cannot write", str(ro))
    unwritable(run)
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-progress")
    refused(code, err, "cannot write", str(run))
    unwritable(cache.root)
    code, _, err = iim(monkeypatch, capsys, "extract", "-b", "demo", "--model", "iim-test-tiny",
                       "--pretrained", "none", "--out", cache.root)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_disk_full_while_training_keeps_the_last_checkpoint(cache, tmp_path, monkeypatch, capsys):
    run, three = tmp_path / "r", (*FAST[:-1], 3)
    faults.disk_full(monkeypatch, "iim.train.checkpoint.atomic_write", after=1)   # epoch 2's save fails
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", run, *three)
    refused(code, err, "no space left", "is kept", "--resume")
    assert load_checkpoint(run)["epoch"] == 1 and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", run, *three, "--resume")
    assert code == 0, err
    assert load_checkpoint(run)["complete"]


def test_disk_full_while_scoring_is_one_line(cache, tmp_path, monkeypatch, capsys):
    run = make_fake_run(tmp_path / "run", cache)
    faults.disk_full(monkeypatch, "iim.score.report.atomic_write")
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 5, "--no-progress")
    refused(code, err, "no space left", "run the same command again")


def test_disk_full_while_extracting_keeps_whole_chunks_and_resumes(tmp_path, monkeypatch, capsys):
    from imagegen import make_world
    world = make_world(tmp_path / "w", test_per_class=6)
    args = ("extract", "-b", world["toml"], "--model", "iim-test-tiny", "--pretrained", "none", "--splits",
            "test", "--workers", 0, "--batch-size", 4, "--chunk-mb", 0.0001, "--no-progress",
            "--out", tmp_path / "c")
    from iim.cache.store import SplitWriter
    real = SplitWriter._flush
    calls = {"n": 0}

    def flush(self, final):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(28, "No space left on device")
        return real(self, final)
    monkeypatch.setattr(SplitWriter, "_flush", flush)
    code, _, err = iim(monkeypatch, capsys, *args)
    refused(code, err, "no space left", "extraction resumes")
    monkeypatch.setattr(SplitWriter, "_flush", real)
    code, _, err = iim(monkeypatch, capsys, *args)
    assert code == 0, err
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", tmp_path / "c")
    assert code == 0, err


# ---- tracebacks -> one-line errors: damaged metadata and chunks ---------------------------------

@pytest.mark.parametrize("target", ["zarr.json", "test/zarr.json", "test/local/zarr.json",
                                    "test/local/c/0/0/0/0"])
def test_truncated_metadata_or_chunk_is_named_in_one_line(cache, tmp_path, monkeypatch, capsys, target):
    run = make_fake_run(tmp_path / "run", cache)
    bad = faults.truncate(cache.root / target)
    commands = [("cache", "verify", cache.root), ("score", "--run", run, "--k", 5, "--no-plots", "--no-progress")]
    if target.endswith("zarr.json"):
        commands += [("cache", "info", cache.root), ("cache", "verify", "--quick", cache.root)]
    if target.count("/") <= 1:               # the cache's or a split group's metadata: train lists them
        commands += [("train", "--cache", cache.root, "--out", tmp_path / "r", *FAST)]
    for args in commands:
        code, _, err = iim(monkeypatch, capsys, *args)
        assert code == 2 and str(bad) in err and "Traceback" not in err, (args, err)
        assert err.strip().splitlines()[-1].startswith("Error: "), err


def test_verify_follows_the_progress_switch(cache, monkeypatch, capsys):
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", cache.root)     # stderr is not a terminal
    assert code == 0 and "verify test" not in err
    code, _, err = iim(monkeypatch, capsys, "cache", "verify", "--no-progress", cache.root)
    assert code == 0 and err == ""


# ---- clearer messages -------------------------------------------------------------------------------

def test_clearer_messages(cache, tmp_path, monkeypatch, capsys):
    run = make_fake_run(tmp_path / "run", cache)
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--k", 0, "--no-progress")
    refused(code, err, "k must be at least 1")
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", tmp_path / "t", *FAST,
                       "--epochs", 0)
    refused(code, err, "epochs must be at least 1")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "checkpoint.pt").write_bytes(b"\x80\x02not a pickle at all" * 10)
    code, _, err = iim(monkeypatch, capsys, "score", "--run", garbage, "--no-progress")
    refused(code, err, "not a readable iim checkpoint")
    assert "weights_only" not in err
    moved = tmp_path / "moved"
    shutil.move(cache.root, moved)
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--no-progress")
    refused(code, err, "(moved?)", "--cache DIR")
    code, _, err = iim(monkeypatch, capsys, "score", "--run", run, "--cache", moved, "--k", 5, "--no-plots",
                       "--no-progress")
    assert code == 0, err


def test_cache_ls_lists_every_cache_and_marks_a_broken_one(tmp_path, monkeypatch, capsys):
    for name in ("a", "b", "c"):
        make_random_cache(tmp_path / name, hw=16)
    (tmp_path / "b" / "manifest.json").write_text("{ not json")
    code, out, err = iim(monkeypatch, capsys, "cache", "ls", tmp_path)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "BROKEN" in lines[1] and "BROKEN" not in lines[0] + lines[2]
