"""HDF5 interchange: export -> import is exact, partial splits are refused, non-HDF5 input is one line."""
import json

import numpy as np
import pytest

from helpers import make_random_cache, random_manifest
from test_extract_cli import run_cli
from iim.cache import open_cache
from iim.cache.verify import check_cache


def iim_cli(monkeypatch, capsys, *args):
    return run_cli(args, capsys, monkeypatch)


def raw(c, name):
    g = c._zroot[name]
    return {k: np.asarray(g[k][:]) for k in ("global", "local", "label", "path")}


def test_round_trip_exact(tmp_path, monkeypatch, capsys):
    a = make_random_cache(tmp_path / "a", n_test=12, ood={"far": 7},
                          manifest=random_manifest(embed_dim=32, num_patches=64))
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "export", "--format", "hdf5", a.root, tmp_path / "a.h5")
    assert code == 0, err
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "import", tmp_path / "a.h5", tmp_path / "b")
    assert code == 0, err
    b = open_cache(tmp_path / "b")
    assert b.manifest == a.manifest and b.split_names() == a.split_names() == b.splits()
    assert np.array_equal(b.global_prototypes(), a.global_prototypes())
    for name in a.split_names():
        ra, rb = raw(a, name), raw(b, name)
        for k in ra:
            assert ra[k].dtype == rb[k].dtype and np.array_equal(ra[k], rb[k]), (name, k)
    assert check_cache(a) == [] and check_cache(b) == []
    metrics = []
    for c, out in ((a, "zs_a"), (b, "zs_b")):
        code, _, err = iim_cli(monkeypatch, capsys, "score", "--zero-shot", "--cache", c.root,
                               "--out", tmp_path / out, "--k", 3, "--no-plots")
        assert code == 0, err
        res = json.loads((tmp_path / out / "results.json").read_text())
        metrics.append({k: res[k] for k in ("metrics", "id", "ood_sets")})
    assert metrics[0] == metrics[1] and metrics[0]["metrics"]


def test_partial_split_refused(tmp_path, monkeypatch, capsys):
    c = make_random_cache(tmp_path / "a", n_test=8, ood={"far": 5})
    w = c.writer("ood_near", n=6, views=1, hw=64, dim=32, labels=[-1] * 6, paths=[f"n{i}" for i in range(6)],
                 chunk_rows=2)
    w.append(np.zeros((2, 1, 32), np.float16), np.zeros((2, 1, 64, 32), np.float16))
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "export", c.root, tmp_path / "a.h5")
    assert code == 2 and "ood_near" in err and "--allow-incomplete" in err and "Traceback" not in err
    assert list(tmp_path.glob("*.h5*")) == []                 # nothing half-written
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "export", "--allow-incomplete", c.root, tmp_path / "a.h5")
    assert code == 0, err
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "import", tmp_path / "a.h5", tmp_path / "b")
    assert code == 0, err
    b = open_cache(tmp_path / "b")
    assert not b.is_complete("ood_near") and b.split_status("ood_near")["rows_written"] == 2


def test_not_hdf5_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "x.h5"
    bad.write_text("not hdf5\n")
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "import", bad, tmp_path / "b")
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and "not an HDF5 file" in lines[0]
    assert not (tmp_path / "b").exists()


# ---- an export damaged or changed before import (issue 26): detected, nothing written ----------------------
@pytest.fixture
def export(tmp_path, monkeypatch, capsys):
    c = make_random_cache(tmp_path / "a", n_test=12, ood={"far": 7})
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "export", c.root, tmp_path / "a.h5")
    assert code == 0, err
    return tmp_path / "a.h5"


def _refused(monkeypatch, capsys, path, tmp_path, match):
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "import", path, tmp_path / "b")
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("keep", [0.3, 0.95, 0.9995])
def test_a_truncated_export_is_refused(export, tmp_path, monkeypatch, capsys, keep):
    import faults
    faults.truncate(export, keep)
    _refused(monkeypatch, capsys, export, tmp_path, "damaged or cut short")


@pytest.mark.parametrize("part", ["test/local", "ood_far/global", "test/label", "test/path", "global_proto",
                                  "test/attrs", "manifest", "flipped byte"])
def test_a_changed_export_is_refused(export, tmp_path, monkeypatch, capsys, part):
    import h5py
    if part == "flipped byte":                      # a bit of a feature, as a bad copy would do
        data = bytearray(export.read_bytes())
        with h5py.File(export, "r") as f:
            at = f["test/local"].id.get_chunk_info(0).byte_offset + 1000
        data[at] ^= 0x40
        export.write_bytes(bytes(data))
        part = "test/local"
    else:
        with h5py.File(export, "r+") as f:
            if part == "manifest":
                man = json.loads(f.attrs["manifest"])
                f.attrs["manifest"] = json.dumps({**man, "classnames": man["classnames"][::-1]})
            elif part == "test/attrs":
                f["test"].attrs["attrs"] = f["test"].attrs["attrs"].replace("true", "false", 1)
            elif part == "test/path":
                paths = f["test/path"][:]
                paths[0] = b"elsewhere.png"
                f["test/path"][:] = paths
            else:
                d = f[part]
                row = d[1]
                d[1] = row + 1 if part != "test/label" else (row + 1) % 4
    _refused(monkeypatch, capsys, export, tmp_path, f"{part} differs from the export")


def test_an_export_without_checksums_still_imports_with_a_warning(export, tmp_path, monkeypatch, capsys, caplog):
    import h5py
    with h5py.File(export, "r+") as f:
        del f.attrs["sha256"]
    code, _, err = iim_cli(monkeypatch, capsys, "cache", "import", export, tmp_path / "b")
    assert code == 0, err
    assert "exported without checksums" in err + caplog.text
    assert open_cache(tmp_path / "b").splits() == open_cache(tmp_path / "a").splits()
