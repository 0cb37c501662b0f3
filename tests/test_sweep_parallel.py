"""A training grid over several processes: the deal of groups to workers, and torchrun (2 CPU ranks on
gloo) and ``--jobs 2`` giving the same point folders and the same results.csv as one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_random_cache
from iim.sweep.parallel import assign, check_jobs, worker_threads
from iim.dist import torchrun_env
from iim.errors import IIMError
from iim.train.checkpoint import load_checkpoint
from test_score_cli import run_cli
from test_sweep_grid import add_train_split

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: the reference sweep on one thread


# ---- the deal ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes, workers", [([3, 1, 1, 2, 2, 1], 2), ([1] * 7, 3), ([5, 4, 3, 3, 2, 2, 1], 3),
                                            ([2, 2], 4), ([], 2)])
def test_assign_deals_every_group_once_balanced_by_points(sizes, workers):
    shares = assign(sizes, workers)
    assert shares == assign(list(sizes), workers)                  # the same deal on every rank
    assert len(shares) == workers and sorted(g for s in shares for g in s) == list(range(len(sizes)))
    assert all(s == sorted(s) for s in shares)                     # grid order within a worker
    loads = [sum(sizes[g] for g in s) for s in shares]
    assert max(loads) - min(loads) <= max(sizes, default=0)
    # largest first onto the least loaded: the straightforward greedy, step by step
    load, want = [0] * workers, [[] for _ in range(workers)]
    for g in sorted(range(len(sizes)), key=lambda g: (-sizes[g], g)):
        w = load.index(min(load))
        load[w] += sizes[g]
        want[w].append(g)
    assert shares == [sorted(s) for s in want]


def test_assign_examples():
    assert assign([1] * 5, 2) == [[0, 2, 4], [1, 3]]
    assert assign([3, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert assign([2, 2], 3) == [[0], [1], []]


def test_bad_jobs_and_torchrun_env():
    for bad in (0, -2, True, "2"):
        with pytest.raises(IIMError, match="--jobs .*at least 1"):
            check_jobs(bad)
    with pytest.raises(IIMError, match="drop --jobs"):
        check_jobs(2, torchrun_env({"RANK": "0", "WORLD_SIZE": "2"}))
    check_jobs(None, torchrun_env({"RANK": "0", "WORLD_SIZE": "2"}))
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == (1, 2, 0)
    with pytest.raises(IIMError, match="RANK=2 WORLD_SIZE=2"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2"})


# ---- several processes against one ------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A cache with two support sets and the reference: a 2 (n_neg) x 2 (seed) grid in one process, in two
    joint groups of 2 (``--pack 2``), so that two workers get one group each."""
    root = tmp_path_factory.mktemp("parallel")
    cache = make_random_cache(root / "cache")
    add_train_split(cache, 2)
    args = ["--cache", cache.root, "--grid", "n_neg=0,4", "--seed", "1,2", "--grid", "epochs=1",
            "--grid", "n_ctx=4", "--grid", "batch_size=4", "--grid", "k=4", "--k", "5,20", "--pack", "2", "--no-progress"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    code, _, err = run_cli(_Capsys(), "grid", *args, "--out", root / "one")
    torch.set_num_threads(n)
    assert code == 0, err
    return root, [str(a) for a in args]


class _Capsys:
    """``run_cli`` outside a test: its output is not needed, only the exit code."""

    def readouterr(self):
        return "", ""


def same_as_one_process(root, out):
    one = root / "one"
    names = sorted(p.name for p in (one / "points").iterdir())
    assert len(names) == 4 and sorted(p.name for p in (out / "points").iterdir()) == names
    for name in names:
        a, b = load_checkpoint(one / "points" / name), load_checkpoint(out / "points" / name)
        assert a["complete"] and b["complete"]
        for key in ("ctx", "neg_ctx"):
            if key in a["contexts"]:
                assert torch.equal(a["contexts"][key], b["contexts"][key]), (name, key)
        sa, sb = (json.loads((d / "points" / name / "point.json").read_text()) for d in (one, out))
        assert sa["status"] == sb["status"] == "done" and sa["headline"] == sb["headline"]
        ra, rb = (json.loads((d / "points" / name / "results.json").read_text()) for d in (one, out))
        assert ra["metrics"] == rb["metrics"] and ra["id"] == rb["id"] and ra["settings"] == rb["settings"]
    assert (out / "results.csv").read_text() == (one / "results.csv").read_text()
    assert (out / "report.md").is_file() and (out / "sweep.json").read_text() == (one / "sweep.json").read_text()


def child_env() -> dict:
    """The environment of an iim child process: this checkout's code, one thread, offline, CPU only."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
                CUDA_VISIBLE_DEVICES="")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_give_the_one_process_folders(world):
    root, args = world
    out = root / "torchrun"
    env = child_env()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "iim", "grid", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # only rank 0 reports: one line per point, one summary
    assert proc.stdout.count("points done") == 1 and "4/4 points done, 0 failed" in proc.stdout, proc.stdout
    assert sum(line.startswith("[") for line in proc.stdout.splitlines()) == 4
    same_as_one_process(root, out)


def test_jobs_two_workers_give_the_one_process_folders(world, capsys):
    root, args = world
    out = root / "jobs"
    code, stdout, err = run_cli(capsys, "grid", *args, "--jobs", "2", "--out", out)
    assert code == 0, err
    assert "4/4 points done, 0 failed" in stdout and sum(line.startswith("[") for line in stdout.splitlines()) == 4
    same_as_one_process(root, out)


def test_worker_threads_are_the_sweeps_own_on_a_cpu_and_shared_out_on_gpus():
    assert worker_threads("cpu", 2, 2) == 2 and worker_threads("auto", 8, 3) == 8
    assert worker_threads("cuda:1", 8, 3) == 2 and worker_threads("cuda", 1, 4) == 1


def _contexts(out):
    return {(d.name, k): v for d in sorted((out / "points").iterdir())
            for k, v in load_checkpoint(d)["contexts"].items()}


def test_jobs_two_at_two_threads_equal_one_process_at_two_threads(tmp_path, capsys):
    """Issue 26 item 3: the workers got half the parent's threads, and CPU kernels split their sums by
    thread, so every point's contexts differed from one process (by ~1e-8 here). A cache large enough
    for torch to split the work: the one-thread run differs, which shows the comparison can fail."""
    cache = make_random_cache(tmp_path / "cache", classes=8, hw=196, shots=8, n_test=16, ood={"far": 16})
    args = ["--cache", cache.root, "--grid", "shots=8", "--grid", "n_neg=0,4", "--seed", "1", "--grid", "epochs=1",
            "--grid", "n_ctx=4", "--grid", "batch_size=32", "--grid", "k=4", "--k", "5", "--pack", "1", "--no-progress"]
    n = torch.get_num_threads()
    try:
        runs = {}
        for threads, jobs in ((1, "1"), (2, "1"), (2, "2")):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}-j{jobs}"
            code, _, err = run_cli(capsys, "grid", *args, "--jobs", jobs, "--out", out)
            assert code == 0, err
            runs[threads, jobs] = _contexts(out)
    finally:
        torch.set_num_threads(n)
    one, two = runs[2, "1"], runs[2, "2"]
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], runs[1, "1"][k]) for k in one)      # the thread count does matter
    assert (tmp_path / "t2-j1" / "results.csv").read_text() == (tmp_path / "t2-j2" / "results.csv").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "0"], "0 given; jobs must be at least 1"),
    (["--run", "somewhere", "--jobs", "2"], "--jobs belongs to a training grid, which is its own command now: iim grid"),
])
def test_jobs_refusals_are_one_line(world, capsys, extra, message):
    root, args = world
    argv = ["--cache", args[1], "--grid", "n_neg=0", "--seed", "1", "--out", root / "bad", *extra]
    if "--run" in extra:                   # iim sweep re-scores: it refuses the grid's options
        argv = ["--out", root / "bad", *extra]
    code, _, err = run_cli(capsys, "sweep" if "--run" in extra else "grid", *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (root / "bad").exists()


def _dying_worker(index, groups, scoring, device, threads, results, *rest):
    """Worker 0 dies at once (as if killed); the others work as usual."""
    if index == 0:
        os._exit(3)
    from iim.sweep.parallel import _worker
    _worker(index, groups, scoring, device, threads, results, *rest)


def test_a_dead_worker_leaves_its_points_failed_and_the_others_done(world, monkeypatch):
    import iim.sweep.parallel as parallel
    from iim.sweep import Scoring, group_points, parse_specs, plan
    root, args = world
    grid = parse_specs(["n_neg=4", "epochs=1", "n_ctx=4", "batch_size=4", "k=4"], seeds=[1, 2])
    scoring = Scoring(ks=[5])
    points = plan(args[1], grid, root / "dead", scoring=scoring)
    groups = group_points(points, max_pack=1)
    assert len(groups) == 2
    monkeypatch.setattr(parallel, "_worker", _dying_worker)
    lines = []
    states = parallel.run_jobs(points, groups, scoring, 2, progress=False, log=lines.append)
    dead = {p.name for g in assign([len(g) for g in groups], 2)[0] for p in groups[g]}
    assert dead and len(lines) == len(points)
    for p in points:
        st = json.loads((p.dir / "point.json").read_text())
        assert states[p.name] == st
        if p.name in dead:
            assert st["status"] == "failed" and st["error"].startswith("worker 0 exited with code 3")
        else:
            assert st["status"] == "done"


def _spawned_children(pid: int) -> list[int]:
    """The multiprocessing workers (spawn) started by process ``pid``, from /proc."""
    kids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"spawn_main" in (d / "cmdline").read_bytes():
                kids.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _start_grid(args, out, stdout):
    """``iim grid ARGS --jobs 2 --out OUT`` as a child process."""
    return subprocess.Popen([sys.executable, "-m", "iim", "grid", *args, "--jobs", "2", "--out", str(out)],
                            env=child_env(), stdout=stdout, stderr=subprocess.PIPE, text=True)


def _watch_workers(proc, until) -> list:
    """Poll ``proc``'s worker processes until ``until()`` holds, it ends, or 300 s pass -> the last seen."""
    import time
    deadline, workers = time.time() + 300, []
    while proc.poll() is None and time.time() < deadline and not until():
        workers = _spawned_children(proc.pid) or workers
        time.sleep(0.01)
    return workers


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_kill_9_of_a_jobs_sweep_stops_its_workers_and_the_rerun_equals_one_process(world, capsys):
    import signal
    import time
    root, args = world
    out = root / "killed-jobs"
    victim = _start_grid(args, out, subprocess.DEVNULL)
    workers = _watch_workers(victim, lambda: len(list(out.glob("points/*/train.log"))) >= 4)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
    assert len(workers) == 2
    deadline = time.time() + 5.0           # each worker notices its parent is gone (checked every 0.2 s; slack for a loaded CI)
    while any(map(_running, workers)) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(map(_running, workers)), "a worker outlived the killed sweep"

    code, stdout, err = run_cli(capsys, "grid", *args, "--jobs", "2", "--out", out)
    assert code == 0 and "4/4 points done, 0 failed" in stdout, err
    same_as_one_process(root, out)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_kill_9_of_one_worker_mid_training_fails_its_points_and_the_rerun_equals_one_process(world, capsys):
    """Issue 26: SIGKILL of one --jobs worker (not the sweep) while it trains: the sweep finishes the other
    worker's points, records the killed worker's as failed, and a rerun retries them from their checkpoints
    to the folders of an uninterrupted run."""
    import signal
    root, args = world
    out = root / "killed-worker"
    sweep = _start_grid(args, out, subprocess.PIPE)
    workers = _watch_workers(sweep, lambda: bool(list(out.glob("points/*/train.log"))))
    workers = _spawned_children(sweep.pid) or workers
    assert len(workers) == 2 and sweep.poll() is None, "the sweep ended before a worker could be killed"
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=600)
    states = [json.loads(p.read_text()) for p in out.glob("points/*/point.json")]
    failed = [s for s in states if s["status"] == "failed"]
    assert failed and all("exited with code -9" in s["error"] for s in failed), (stdout, stderr[-2000:])
    assert "2 failed" in stdout or "1 failed" in stdout, stdout

    code, stdout, err = run_cli(capsys, "grid", *args, "--jobs", "2", "--out", out)
    assert code == 0 and "4/4 points done, 0 failed" in stdout, err
    same_as_one_process(root, out)
