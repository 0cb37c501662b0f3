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
