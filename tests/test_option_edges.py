"""Option edge cases on every command (issue 26): zero, negative, nan, inf, float32-overflowing and huge
values give one line ``Error: ...`` naming the flag, exit code 2, and nothing written anywhere."""
from pathlib import Path

import pytest

from helpers import make_fake_run
from imagegen import make_world
from iim.extract.run import extract
from iim.score.pipeline import prepare_run
from iim.score.run import run_score
from test_score_cli import run_cli

HUGE = str(10**12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    w = make_world(root / "world", test_per_class=2, train_per_class=2, ood={"noise": 2})
    cache = extract(str(w["toml"]), root / "cache", shots=[2], seeds=[1], batch_size=5, model="iim-test-tiny",
                    pretrained="none", workers=0, progress=False, log=lambda m: None)
    run = make_fake_run(root / "run", cache)
    run_score(prepare_run(run), k=5, alpha=0.5, device="cpu", plot=False, progress=False)
    (root / "vocab").mkdir()
    (root / "vocab" / "noun.x.txt").write_text("dog\ntree\n")
    image = next((root / "world" / "test").rglob("*.png"))
    base = {
        "extract": ["-b", w["toml"], "--splits", "test", "--model", "iim-test-tiny", "--pretrained", "none",
                    "--no-progress"],
        "train": ["--cache", cache.root, "--k", "8", "--no-progress"],
        "score": ["--run", run, "--no-plots", "--no-progress"],
        "sweep": ["--run", run, "--no-progress"],
        "grid": ["--cache", cache.root, "--grid", "n_neg=0", "--grid", "k=8", "--seed", "1", "--no-progress"],
        "predict": ["--run", run, image, "--no-progress"],
        "negatives": ["--cache", cache.root, "--vocab", root / "vocab"],
        "prototypes": [run],
        "demo": ["--no-progress", "--world", root / "demo-world", "--cache", root / "demo-cache"],
    }
    return root, base


CASES = {
    "extract": [("--shots", "0"), ("--seed", "-1"), ("--views", "0"), ("--views", HUGE), ("--batch-size", "0"),
                ("--batch-size", HUGE), ("--workers", "-1"), ("--crop-scale", "nan"), ("--chunk-mb", "nan"),
                ("--chunk-mb", "inf")],
    "train": [("--k", "0"), ("--shots", "0"), ("--views", "0"), ("--seed", "-1"), ("--batch-size", HUGE),
              ("--epochs", "0"), ("--epochs", HUGE), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "1e300"),
              ("--n-neg", "-1"), ("--lambda-neg", "nan"), ("--momentum", "inf"), ("--logit-scale", "nan")],
    "score": [("--k", "0"), ("--k", HUGE), ("--alpha", "nan"), ("--alpha", "inf"), ("--alpha", "-1"),
              ("--T", "nan"), ("--chunk", "0"), ("--chunk", HUGE), ("--knn-k", "0"), ("--groups", "0")],
    "sweep": [("--k", "0"), ("--alpha", "nan"), ("--alpha", "inf"), ("--T", "nan")],
    "grid": [("--k", "0"), ("--alpha", "nan"), ("--alpha", "inf"), ("--seed", "-1"), ("--jobs", "0"),
              ("--pack", "0"), ("--grid", "epochs=0"), ("--grid", f"epochs={HUGE}"), ("--grid", "lr=nan"),
              ("--grid", f"batch_size={HUGE}"), ("--grid", "shots=0"), ("--grid", "views=0")],
    "predict": [("--k", "0"), ("--alpha", "nan"), ("--alpha", "inf"), ("--T", "inf"), ("--threshold", "nan"),
                ("--threshold", "inf"), ("--tpr", "nan"), ("--tpr", "0"), ("--batch-size", HUGE),
                ("--workers", "-1")],
    "negatives": [("--keep", "nan"), ("--keep", "inf"), ("--quantile", "nan")],
    "prototypes": [("--seed", "-1"), ("--perplexity", "nan"), ("--perplexity", "inf")],
    "demo": [("--seed", "-1"), ("--epochs", "0"), ("--epochs", HUGE)],
}


def _tree(root: Path) -> set:
    return {(str(p), p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("command, flag, value", [(c, f, v) for c, cases in CASES.items() for f, v in cases])
def test_a_bad_option_value_is_one_line_and_writes_nothing(world, capsys, command, flag, value):
    root, base = world
    before = _tree(root)
    code, _, err = run_cli(capsys, command, *base[command], flag, value, "--out", root / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert flag in lines[0] or f"{flag[2:]}=" in lines[0], err          # names the option ("k=... is out of range")
    assert _tree(root) == before              # nothing new, nothing changed (the run folder included)
