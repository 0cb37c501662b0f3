"""The recipes as data (src/iim/recipes/*.toml): the only copy of their values. The code's defaults are
built from them (and unchanged), and the README's tables and the Makefile say what the files say."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iim.errors import IIMError
from iim.recipes import NAMES, SCORED, __main__ as recipes_main, as_text, get, load_recipe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first markdown table after the line starting with ``heading``."""
    lines = README[README.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


# ---- the loader ----------------------------------------------------------------------------------
def test_every_recipe_loads_and_a_copy_is_returned():
    assert set(NAMES) == {p.stem for p in (ROOT / "src/iim/recipes").glob("*.toml")}
    demo = load_recipe("demo")
    demo["k"] = -1
    assert load_recipe("demo")["k"] == get("demo", "k") != -1
    assert get("paper", "train.n_neg") == load_recipe("paper")["train"]["n_neg"]


def test_unknown_recipe_or_key_is_a_one_line_error(capsys):
    with pytest.raises(IIMError, match="unknown recipe 'nope': choose one of paper, official, demo"):
        load_recipe("nope")
    with pytest.raises(IIMError, match="recipe 'paper' has no 'train.kk'"):
        get("paper", "train.kk")
    with pytest.raises(IIMError, match="has no 'k.x'"):
        get("demo", "k.x")
    assert recipes_main.main(["get", "demo", "kk"]) == 2
    assert capsys.readouterr().err == "iim.recipes: recipe 'demo' has no 'kk'\n"
    assert recipes_main.main(["get", "demo"]) == 2
    assert recipes_main.main(["get", "demo", "k"]) == 0
    assert capsys.readouterr().out == "8\n"


def test_values_as_the_command_line_writes_them():
    assert [as_text(v) for v in (True, False, ["a", "b"], 8, 2.5e-4, "x")] == ["on", "off", "a,b", "8", "0.00025", "x"]


# ---- the code's defaults: built from the files, unchanged ----------------------------------------
def test_the_defaults_are_the_files_and_what_they_were():
    """The values before they moved into the files, pinned once here: the move changed nothing."""
    from iim.demo.run import DemoSettings
    from iim.train.config import METHOD_DEFAULTS, NOT_USED, RECIPES
    assert RECIPES == {
        "paper": dict(class_specific=False, train_projection=False, denominators="paper", div_diagonal=False),
        "official": dict(class_specific=True, train_projection=True, denominators="official", div_diagonal=True)}
    assert METHOD_DEFAULTS["iim"] == dict(k=50, n_neg=300, lambda_neg=5.0, lambda_div=0.5, epochs=50,
                                          batch_size=32, lr=2.5e-4, pos_views=NOT_USED)
    assert tuple(RECIPES) == SCORED == ("paper", "official")      # iim train / iim score --recipe's choices
    assert DemoSettings() == DemoSettings(
        model="iim-demo", pretrained="demo", shots=4, views=4, crop_scale=0.85, k=8, n_neg=20, epochs=50,
        batch_size=8, lr=2.5e-4, alpha=1.0, logit_scale=None, recipes=("paper", "official"),
        baselines=("coop", "locoop", "localprompt"), locoop_top_k=4, baseline_epochs=None, negatives=True,
        neg_groups=1)
    assert {k: getattr(DemoSettings(), k) for k in load_recipe("demo")} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in load_recipe("demo").items()}
    assert {k: METHOD_DEFAULTS["iim"][k] for k in load_recipe("paper")["train"]} == load_recipe("paper")["train"]


# ---- the README's tables -------------------------------------------------------------------------
def per_method(cell: str) -> dict:
    """``"iim, coop, locoop 50; localprompt 30"`` -> {iim: 50, coop: 50, locoop: 50, localprompt: 30}
    (``coop/locoop 0`` names two methods)."""
    out, pending = {}, []
    for part in re.split("[;,]", cell):
        words = part.split()
        pending += words[0].split("/")
        if len(words) == 2:
            out.update({m: float(words[1]) for m in pending})
            pending = []
    assert not pending, cell
    return out


def test_per_method_reads_the_readme_forms():
    assert per_method("iim 300, localprompt 300, coop/locoop 0") == dict(iim=300, localprompt=300, coop=0, locoop=0)
    assert per_method("iim 2.5e-4; coop, locoop, localprompt 0.002") == dict(
        iim=2.5e-4, coop=0.002, locoop=0.002, localprompt=0.002)


@pytest.mark.parametrize("key", ["k", "n_neg", "lambda_neg", "lambda_div", "epochs", "batch_size", "lr"])
def test_the_train_table_says_each_methods_default(key):
    from iim.train.config import METHOD_DEFAULTS, NOT_USED
    rows = {r[0].split("`")[1]: r[1] for r in table_after("### `iim train`")}
    want = {m: d[key] for m, d in METHOD_DEFAULTS.items() if d[key] != NOT_USED}
    assert per_method(rows["--" + key.replace("_", "-")]) == pytest.approx(want)


def test_the_recipe_table_says_the_switches():
    rows = table_after("**Recipes** (SPEC §9)")
    for name in ("paper", "official"):
        switches = load_recipe(name)["switches"]
        column = 1 + ("paper", "official").index(name)
        assert {r[0].strip("`-").replace("-", "_"): r[column].strip("`") for r in rows} == {
            k: as_text(v) for k, v in switches.items()}


def cell_equals(cell: str, value) -> bool:
    cell = cell.replace("`", "").strip()
    if isinstance(value, (bool, str, list)):
        return cell.replace(" ", "") == as_text(value)
    return float(cell) == value


def test_the_demo_table_says_the_demo_recipe():
    demo, seen = load_recipe("demo"), []
    for keys, values, _ in table_after("**IIM settings for the demo**"):
        keys = [k.strip("` ") for k in keys.split(",")]
        values = values.split(";" if ";" in values else ",") if len(keys) > 1 else [values]
        assert len(keys) == len(values), keys
        for key, cell in zip(keys, values):
            assert cell_equals(cell, demo[key]), (key, cell, demo[key])
        seen += keys
    assert sorted(seen) == sorted(demo)


def test_the_readmes_demo_commands_use_the_demo_recipe():
    flags = {"--k": "k", "--n-neg": "n_neg", "--batch-size": "batch_size"}
    lines = [line for line in README.splitlines() if re.match(r"iim (train|score) .*cache/demo|iim score --run runs/demo", line)]
    assert len(lines) >= 4
    for line in lines:
        for flag, value in re.findall(r"(--k|--n-neg|--batch-size) (\S+)", line):
            assert int(value) == get("demo", flags[flag]), line


# ---- the Makefile ---------------------------------------------------------------------------------
def make_n(*args: str) -> str:
    """``make -n`` with this interpreter as the venv's python (it reads this checkout's recipes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(["make", "-n", *args, f"BIN={Path(sys.executable).parent}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_takes_its_defaults_from_the_recipes():
    demo, paper = load_recipe("demo"), load_recipe("paper")["train"]
    out = make_n("reproduce", "ablation", "DATASET=demo")
    assert f"--model {demo['model']} --pretrained {demo['pretrained']} --views {demo['views']} --out cache/demo" in out
    assert f"--grid n_neg=0,{demo['n_neg']} --grid k={demo['k']} --k {demo['k']} " in out
    assert f"--grid batch_size={demo['batch_size']} " in out and f"--groups {demo['neg_groups']} " in out
    out = make_n("reproduce", "ablation")
    assert f"--grid n_neg=0,{paper['n_neg']} --grid k={paper['k']} --k {paper['k']} " in out
    assert "batch_size" not in out and "--groups" not in out and "--negatives neg/imagenet --out " in out
    out = make_n("reproduce", "DATASET=demo", "NEG=7", "TRAIN_K=3")          # the command line still wins
    assert "--grid n_neg=0,7 --grid k=3 --k 3 " in out
