"""Bad TOML benchmarks given to `iim extract` (issue 26): missing keys, wrong types, duplicate or empty class
names, names with '/', '..' or shell characters are one line, exit code 2, and nothing is written (the
default --out is cache/<name> in the working folder); class names that look like paths are only text."""
import json

import pytest

from imagegen import make_world
from test_score_cli import run_cli

BODY = 'train = "w/train"\ntest = "w/test"\n[ood]\nnoise = "w/ood/noise"\n'
TINY = ["--model", "iim-test-tiny", "--pretrained", "none", "--workers", "0", "--no-progress"]


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """tmp_path/w (2 classes, ant and bee) and tmp_path/cwd, the working folder."""
    make_world(tmp_path / "w", classes=("ant", "bee"), train_per_class=1, test_per_class=1, ood={"noise": 1})
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    def write(text):
        path = tmp_path / "bench.toml"
        path.write_text(text)
        return path
    return tmp_path, write


def _everything(tmp_path):
    return {str(p) for p in tmp_path.rglob("*")} | {p.name for p in tmp_path.parent.iterdir()}


@pytest.mark.parametrize("text, message", [
    (BODY, "'name' must be"),                                              # missing
    ('name = 3\n' + BODY, "'name' must be"),                               # wrong type
    ('name = "../up"\n' + BODY, "'name' must be"),
    ('name = ".."\n' + BODY, "'name' must be"),
    ('name = "a/b"\n' + BODY, "'name' must be"),
    ('name = "x;touch pwned"\n' + BODY, "'name' must be"),
    ('name = "$(touch pwned)"\n' + BODY, "'name' must be"),
    (f'name = "{"a" * 300}"\n' + BODY, "at most 100 characters"),
    ('name = "t"\ndescription = 5\n' + BODY, "'description' must be a string"),
    ('name = "t"\ntrain = 3\n', "'train' must be a folder path"),
    ('name = "t"\n', "at least one of 'train' and 'test'"),
    ('name = "t"\nclassnames = [1, 2]\n' + BODY, "'classnames' must be a list of strings"),
    ('name = "t"\nclassnames = ["x", "x"]\n' + BODY, "'x' names folders ant, bee"),
    ('name = "t"\nclassnames = ["Cat", "cat"]\n' + BODY, "'Cat' and 'cat' name folders ant, bee"),
    ('name = "t"\nclassnames = ["big cat", " big  cat"]\n' + BODY, "name folders ant, bee (the same prompt"),
    ('name = "t"\nclassnames = ["", "bee"]\n' + BODY, "class name of folder 'ant' is empty"),
    ('name = "t"\nclassnames = { bee = "  " }\n' + BODY, "class name of folder 'bee' is empty"),
    ('name = "t"\nclassnames = ["a\\nb", "bee"]\n' + BODY, "holds a control character"),
    ('name = "t"\n' + BODY + '".." = "w/ood/noise"\n', "OOD set name '..'"),
    ('name = "t"\n' + BODY + '"a/b" = "w/ood/noise"\n', "OOD set name 'a/b'"),
    ('name = "t"\n' + BODY + 'x = 3\n', "[ood] must be a table"),
    ('name = "t"\nshots = 3\n' + BODY, "unknown key 'shots'"),
    ('name = \n', "invalid TOML"),
])
def test_a_bad_benchmark_is_one_line_and_writes_nothing(bench, capsys, text, message):
    tmp_path, write = bench
    path = write(text)
    before = _everything(tmp_path)
    code, _, err = run_cli(capsys, "extract", "-b", path, *TINY)          # default --out: cache/<name>
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1 and message in err, err
    assert _everything(tmp_path) == before


def test_class_names_that_look_like_paths_or_commands_are_only_text(bench, capsys):
    tmp_path, write = bench
    names = ["../../escaped", "a/b;$(touch pwned) `id`"]
    path = write('name = "t"\nclassnames = ' + json.dumps(names) + "\n" + BODY)
    before = _everything(tmp_path)
    code, _, err = run_cli(capsys, "extract", "-b", path, *TINY, "--out", tmp_path / "out")
    assert code == 0, err
    from iim.cache import open_cache
    assert open_cache(tmp_path / "out").classnames == names
    new = _everything(tmp_path) - before
    assert new and all(p.startswith(str(tmp_path / "out")) for p in new), sorted(new)[:5]
