"""The layers contract (pyproject.toml, [tool.importlinter]): no import runs from a lower layer up to a
higher one (the command line on top, the ground floor below). Checked with import-linter."""
from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter", reason="the dev extra's import-linter checks the layers")
from importlinter.cli import lint_imports  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lint(config: Path) -> int:
    return lint_imports(config_filename=str(config), no_cache=True)


def test_the_layers_contract_is_kept(capsys):
    assert lint(PYPROJECT) == 0, capsys.readouterr().out


def test_an_upward_import_breaks_it(tmp_path, capsys):
    """The check can fail: the same contract with two layers swapped (cli below demo) is broken."""
    text = PYPROJECT.read_text()
    swapped = text.replace('    "cli",\n    "demo",\n', '    "demo",\n    "cli",\n')
    assert swapped != text
    (tmp_path / "pyproject.toml").write_text(swapped)
    assert lint(tmp_path / "pyproject.toml") == 1
    assert "BROKEN" in capsys.readouterr().out

