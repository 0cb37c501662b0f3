"""Atomic file writes: readers (and a crash) see the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, write, *, binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then ``os.replace`` it onto
    ``path``: readers (and a crash) see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)   # mkstemp creates 0600; caches and runs are usually shared with colleagues
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def check_writable(folder) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".iim-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        from .errors import IIMError
        raise IIMError(f"cannot write into {folder} ({e.strerror}); choose another output folder (--out) "
                       f"or fix its permissions") from None
    return folder
