"""`iim extract` and `iim cache` from the command line: kill-and-resume, one-line errors, cache tools."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import iim.cli
from imagegen import make_world, truncate, write_image

IIM = str(Path(sys.executable).with_name("iim"))
TINY = ["--model", "iim-test-tiny", "--pretrained", "none", "--workers", "0", "--no-progress"]


def run_cli(args, capsys, monkeypatch):
    """Run ``iim ARGS`` in-process through the real entry point; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["iim", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        iim.cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, capsys, monkeypatch):
    w = make_world(tmp_path / "w", classes=("a", "b", "c", "d"), train_per_class=1, test_per_class=40,
                   ood={"x": 1})
    args = ["extract", "-b", w["toml"], "--splits", "test", "--batch-size", "8", "--chunk-mb", "0.04", *TINY]
    assert run_cli([*args, "-o", tmp_path / "full"], capsys, monkeypatch)[0] == 0

    # the same command in a real process, SIGKILLed once its first chunk is on disk
    attrs = tmp_path / "cut" / "test" / "zarr.json"
    proc = subprocess.Popen([IIM, *map(str, args), "-o", str(tmp_path / "cut")],
                            env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, rows = time.time() + 120, 0
    while rows == 0 and proc.poll() is None and time.time() < deadline:
        try:
            rows = json.loads(attrs.read_text())["attributes"].get("rows_written", 0)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(attrs.read_text())["attributes"]
    assert proc.returncode == -signal.SIGKILL, "extraction finished before it could be killed"
    assert not state["complete"] and 0 < state["rows_written"] < 160 and state["rows_written"] % 8 == 0

    code, _, err = run_cli([*args, "-o", tmp_path / "cut"], capsys, monkeypatch)   # run it again
    assert code == 0 and f"resuming at row {state['rows_written']} of 160" in err
    full = zarr.open_group(str(tmp_path / "full"), mode="r")["test"]
    cut = zarr.open_group(str(tmp_path / "cut"), mode="r")["test"]
    assert cut.attrs["complete"] and cut["local"].chunks[0] == 8       # 20 chunks
    for name in ("global", "local", "label", "path"):
        np.testing.assert_array_equal(np.asarray(full[name][:]), np.asarray(cut[name][:]))


def one_line_error(code, err, match):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and "Traceback" not in err
    assert lines[-1].startswith("Error: ") and match in lines[-1], err
    assert sum(line.startswith("Error") for line in lines) == 1


@pytest.fixture()
def bad_worlds(tmp_path):
    """Worlds with one fault each, and an empty data root."""
    worlds = {}
    w = make_world(tmp_path / "empty_class")
    for f in (w["test"] / "bee").iterdir():
        f.unlink()
    worlds["empty_class"] = w["toml"]
    w = make_world(tmp_path / "bad_image")
    truncate(write_image(w["test"] / "cat" / "zz.jpg", 3))
    worlds["bad_image"] = w["toml"]
    w = make_world(tmp_path / "no_ood")
    (w["toml"]).write_text(w["toml"].read_text() + 'missing = "ood/missing"\n')
    worlds["no_ood"] = w["toml"]
    (tmp_path / "data").mkdir()
    worlds["data"] = tmp_path / "data"
    return worlds


ERROR_CASES = [
    ("unknown", ["-b", "imagenet-2k"], "unknown benchmark 'imagenet-2k'; known: demo, imagenet, imagenet100"),
    ("no_root", ["-b", "imagenet"], "no data root: pass --data-root DIR or set IIM_DATA_ROOT"),
    ("no_imagenet", ["-b", "imagenet", "--data-root", "{data}"], "ImageNet val not found (looked for"),
    ("no_toml", ["-b", "nowhere.toml"], "benchmark file not found: nowhere.toml"),
    ("empty_class", ["-b", "{empty_class}"], "class folder"),
    ("too_many_shots", ["-b", "{bad_image}", "--shots", "99"], "class 'ant' has 6 images, fewer than --shots 99"),
    ("bad_shots", ["-b", "{bad_image}", "--shots", "4,x"], "--shots takes integers separated by commas"),
    ("bad_image", ["-b", "{bad_image}", "--splits", "test"], "zz.jpg"),
    ("no_ood", ["-b", "{no_ood}", "--splits", "ood_missing"], "toy OOD set missing not found"),
    ("bad_split", ["-b", "{bad_image}", "--splits", "tests"], "unknown split 'tests'"),
    ("bad_model", ["-b", "{bad_image}", "--model", "ViT-Nope"], "unknown model 'ViT-Nope'"),
    ("no_ckpt", ["-b", "{bad_image}", "--pretrained", "/no/such/file.bin"], "checkpoint file not found"),
]


@pytest.mark.parametrize("case, args, match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_cli_errors_are_one_line(case, args, match, bad_worlds, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IIM_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    args = [a.format(**bad_worlds) for a in args]
    tiny = [a for a in TINY if not (case in ("bad_model", "no_ckpt") and a in TINY[:4])]
    code, _, err = run_cli(["extract", *args, *tiny, "-o", tmp_path / "out"], capsys, monkeypatch)
    one_line_error(code, err, match)


def test_cli_refuses_another_model_into_a_cache(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "c"
    code, _, err = run_cli(["extract", "-b", world["toml"], "--splits", "ood_noise", *TINY, "-o", out],
                           capsys, monkeypatch)
    assert code == 0 and "complete splits ood_noise" in err
    code, _, err = run_cli(["extract", "-b", world["toml"], "--model", "ViT-B-16", "--pretrained", "none",
                            "-o", out], capsys, monkeypatch)
    one_line_error(code, err, "was made with model='iim-test-tiny', not 'ViT-B-16'; use another --out")


def test_default_out_and_cache_commands(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["extract", "-b", world["toml"], "--shots", "1", *TINY], capsys, monkeypatch)
    assert code == 0 and (tmp_path / "cache" / "toy" / "manifest.json").is_file()

    code, out, _ = run_cli(["cache", "info", "cache/toy"], capsys, monkeypatch)
    assert code == 0 and "iim-test-tiny" in out and "[3, 32]" in out
    assert [line.split()[:5] for line in out.splitlines() if "train_shots1_seed1" in line] == [
        ["train_shots1_seed1", "3", "1", "-", "complete"]]   # crop "-": one view, no crop
    code, out, _ = run_cli(["cache", "ls"], capsys, monkeypatch)
    assert code == 0 and out.startswith("cache/toy") and "splits: ood_noise, ood_stripes, test, train_shots1_seed1" in out
    code, out, _ = run_cli(["cache", "verify", "cache/toy"], capsys, monkeypatch)
    assert code == 0 and "OK (4 complete split(s))" in out

    zarr.open_group("cache/toy", mode="a")["test"]["local"][5] = 0      # a row that was never written
    code, out, err = run_cli(["cache", "verify", "cache/toy"], capsys, monkeypatch)
    assert "all-zero local features at row 5" in err
    one_line_error(code, err, "1 problem(s) found")
    code, out, _ = run_cli(["cache", "verify", "--quick", "cache/toy"], capsys, monkeypatch)
    assert code == 0 and "features not read" in out
    code, _, err = run_cli(["cache", "info", "nowhere"], capsys, monkeypatch)
    one_line_error(code, err, "no cache at nowhere")


def test_list_benchmarks(capsys, monkeypatch):
    code, out, _ = run_cli(["extract", "--list"], capsys, monkeypatch)
    assert code == 0 and "imagenet500-hard" in out and "inaturalist, sun, places, texture" in out


def test_help_documents_every_flag(capsys, monkeypatch):
    code, out, _ = run_cli(["extract", "--help"], capsys, monkeypatch)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    flags = {w.strip(",.;:()[]") for w in out.split() if w.startswith("--") and w != "--help"}
    assert code == 0 and len(flags) > 15
    assert not [f for f in sorted(flags) if f"`{f.split('/')[0]}" not in readme]
