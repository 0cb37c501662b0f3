"""`torchrun -m iim extract`: two CPU ranks (gloo) write the same cache as one process, and a SIGKILL of
one rank mid-split, then the same command again, completes it identically."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from imagegen import make_world
from iim.dist import torchrun_env
from iim.extract.run import extract

SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMESTAMPS = {"created", "finished"}
# --batch-size 2 and ~2 rows of `local` per chunk (64 patches x 32 dims x 2 bytes): 8 chunks of a 16-row test split
ARGS = ["--splits", "test,ood", "--shots", "2", "--batch-size", "2", "--chunk-mb", str(2 * 64 * 32 * 2 / 2**20),
        "--model", "iim-test-tiny", "--pretrained", "none", "--workers", "0", "--no-progress", "--skip-bad"]
# run as torchrun's script: rank 1 SIGKILLs itself once its first chunk (data, then row state) is stored
KILLER = """
import os, signal, sys
from iim.cache.store import SplitWriter
real = SplitWriter._flush
def flush(self, final):
    before = self._next
    real(self, final)
    if self.rank == 1 and self._next > before:
        os.kill(os.getpid(), signal.SIGKILL)
SplitWriter._flush = flush
from iim.cli import main
sys.argv[0] = "iim"
main()
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("w"), test_per_class=5, ood={"noise": 7})
    (w["test"] / "bee" / "fake.png").write_text("not an image")         # a skipped row, on some rank
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(entry: list[str], args, nproc: int = 2):
    """``python -m torch.distributed.run --nproc_per_node N ENTRY ARGS`` -> CompletedProcess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), *entry, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def assert_same_cache(a: Path, b: Path):
    """Every array and every non-timestamp attribute of every node equal; manifests equal but timestamps."""
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMESTAMPS} == {k: v for k, v in mb.items() if k not in TIMESTAMPS}
    za, zb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = sorted(k for k, _ in za.members(max_depth=None))
    assert names == sorted(k for k, _ in zb.members(max_depth=None)) and "test/row_state" not in names
    for name in names:
        x, y = za[name], zb[name]
        assert {k: v for k, v in x.attrs.items() if k not in TIMESTAMPS} == \
            {k: v for k, v in y.attrs.items() if k not in TIMESTAMPS}, name
        if isinstance(x, zarr.Array):
            assert x.chunks == y.chunks, name
            np.testing.assert_array_equal(np.asarray(x[:]), np.asarray(y[:]), err_msg=name)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """One process, in-process: the cache every distributed run must equal."""
    out = tmp_path_factory.mktemp("ref") / "c"
    extract(str(world["toml"]), out, splits=["test", "ood"], shots=[2], batch_size=2,
            chunk_bytes=2 * 64 * 32 * 2, model="iim-test-tiny", pretrained="none", workers=0, progress=False,
            skip_bad=True, log=lambda m: None)
    return out


def test_two_ranks_equal_one_process(world, reference, tmp_path):
    res = torchrun(["-m", "iim", "extract"], ["-b", world["toml"], *ARGS, "--out", tmp_path / "c"])
    assert res.returncode == 0, res.stderr[-3000:]
    root = zarr.open_group(str(reference), mode="r")
    assert root["test"]["local"].nchunks >= 6 and root["test"].attrs["skipped_paths"] == ["bee/fake.png"]
    assert_same_cache(reference, tmp_path / "c")


def test_sigkill_of_one_rank_then_the_same_command_completes_identically(world, reference, tmp_path):
    killer = tmp_path / "kill_rank1.py"
    killer.write_text(KILLER)
    args = ["extract", "-b", world["toml"], *ARGS, "--out", tmp_path / "c"]
    cut = torchrun([str(killer)], args)
    assert cut.returncode != 0
    test = zarr.open_group(str(tmp_path / "c"), mode="r")["test"]
    state = np.asarray(test["row_state"][:])
    assert not test.attrs["complete"] and (state >= 0).any() and (state < 0).any()   # killed mid-split
    assert not (tmp_path / "c" / ".extract.lock").exists()     # rank 0, stopped by torchrun, let it go
    res = torchrun(["-m", "iim"], args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_cache(reference, tmp_path / "c")


def test_torchrun_env_is_read_from_the_environment():
    assert torchrun_env({}) is None
    assert tuple(torchrun_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})) == (3, 8, 1)


def _writer(cache, rank=0, world=1):
    return cache.writer("ood_x", n=10, views=1, hw=4, dim=2, labels=[-1] * 10, paths=[f"{i}.png" for i in range(10)],
                        chunk_rows=3, rank=rank, world=world)


def test_a_chunk_is_done_only_once_its_state_is_stored(tmp_path):
    from iim.cache import create_cache
    from helpers import random_manifest
    cache = create_cache(tmp_path / "c", random_manifest())
    rows = np.random.default_rng(0).standard_normal((10, 1, 4, 2)).astype(np.float16)
    w0 = _writer(cache, 0, 2)
    assert w0.spans == [(0, 3), (6, 9)]
    w0._local[3:6] = rows[3:6]                 # rank 1's chunk: data stored, state not (killed in between)
    w1 = _writer(cache, 1, 2)
    assert w1.spans == [(3, 6), (9, 10)]
    w1.mark_skipped(4)
    for lo, hi in w1.spans:
        w1.append(rows[lo:hi, :, 0], rows[lo:hi])
    w1.finish_share()
    with pytest.raises(Exception, match="rank 0 stopped at row 0 of 10; not complete"):
        w0.finish()                            # rank 0's share is missing: never complete
    assert _writer(cache, 0, 1).spans == [(0, 3), (6, 9)]      # one process now: the rest, whoever owned it
    for lo, hi in w0.spans:
        w0.append(rows[lo:hi, :, 0], rows[lo:hi])
    w0.finish()
    split = zarr.open_group(str(cache.root), mode="r")["ood_x"]
    assert split.attrs["complete"] and split.attrs["rows_written"] == 10 and split.attrs["skipped_rows"] == [4]
    assert split.attrs["skipped_paths"] == ["4.png"] and "row_state" not in split
    np.testing.assert_array_equal(split["local"][:], rows)


def test_a_split_without_row_state_resumes_from_rows_written(tmp_path):
    from iim.cache import create_cache
    from helpers import random_manifest
    cache = create_cache(tmp_path / "c", random_manifest())
    w = _writer(cache)
    rows = np.ones((10, 1, 4, 2), np.float16)
    w.append(rows[:3, :, 0], rows[:3])                         # one chunk; rows_written = 3
    del w.group["row_state"]                                   # a split begun before row states (or killed at finish)
    again = _writer(cache)
    assert again.spans == [(3, 6), (6, 9), (9, 10)]


def test_rank_0_never_marks_a_split_complete_before_every_rank_wrote(tmp_path):
    from iim.cache import create_cache
    from helpers import random_manifest
    cache = create_cache(tmp_path / "c", random_manifest())
    w0, rows = _writer(cache, 0, 2), np.ones((10, 1, 4, 2), np.float16)
    for lo, hi in w0.spans:
        w0.append(rows[lo:hi, :, 0], rows[lo:hi])
    with pytest.raises(Exception, match=r"2 of 4 chunks not written \(first: rows from 3\)"):
        w0.finish()
    assert not cache.is_complete("ood_x") and cache.split_status("ood_x")["rows_written"] == 3
