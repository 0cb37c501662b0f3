"""``iim train`` from the command line: short form, refusals, and resume after a SIGKILL."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iim.cli import main
from iim.train.checkpoint import load_checkpoint
from iim.cli.train import train as train_command
from test_train import make_train_cache

FAST = ["--k", "8", "--n-neg", "4", "--n-ctx", "4", "--batch-size", "8", "--no-progress"]
CLI = "import sys; from iim.cli import main; sys.argv[0] = 'iim'; main()"


def iim(monkeypatch, capsys, *args):
    """Run ``iim <args>`` in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["iim", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def test_short_form_uses_the_only_train_split_and_default_run_folder(tmp_path, monkeypatch, capsys):
    make_train_cache(tmp_path / "cache", shots=2)
    monkeypatch.chdir(tmp_path)
    code, err = iim(monkeypatch, capsys, "train", "--cache", "cache", "--epochs", "1", *FAST)
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "runs" / "synthetic-shots2-seed1-iim")
    assert ckpt["complete"] and ckpt["config"]["split"] == "train_shots2_seed1" and ckpt["config"]["seed"] == 1


def test_split_choice(tmp_path, monkeypatch, capsys):
    make_train_cache(tmp_path / "cache", shots=2, seeds=(1, 2))
    code, err = iim(monkeypatch, capsys, "train", "--cache", tmp_path / "cache", *FAST)
    assert code == 2 and err.startswith("Error: ") and "train_shots2_seed1, train_shots2_seed2" in err
    assert "--shots K --seed S" in err and len(err.strip().splitlines()) == 1
    code, err = iim(monkeypatch, capsys, "train", "--cache", tmp_path / "cache", "--shots", "4", *FAST)
    assert code == 2 and "no train split for --shots 4" in err and "train_shots2_seed1" in err
    out = tmp_path / "run"
    code, err = iim(monkeypatch, capsys, "train", "--cache", tmp_path / "cache", "--seed", "2", "--epochs",
                    "1", "--out", out, *FAST)
    assert code == 0, err
    cfg = load_checkpoint(out)["config"]
    assert cfg["split"] == "train_shots2_seed2" and cfg["seed"] == 2


def test_views_pick_between_splits_of_the_same_shots_and_seed(tmp_path, monkeypatch, capsys):
    make_train_cache(tmp_path / "cache", shots=2, views=1)
    make_train_cache(tmp_path / "cache", shots=2, views=3, views_in_name=True)
    monkeypatch.chdir(tmp_path)
    code, err = iim(monkeypatch, capsys, "train", "--cache", "cache", "--shots", "2", "--seed", "1", *FAST)
    assert code == 2 and "train_shots2_seed1, train_shots2_seed1_views3" in err and "--views V" in err
    code, err = iim(monkeypatch, capsys, "train", "--cache", "cache", "--views", "3", "--epochs", "1", *FAST)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "runs" / "synthetic-shots2-seed1-views3-iim")["config"]["split"] == "train_shots2_seed1_views3"


def test_cli_refusals_are_one_line_errors(tmp_path, monkeypatch, capsys):
    make_train_cache(tmp_path / "cache", shots=2)
    make_train_cache(tmp_path / "half", shots=2, finish=False)
    cases = [
        (["--cache", tmp_path / "half"], "incomplete"),
        (["--cache", tmp_path / "nowhere"], "no cache at"),
        (["--cache", tmp_path / "cache", "--k", "40"], "2k <= 64"),
        (["--cache", tmp_path / "cache", "--resume", "--overwrite"], "exclude each other"),
        (["--cache", tmp_path / "cache", "--shots", "2", "--seed", "3"], "no split 'train_shots2_seed3'"),
    ]
    for args, message in cases:
        code, err = iim(monkeypatch, capsys, "train", *args, "--out", tmp_path / "r", "--no-progress")
        assert code == 2 and err.startswith("Error: ") and message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_flag_is_documented_in_the_readme():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("### `iim train`")
    section = readme[start:re.search(r"\n##+ ", readme[start + 1:]).start() + start + 1]
    flags = [opt for p in train_command.params for opt in p.opts + p.secondary_opts if opt.startswith("--")]
    missing = [f for f in flags if not re.search(re.escape(f) + r"\b", section)]
    assert not missing, f"README's iim train section does not document {missing}"


def test_resume_after_sigkill_ends_with_the_same_contexts(tmp_path, monkeypatch, capsys):
    """A run killed mid-training (SIGKILL, after its first checkpoint) and resumed with --resume ends
    bit-identical to an uninterrupted run with the same seed (one thread everywhere)."""
    make_train_cache(tmp_path / "cache", shots=32)              # 128 images: 32 steps per epoch
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    args = ["--cache", str(tmp_path / "cache"), "--epochs", "3", "--batch-size", "4", "--k", "8",
            "--n-neg", "4", "--n-ctx", "4", "--no-progress"]

    def start(out, *extra):
        return subprocess.Popen([sys.executable, "-c", CLI, "train", *args, "--out", str(out), *extra],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    victim = start(tmp_path / "killed")
    ckpt_file = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt_file.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
    interrupted = load_checkpoint(ckpt_file)
    assert not interrupted["complete"] and 1 <= interrupted["epoch"] < 3

    resumed = start(tmp_path / "killed", "--resume")
    code, err = iim(monkeypatch, capsys, "train", *args, "--out", tmp_path / "ref")   # meanwhile
    assert code == 0, err
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resuming {tmp_path / 'killed'} after epoch {interrupted['epoch']}/3" in stdout

    a, b = load_checkpoint(tmp_path / "ref"), load_checkpoint(tmp_path / "killed")
    assert a["complete"] and b["complete"]
    assert torch.equal(a["contexts"]["ctx"], b["contexts"]["ctx"])
    assert torch.equal(a["contexts"]["neg_ctx"], b["contexts"]["neg_ctx"])
    assert torch.equal(a["prototypes"]["local"], b["prototypes"]["local"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_attention_flag_reaches_the_encoder_and_flex_is_refused_on_cpu(tmp_path, monkeypatch, capsys):
    make_train_cache(tmp_path / "cache", shots=2)
    base = ["train", "--cache", tmp_path / "cache", "--epochs", "1", *FAST]
    code, err = iim(monkeypatch, capsys, *base, "--out", tmp_path / "flex", "--attention", "flex", "--device", "cpu")
    assert code == 2 and err.startswith("Error: --attention flex trains on CUDA only")
    assert len(err.strip().splitlines()) == 1
    code, err = iim(monkeypatch, capsys, *base, "--out", tmp_path / "bmm", "--attention", "bmm")
    assert code == 0, err
    cfg = load_checkpoint(tmp_path / "bmm")["config"]
    assert cfg["attention"] == "bmm" and cfg["compile"] == "off"


def test_compile_takes_an_optional_mode(tmp_path, monkeypatch, capsys):
    """--compile alone means torch.compile's default mode; a mode may follow; off by default."""
    import iim.cli.train as cli
    make_train_cache(tmp_path / "cache", shots=2)
    seen = []
    monkeypatch.setattr(cli, "run_training", lambda cfg, **kw: seen.append(cfg.compile))
    for extra in ([], ["--compile"], ["--compile", "reduce-overhead"]):
        code, err = iim(monkeypatch, capsys, "train", "--cache", tmp_path / "cache", *extra, *FAST)
        assert code == 0, err
    assert seen == ["off", "default", "reduce-overhead"]
    code, err = iim(monkeypatch, capsys, "train", "--cache", tmp_path / "cache", "--compile", "fast", *FAST)
    assert code == 2 and "'fast' is not one of" in err
