"""One writer per folder: a lock file holding host and pid, taken atomically (``O_EXCL``); the lock
of a killed owner (same host, pid gone) is taken over. Extraction locks its cache, training its run.
A cache at an fsspec URL is locked by an exclusive create where its filesystem has one, else best effort
(:meth:`iim.cache.location.RemotePath.create_exclusive`)."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

from .errors import IIMError


def _owner_alive(host: str, pid: str) -> bool:
    if host != socket.gethostname():
        return True                                      # cannot tell: assume it is
    if not pid.strip().isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create(path, me: str) -> bool:
    """Create the lock file ``path`` holding ``me``; False if it exists."""
    if not isinstance(path, Path):
        return path.create_exclusive(me)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(me)
    return True


@contextmanager
def folder_lock(root, name: str, command: str):
    """Hold ``<root>/<name>`` while the body runs; another live holder is a one-line error. ``root``: a
    folder, or a cache location (:func:`iim.cache.location.as_path`)."""
    from .cache.location import as_path
    path, me = as_path(root) / name, f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        if not _create(path, me):
            try:
                host, _, pid = path.read_text().partition(" ")
            except FileNotFoundError:                       # released meanwhile: try again
                continue
            if _owner_alive(host, pid):
                raise IIMError(f"another '{command}' ({host} pid {pid.strip()}) is writing {root}; "
                               f"wait for it, or delete {path} if it is gone") from None
            path.unlink(missing_ok=True)                    # stale: its owner was killed
            continue
        break
    else:
        raise IIMError(f"could not take the lock {path} (another '{command}' keeps replacing it); try again")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
