"""Caches at fsspec URLs (memory://, file://): extraction writes the same cache as into a folder, training and
scoring read it to the same contexts and metrics, ``iim cache`` inspects it, runs record the URL as given;
damage, the lock and a bad scheme are one-line errors. In one process (memory:// lives per process)."""
import json
import uuid

import fsspec
import numpy as np
import pytest
import torch

from helpers import make_random_cache, random_manifest
from test_extract_cli import run_cli
from imagegen import make_world
from iim import Detector
from iim.cache import open_cache
from iim.cache.location import RemotePath, as_path, record
from iim.errors import IIMError
from iim.lock import folder_lock

TINY = ["--model", "iim-test-tiny", "--pretrained", "none", "--workers", "0", "--no-progress"]
FAST = ["--k", "8", "--n-neg", "4", "--n-ctx", "4", "--batch-size", "8", "--no-progress", "--epochs", "1"]
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


def run_iim(monkeypatch, capsys, *args):
    return run_cli(args, capsys, monkeypatch)


def one_line_error(code, out, err, match):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and match in lines[0], err


def memory_url() -> str:
    return f"memory://iim-tests/{uuid.uuid4().hex}/cache"


def raw(root):
    """Every array of every split, read with zarr directly (not through iim's reader)."""
    import zarr
    from iim.cache.location import zarr_store
    g = zarr.open_group(store=zarr_store(as_path(root)), mode="r")
    names = open_cache(root).split_names()
    return {(n, k): np.asarray(g[n][k][:]) for n in names for k in ("global", "local", "label", "path")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), classes=("a", "b", "c"), train_per_class=2,
                      test_per_class=3, ood={"x": 4})


def test_extract_train_score_at_urls_equal_a_folder(world, tmp_path, monkeypatch, capsys):
    where = {"folder": tmp_path / "folder", "file": f"file://{tmp_path}/viafile",
             "memory": memory_url()}
    results, contexts, predicted = {}, {}, {}
    images = sorted(world["test"].rglob("*.png"))[:4]
    assert images
    for kind, out in where.items():
        code, _, err = run_iim(monkeypatch, capsys, "extract", "-b", world["toml"], "--shots", 2, "--seed", 1,
                           "-o", out, "--batch-size", 4, *TINY)
        assert code == 0, err
        code, out_, err = run_iim(monkeypatch, capsys, "cache", "verify", out)
        assert code == 0 and "OK (3 complete split(s))" in out_, err
        run = tmp_path / f"run-{kind}"
        code, _, err = run_iim(monkeypatch, capsys, "train", "--cache", out, "--out", run, *FAST)
        assert code == 0, err
        config = json.loads((run / "config.json").read_text())
        assert config["cache"] == (str(tmp_path / "viafile") if kind == "file" else str(out))   # URL kept
        contexts[kind] = torch.load(run / "checkpoint.pt", weights_only=False)["contexts"]
        # the cache recorded in the run is found again (a memory:// URL, not a bogus local path)
        code, _, err = run_iim(monkeypatch, capsys, "score", "--run", run, "--k", 3, "--no-plots", "--no-progress")
        assert code == 0, err
        res = json.loads((run / "results.json").read_text())
        assert res["cache"] == config["cache"]
        results[kind] = {k: res[k] for k in ("metrics", "id", "ood_sets")}
        det = Detector.from_run(run, device="cpu", k=3)        # iim predict: the run's recorded cache
        predicted[kind] = (det.threshold, det.predict(images).scores.tolist())
    folder = raw(where["folder"])
    for kind in ("file", "memory"):
        other = raw(where[kind])
        assert other.keys() == folder.keys() and all(np.array_equal(folder[k], other[k]) for k in folder), kind
        assert results[kind] == results["folder"] and results[kind]["metrics"], kind
        assert predicted[kind] == predicted["folder"], kind
        for key in contexts["folder"]:
            assert torch.equal(contexts[kind][key], contexts["folder"][key]), (kind, key)
    manifests = [{k: v for k, v in open_cache(w).manifest.items() if k != "created"} for w in where.values()]
    assert manifests[0] == manifests[1] == manifests[2]


def test_cache_info_verify_on_a_memory_url(tmp_path, monkeypatch, capsys):
    url = memory_url()
    c = make_random_cache(url, n_test=12, ood={"far": 7}, manifest=random_manifest(embed_dim=32, num_patches=64))
    assert isinstance(c.root, RemotePath) and str(c.root) == url
    code, out, err = run_iim(monkeypatch, capsys, "cache", "info", url)
    assert code == 0, err
    assert out.startswith(url) and "memory://" in out.splitlines()[1] and "test" in out and "complete" in out
    code, out, err = run_iim(monkeypatch, capsys, "cache", "verify", url)
    assert code == 0 and f"{url}: OK (3 complete split(s))" in out, err

    # damage is found on the object store as in a folder: a deleted chunk object, named by its URL
    fs = fsspec.filesystem("memory")
    chunk = sorted(p for p in fs.find(c.root.path + "/test/local") if "/c/" in p)[0]
    fs.rm_file(chunk)
    code, _, err = run_iim(monkeypatch, capsys, "cache", "verify", "--quick", url)
    assert code == 2 and "missing chunk file memory://" in err and f"{c.root.path}/test/local/c/" in err, err
    one_line_error(*run_iim(monkeypatch, capsys, "score", "--zero-shot", "--cache", url, "--out", tmp_path / "zs",
                        "--no-plots"), "were never stored")


def test_extraction_lock_on_a_memory_url():
    root = as_path(memory_url())
    root.mkdir()
    with folder_lock(root, ".extract.lock", "iim extract"):
        assert (root / ".extract.lock").is_file()
        with pytest.raises(IIMError, match="another 'iim extract'"):
            with folder_lock(root, ".extract.lock", "iim extract"):
                pass
    assert not (root / ".extract.lock").exists()
    (root / ".extract.lock").write_text(f"{__import__('socket').gethostname()} 999999999")   # killed owner
    with folder_lock(root, ".extract.lock", "iim extract"):
        pass


def test_bad_scheme_is_one_line(tmp_path, monkeypatch, capsys):
    for args in (["cache", "info", "nosuchfs://x/y"],
                 ["train", "--cache", "nosuchfs://x/y", "--out", tmp_path / "r", *FAST],
                 ["extract", "-b", "x.toml", "-o", "nosuchfs://x/y", *TINY]):
        one_line_error(*run_iim(monkeypatch, capsys, *args), "nosuchfs://x/y")
    with pytest.raises(IIMError, match="Protocol not known"):
        open_cache("nosuchfs://x/y")


def test_locations():
    assert as_path("cache/x") == as_path("cache/x") and not isinstance(as_path("cache/x"), RemotePath)
    assert str(as_path("file:///tmp/a/b")) == "/tmp/a/b"
    r = as_path("memory://bucket/a/")
    assert str(r) == "memory://bucket/a" and str(r / "b" / "c.json") == "memory://bucket/a/b/c.json"
    assert (r / "b").name == "b" and (r / "b").parent == r
    assert record("memory://bucket/a") == "memory://bucket/a" and record("rel") == str(as_path("rel").resolve())
    with pytest.raises(IIMError, match="no cache at memory://bucket/none"):
        open_cache("memory://bucket/none")


def test_hdf5_round_trip_and_ls_at_memory_urls(tmp_path, monkeypatch, capsys):
    a_url, b_url = memory_url(), memory_url()
    a = make_random_cache(a_url, n_test=12, ood={"far": 7}, manifest=random_manifest(embed_dim=32, num_patches=64))
    code, _, err = run_iim(monkeypatch, capsys, "cache", "export", a_url, tmp_path / "a.h5")
    assert code == 0, err
    code, _, err = run_iim(monkeypatch, capsys, "cache", "import", tmp_path / "a.h5", b_url)
    assert code == 0, err
    b = open_cache(b_url)
    assert b.manifest == a.manifest and b.split_names() == a.split_names()
    ra, rb = raw(a_url), raw(b_url)
    assert ra.keys() == rb.keys() and all(np.array_equal(ra[k], rb[k]) for k in ra)
    parent = a_url.rsplit("/", 1)[0]
    code, out, err = run_iim(monkeypatch, capsys, "cache", "ls", parent)
    assert code == 0 and out.startswith(a_url) and "splits: ood_far, test, train_shots2_seed1" in out, err


def test_s3_without_s3fs_says_what_to_install():
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    with pytest.raises(IIMError, match="cannot open s3://bucket/c: .*s3fs"):
        open_cache("s3://bucket/c")
