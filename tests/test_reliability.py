"""Nothing silently wrong (issue 16): damaged caches, concurrent runs, destructive refusals, I/O faults.
Each test injects one fault (tests/faults.py) and expects a one-line refusal, not wrong numbers."""
import json
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
    f = faults.delete_chunk(cache.root, "train_k2_s1", "local")
    code, _, err = iim(monkeypatch, capsys, "train", "--cache", cache.root, "--out", tmp_path / "r", *FAST)
    refused(code, err, "split train_k2_s1", str(f))
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
