"""Fault injection for tests, written once: damage a cache, make a folder unwritable, fill the disk,
race two processes.

    path = delete_chunk(cache.root, "test", "local")          # rm <cache>/test/local/c/0/0/0/0
    truncate(cache.root / "test" / "zarr.json")               # half a file
    unwritable(monkeypatch, run_dir)                          # writes under run_dir raise EACCES
    disk_full(monkeypatch, "iim.atomic.os.replace")           # that call raises ENOSPC (errno 28)
    codes = race([cmd_a, cmd_b])                              # two processes started together

``unwritable`` uses ``chmod`` when it takes effect; as root (where a read-only folder does not block
writes) it patches the low-level open/mkdir calls to raise ``PermissionError`` for paths below the folder.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

from imagegen import truncate  # noqa: F401  (cut a file to a fraction of its bytes)


def chunk_path(root, split: str, array: str, index: int = 0) -> Path:
    """The file of chunk ``index`` (along rows) of ``<root>/<split>/<array>`` (Zarr v3 default keys)."""
    import json
    meta = json.loads((Path(root) / split / array / "zarr.json").read_text())
    ndim = len(meta["shape"])
    base = Path(root) / split / array if split else Path(root) / array
    return base.joinpath("c", str(index), *["0"] * (ndim - 1))


def delete_chunk(root, split: str, array: str, index: int = 0) -> Path:
    """Delete one stored chunk (as a lost file or a bad copy would); returns its path."""
    path = chunk_path(root, split, array, index)
    assert path.is_file(), f"no chunk {path}"
    path.unlink()
    return path


def chmod_effective() -> bool:
    """True when a read-only folder really blocks writes here (not as root)."""
    return os.geteuid() != 0


def unwritable(monkeypatch, folder) -> None:
    """Make ``folder`` unwritable for the rest of the test (chmod, or patched calls as root)."""
    folder = Path(folder).resolve()
    if chmod_effective():              # the `unwritable` fixture (conftest) restores the mode
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return

    def below(p) -> bool:
        try:
            return Path(os.path.abspath(os.fspath(p))).resolve().is_relative_to(folder)
        except TypeError:
            return False

    def denied(p):
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(p))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and below(file):
            raise denied(file)
        return real_open(file, mode, *a, **kw)

    def fake_os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
            raise denied(path)
        return real_os_open(path, flags, *a, **kw)

    def fake_mkdir(path, *a, **kw):
        if below(path) and not Path(path).exists():
            raise denied(path)
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def disk_full(monkeypatch, target: str, *, after: int = 0) -> None:
    """Make the callable at dotted path ``target`` raise ``OSError(ENOSPC)`` from its ``after+1``-th call."""
    module, _, name = target.rpartition(".")
    obj = _resolve(module)
    real = getattr(obj, name)
    calls = {"n": 0}

    def full(*a, **kw):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(obj, name, full)


def _resolve(dotted: str):
    import importlib
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def race(commands: list[list[str]], *, env: dict | None = None, timeout: float = 300) -> list[tuple]:
    """Start every command at once (``python -c`` style argv lists); -> ``[(returncode, stderr), ...]``."""
    env = {**os.environ, **(env or {})}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c in commands]
    return [(p.wait(timeout), p.communicate()[1]) for p in procs]


def iim_command(*args) -> list[str]:
    """argv running ``iim ARGS`` with this interpreter (for :func:`race`)."""
    return [sys.executable, "-c", "from iim.cli import main; main()", *map(str, args)]
