"""Damage to a cache's files, found and named in one line: chunks never stored (Zarr would read them
as zeros), chunk files that do not decode, ``zarr.json`` files that are not valid JSON."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import IIMError
from .location import RemotePath, as_path, existing


def array_dir(arr) -> Path | RemotePath:
    """Where ``arr`` is stored: a folder of its LocalStore, or below its FsspecStore's URL."""
    if hasattr(arr.store, "root"):
        return Path(arr.store.root) / arr.path
    return as_path(arr.store.fs.unstrip_protocol(arr.store.path)) / arr.path


def _chunk_file(arr, index: tuple, folder=None) -> Path | RemotePath:
    return (folder or array_dir(arr)) / arr.metadata.encode_chunk_key(index)


def missing_chunks(arr) -> list[tuple[int, int, Path | RemotePath]]:
    """``(lo, hi, file)`` for every chunk of ``arr`` never stored (rows ``lo:hi``): Zarr reads such a
    chunk as its fill value, so a deleted chunk file would silently become zeros. Arrays here are
    chunked along the first axis only."""
    if arr.size == 0:
        return []
    rows = arr.chunks[0]
    rest = (0,) * (arr.ndim - 1)
    folder = array_dir(arr)
    files = [_chunk_file(arr, (i, *rest), folder) for i in range(-(-arr.shape[0] // rows))]
    there = existing(folder, files)
    return [(i * rows, min(arr.shape[0], (i + 1) * rows), f)
            for i, (f, ok) in enumerate(zip(files, there)) if not ok]


def read_array(arr, sel=slice(None), *, what: str):
    """``arr[sel]``, a damaged (truncated, undecodable) chunk file being a one-line error naming it."""
    try:
        return arr[sel]
    except Exception as e:                  # codec errors from zstd/blosc/numcodecs have no common type
        where = array_dir(arr)
        rows, rest = arr.chunks[0], (0,) * (arr.ndim - 1)
        for i in range(-(-arr.shape[0] // rows)):           # find the chunk that does not decode
            try:
                arr[i * rows:(i + 1) * rows]
            except Exception:
                where = _chunk_file(arr, (i, *rest))
                break
        raise IIMError(f"cannot read {what}: {where} is damaged ({type(e).__name__}: {str(e).strip()[:100]}); "
                       f"delete the split's folder and run 'iim extract' again") from None


def _bad_metadata(root) -> Path | RemotePath | None:
    """The first ``zarr.json`` under ``root`` that is not valid JSON (a truncated copy, a full disk)."""
    for f in sorted(as_path(root).rglob("zarr.json"), key=str):
        try:
            json.loads(f.read_text())
        except (OSError, ValueError):
            return f
    return None


def metadata_guard(method):
    """Zarr's errors on damaged metadata (``JSONDecodeError``, ``KeyError``, ...) -> one line naming the file."""

    @functools.wraps(method)
    def guarded(self, *a, **kw):
        try:
            return method(self, *a, **kw)
        except IIMError:
            raise
        except Exception:
            bad = _bad_metadata(self.root)
            if bad is None:
                raise
            raise IIMError(f"cache {self.root}: {bad} is damaged (not valid JSON); delete the folder it "
                           f"describes and run 'iim extract' again to redo it") from None
    return guarded
