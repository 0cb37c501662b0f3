"""A training grid over several processes: ``iim grid --jobs N`` (N worker processes started by the
sweep, one per GPU when there are several) or ``torchrun --nproc_per_node N -m iim grid ...`` (every
rank, on one node or several). The groups of :func:`~iim.sweep.run.group_points` are the unit of work:
:func:`assign` deals them out to the workers, each worker trains and scores its groups
(:func:`~iim.sweep.run.run_group`) into the ordinary point folders, and one process (the parent, or
rank 0 after a barrier) collects. The folders and results.csv are those of a one-process sweep.

    shares = assign([len(g) for g in groups], 2)     # [[0, 3], [1, 2]]: group indices per worker
    states = run_jobs(points, groups, scoring, 2)     # every point's point.json state, in the parent
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time

import torch

from tqdm.auto import tqdm

from ..dist import barrier, broadcast, gather, process_group, torchrun_env, worker_device
from ..errors import IIMError
from .run import STATE, Point, Scoring, _write_state, read_state, run_group, summary_line


def check_jobs(jobs: int | None, env=None) -> None:
    """``--jobs``: at least 1, and not under torchrun (whose ranks are the jobs)."""
    if jobs is None:
        return
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise IIMError(f"--jobs {jobs!r}: give the number of worker processes, at least 1")
    if env is not None:
        raise IIMError("--jobs starts its own worker processes; under torchrun the ranks are the workers "
                       "(drop --jobs, set --nproc_per_node)")


def assign(sizes: list[int], workers: int) -> list[list[int]]:
    """Group indices per worker, balanced by points: the largest group first (ties: grid order) onto
    the worker with the fewest points so far (ties: the lowest index); each worker's groups in grid
    order. Deterministic: every torchrun rank computes the same deal from the same grid."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    load, shares = [0] * workers, [[] for _ in range(workers)]
    for g in sorted(range(len(sizes)), key=lambda g: (-sizes[g], g)):
        w = min(range(workers), key=lambda w: (load[w], w))
        load[w] += sizes[g]
        shares[w].append(g)
    return [sorted(s) for s in shares]


def on_device(group: list[Point], scoring: Scoring, device: str) -> tuple[list[Point], Scoring]:
    """The group and the scoring with ``device`` in place of their ``--device`` (unchanged when equal)."""
    if device == scoring.device and all(p.config.device == device for p in group):
        return group, scoring
    return ([dataclasses.replace(p, config=dataclasses.replace(p.config, device=device)) for p in group],
            dataclasses.replace(scoring, device=device))


def train_share(groups: list[list[Point]], scoring: Scoring, device: str, done=lambda p, st: None) -> dict:
    """Train and score ``groups`` on ``device``; ``done(point, state)`` after each point. Returns
    name -> point.json state (failures recorded there, not raised)."""
    states = {}
    for group in groups:
        g, s = on_device(group, scoring, device)
        for p, st in zip(group, run_group(g, s)):
            states[p.name] = st
            done(p, st)
    return states


class Progress:
    """A bar over the grid's points and one summary line per finished point (the one-process look)."""

    def __init__(self, n: int, *, progress: bool = True, log=tqdm.write):
        self.n, self.i, self.log = n, 0, log
        self.bar = tqdm(total=n, unit="point", desc="sweep", disable=None if progress else True)

    def __call__(self, p: Point, state: dict) -> None:
        self.i += 1
        with tqdm.external_write_mode():              # the line above the bar, not through it
            self.log(summary_line(self.i, self.n, p, state))
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


# ---- torchrun --------------------------------------------------------------------------------------
def run_torchrun(points: list[Point], groups: list[list[Point]], scoring: Scoring, env, *,
                 progress: bool = True, log=tqdm.write) -> dict | None:
    """This rank's share of ``groups``, then a barrier; rank 0 returns every point's state (its own
    points reported as they finish, the other ranks' after the barrier), the other ranks None."""
    device = worker_device(scoring.device, env.local_rank)
    show = Progress(len(points), progress=progress, log=log) if env.rank == 0 else None
    with process_group(env):
        groups = same_groups(points, groups)
        mine = [groups[g] for g in assign([len(g) for g in groups], env.world)[env.rank]]
        states = train_share(mine, scoring, device, show or (lambda p, st: None))
        everything = gather(states)            # every rank reaches this, whatever its points did
        barrier()
    if env.rank != 0:
        return None
    merged = {n: st for rank_states in everything for n, st in rank_states.items()}
    for p in points:
        if p.name not in states:
            if not (p.dir / STATE).is_file():
                raise IIMError(f"{p.dir} was trained on another node but is not visible here: --out must be a "
                               f"folder every node shares")
            show(p, merged[p.name])
    show.close()
    return merged


def same_groups(points: list[Point], groups: list[list[Point]]) -> list[list[Point]]:
    """Rank 0's grouping on every rank: the pack size follows each process's free memory at start
    (:func:`~iim.sweep.run.group_points`), so the ranks' own groupings may differ; the deal must not."""
    by_name = {p.name: p for p in points}
    return [[by_name[n] for n in g] for g in broadcast([[p.name for p in g] for g in groups])]


# ---- --jobs N --------------------------------------------------------------------------------------
def _exit_with_parent(parent: int, every: float = 0.2) -> None:
    """End this worker (``os._exit``) as soon as the sweep process that started it is gone: after a
    ``kill -9`` of the sweep its workers would otherwise go on writing (and locking) its point folders
    while the rerun trains them. A kill mid-write leaves the last complete file (atomic writes)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="iim-parent-watch").start()


def worker_threads(device: str, threads: int, workers: int) -> int:
    """The torch thread count of one ``--jobs`` worker: the sweep process's own ``threads`` when the
    worker computes on the CPU, since CPU kernels split their sums by thread and so round differently
    at another count (a worker at half the threads differed from one process by up to 1.5e-8 in the
    contexts); ``threads`` shared out over the ``workers`` when it trains on a GPU, whose results do not
    depend on the CPU's threads."""
    if str(device).startswith("cuda"):
        return max(1, threads // workers)
    return threads


def _worker(index: int, groups: list[list[Point]], scoring: Scoring, device: str, threads: int, results,
            parent: int | None = None) -> None:
    if parent is not None:
        _exit_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        train_share(groups, scoring, device, lambda p, st: results.put((index, p.name, st)))
    finally:
        results.put((index, None, None))           # this worker is through


def run_jobs(points: list[Point], groups: list[list[Point]], scoring: Scoring, jobs: int, *,
             progress: bool = True, log=tqdm.write) -> dict:
    """Start ``min(jobs, groups)`` worker processes (worker i on ``cuda:i`` when CUDA and ``--device``
    auto/cuda), each training its :func:`assign` share; report points as they finish and return every
    point's state. A worker that dies leaves its unreported points recorded as failed."""
    shares = [s for s in assign([len(g) for g in groups], min(jobs, len(groups))) if s]
    by_name = {p.name: p for p in points}
    ctx = mp.get_context("spawn")                  # CUDA and threads: a fresh interpreter per worker
    results = ctx.Queue()
    devices = [worker_device(scoring.device, i) for i in range(len(shares))]
    threads = [worker_threads(d, torch.get_num_threads(), len(shares)) for d in devices]
    procs = [ctx.Process(target=_worker, daemon=True, name=f"iim-sweep-{i}",
                         args=(i, [groups[g] for g in share], scoring, devices[i], threads[i], results,
                               os.getpid()))
             for i, share in enumerate(shares)]
    for proc in procs:
        proc.start()
    show, states, through = Progress(len(points), progress=progress, log=log), {}, set()
    try:
        while len(through) < len(procs):
            try:
                i, name, st = results.get(timeout=1.0)
            except queue_mod.Empty:
                through |= {i for i, proc in enumerate(procs) if not proc.is_alive() and results.empty()}
                continue
            if name is None:
                through.add(i)
            else:
                states[name] = st
                show(by_name[name], st)
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    for i, (proc, share) in enumerate(zip(procs, shares)):
        for p in (p for g in share for p in groups[g] if p.name not in states):
            _write_state(p, status="failed", error=f"worker {i} exited with code {proc.exitcode} before "
                                                   f"finishing this point")
            states[p.name] = read_state(p)
            show(p, states[p.name])
    show.close()
    return states


def workers(jobs: int | None, env) -> int:
    """How many processes train the grid: torchrun's world size, else ``jobs`` (1 when not given);
    checks ``jobs`` first (:func:`check_jobs`)."""
    check_jobs(jobs, env)
    return env.world if env is not None else (jobs or 1)


def run_parallel(points: list[Point], groups: list[list[Point]], scoring: Scoring, *, jobs: int | None = None,
                 progress: bool = True, log=tqdm.write) -> dict | None:
    """The sweep's training loop over several processes (torchrun's ranks, else ``jobs`` workers):
    every point's state on rank 0 / in the parent, None on the other ranks."""
    env = torchrun_env()
    if env is not None:
        return run_torchrun(points, groups, scoring, env, progress=progress, log=log)
    return run_jobs(points, groups, scoring, jobs, progress=progress, log=log)
