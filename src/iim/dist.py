"""Running under ``torchrun``: who am I (rank, world size, local rank from the environment torchrun
sets), which device is mine, and one process group (gloo) for barriers and small object exchanges.

    env = torchrun_env()                 # None: not started by torchrun
    dev = worker_device("auto", env.local_rank)     # cuda:LOCAL_RANK with CUDA, else "auto" (the CPU)
    with process_group(env):             # gloo; destroyed on exit
        barrier()
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import NamedTuple

from .errors import IIMError

WAIT = datetime.timedelta(days=7)     # a barrier waits for the slowest rank's whole share of the work


class TorchrunEnv(NamedTuple):
    rank: int
    world: int
    local_rank: int


def torchrun_env(environ=None) -> TorchrunEnv | None:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them; None when they are absent."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise IIMError(f"cannot read RANK={env['RANK']!r} / WORLD_SIZE={env['WORLD_SIZE']!r} "
                       f"(set by torchrun; unset them to run one process)") from None
    if world < 1 or not 0 <= rank < world:
        raise IIMError(f"RANK={rank} WORLD_SIZE={world}: a rank must lie in 0 .. WORLD_SIZE - 1")
    return TorchrunEnv(rank, world, local)


def worker_device(device: str, index: int) -> str:
    """The device of worker ``index``: ``auto`` / ``cuda`` -> ``cuda:{index mod GPUs}`` when torch sees
    CUDA; anything else (``cpu``, an explicit ``cuda:N``, ``auto`` without CUDA) as given."""
    import torch
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


@contextlib.contextmanager
def process_group(env: TorchrunEnv):
    """A gloo process group over torchrun's rendezvous (``MASTER_ADDR`` / ``MASTER_PORT``), for
    barriers and :func:`gather` only (the work itself needs no collective). One the caller has already
    started is used as it is, and left to the caller."""
    import torch.distributed as dist
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world, timeout=WAIT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist
    dist.barrier()


def gather(obj, *, dst: int = 0) -> list | None:
    """Every rank's ``obj`` (picklable) on rank ``dst`` (a list by rank); None on the others."""
    import torch.distributed as dist
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast(obj, *, src: int = 0):
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
