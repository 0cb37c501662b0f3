"""The light ground: ``iim --version``, ``iim --help`` and ``import iim`` import neither torch nor open_clip
(they took 4.5 s, 8-11 s under load, when ``import iim`` registered the model configs)."""
import json
import subprocess
import sys

import pytest

from iim._version import __version__
from iim.cli import COMMANDS, load_command

HEAVY = ("torch", "open_clip", "numpy", "zarr", "sklearn", "matplotlib")

PROBE = """
import json, sys
from click.testing import CliRunner
import iim.cli
out = {}
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(iim.cli.iim, args, prog_name="iim")
    out[" ".join(args)] = dict(code=r.exit_code, output=r.output)
out["heavy"] = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps(out))
"""


def probe(*argvs):
    """Run the commands ``argvs`` through click's CliRunner in a fresh interpreter; its outputs and which
    of :data:`HEAVY` it imported."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_version_and_help_import_no_torch():
    out = probe(["--version"], ["--help"])
    assert out["heavy"] == []
    assert out["--version"] == dict(code=0, output=f"iim, version {__version__}\n")
    assert out["--help"]["code"] == 0
    listed = out["--help"]["output"].split("Commands:")[1]
    assert [line.split()[0] for line in listed.strip().splitlines()] == list(COMMANDS)


def test_a_command_does_import_its_library():
    """The probe can fail: ``iim score --help`` builds the command, whose options come from the library."""
    out = probe(["score", "--help"])
    assert out["score --help"]["code"] == 0 and "--alpha" in out["score --help"]["output"]
    assert "torch" in out["heavy"]


def test_import_iim_is_light():
    code = ("import sys, iim; print(sorted(m for m in %r if m in sys.modules)); print(iim.__version__)"
            % (HEAVY,))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[:2] == ["[]", __version__]


def test_iim_detector_is_still_there():
    import iim
    from iim.predict import Detector
    assert iim.Detector is Detector
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        iim.Nope


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_lines_are_the_commands_own(name):
    """``iim --help`` lists COMMANDS' lines without loading the commands: each must be the command's own."""
    assert COMMANDS[name][1] == load_command(name).get_short_help_str(limit=1000)
