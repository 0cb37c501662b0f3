"""Options as data: every option declared in a table reaches the CLI, the resume check and the report.

A new training option is ONE field in iim.train.config.TrainConfig; these tests go through the table,
so a field that does not reach one of the three fails here.
"""
import dataclasses

import click
import pytest

from iim.cli import load_command
from iim.errors import IIMError
from iim.options import Grid, check, click_options, declared, flag_name, option, result_keys
from iim.score import summary
from iim.score.options import RESULT_KEYS as SCORE_KEYS, SWEEP_SKIPS, ScoreOptions
from iim.train import checkpoint as ck
from iim.train.config import RESULT_KEYS, TrainConfig

BASE = TrainConfig(cache="cache/c", split="train_shots2_seed1", out="runs/r")


def other_value(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return None if value else "other"


def changed(field):
    cfg = dataclasses.asdict(BASE)
    if field.name == "split":
        return dict(cfg, split="train_shots4_seed1")
    return dict(cfg, **{field.name: other_value(cfg[field.name])})


def params(command_name):
    return {p.name: p for p in load_command(command_name).params}


@pytest.mark.parametrize("field", declared(TrainConfig), ids=lambda f: f.name)
def test_every_training_option_reaches_the_cli_the_resume_check_and_the_report(field):
    m = field.metadata
    cli = params("train")
    if m["cli"]:
        p = cli[field.name]
        assert flag_name(field) in p.opts and p.default == field.default and p.help == m["help"]
    else:                     # set from the shared / split-selection flags
        assert field.name in {"cache", "split", "out", "seed", "device"}
    assert (field.name in RESULT_KEYS) == m["result"]
    fingerprint = {"model": "m"}
    old = {"config": dataclasses.asdict(BASE), "cache_fingerprint": fingerprint}
    new = changed(field)
    runs = [{"run": "a", "run_config": old["config"]}, {"run": "b", "run_config": new}]
    if m["result"]:
        with pytest.raises(IIMError, match=flag_name(field)):
            ck.check_compatible(old, new, fingerprint)
        if field.name != "seed":                  # runs that differ in their seed are what report averages
            with pytest.raises(IIMError, match=field.name):
                summary._check_same_experiment(runs)
    else:
        ck.check_compatible(old, new, fingerprint)
        summary._check_same_experiment(runs)


@pytest.mark.parametrize("field", declared(ScoreOptions), ids=lambda f: f.name)
def test_every_scoring_option_reaches_score_sweep_and_the_report(field):
    assert field.name in params("score")
    assert (field.name in params("sweep")) == (field.name not in SWEEP_SKIPS)
    assert (field.name in params("grid")) == (field.name not in SWEEP_SKIPS)
    assert (field.name in summary.MUST_MATCH) == field.metadata["result"] == (field.name in SCORE_KEYS)


def test_a_new_field_is_one_edit():
    @dataclasses.dataclass
    class Extended(TrainConfig):
        new_knob: float = option(0.5, "A knob.", type=click.FloatRange(0, 1))
        new_switch: bool = option(True, "A switch.", result=False)

    @click.command()
    @click_options(Extended)
    def cmd(**kw):
        return kw

    kw = cmd.main(["--new-knob", "0.25", "--no-new-switch"], standalone_mode=False)
    assert kw["new_knob"] == 0.25 and kw["new_switch"] is False and kw["n_ctx"] == 16 and kw["k"] is None
    assert "new_knob" in result_keys(Extended) and "new_switch" not in result_keys(Extended)
    with pytest.raises(IIMError, match=r"--new-knob 2"):
        check(Extended(cache="c", split="s", out="o", new_knob=2))


def test_python_callers_get_the_clis_validation():
    with pytest.raises(IIMError, match="--epochs 0"):
        check(dataclasses.replace(BASE, epochs=0))
    with pytest.raises(IIMError, match="--attention"):
        check(dataclasses.replace(BASE, attention="fast"))
    check(BASE)


def test_grid_type():
    g = Grid(integer=True)
    assert g.convert("10,1,5,5", None, None) == [1, 5, 10]
    assert Grid().convert("0:1:0.25", None, None) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert g.convert(50, None, None) == [50]
    with pytest.raises(click.BadParameter, match="cannot read"):
        Grid().convert("2:1:0.5", None, None)
    with pytest.raises(click.BadParameter, match="whole numbers"):
        g.convert("1.5", None, None)
