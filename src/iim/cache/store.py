"""Zarr-backed feature cache: atomic manifest, chunked resumable split writes, bounded-memory reads."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr

from ..errors import IIMError
from .fingerprint import compare
from .location import RemotePath, as_path, existing, replace_tree, write_text, zarr_store
from .names import is_ood, parse_train_split

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_BYTES = 16 << 20   # target size of one chunk of `local`


def _array_dir(arr) -> Path | RemotePath:
    """Where ``arr`` is stored: a folder of its LocalStore, or below its FsspecStore's URL."""
    if hasattr(arr.store, "root"):
        return Path(arr.store.root) / arr.path
    return as_path(arr.store.fs.unstrip_protocol(arr.store.path)) / arr.path


def _chunk_file(arr, index: tuple, folder=None) -> Path | RemotePath:
    return (folder or _array_dir(arr)) / arr.metadata.encode_chunk_key(index)


def missing_chunks(arr) -> list[tuple[int, int, Path | RemotePath]]:
    """``(lo, hi, file)`` for every chunk of ``arr`` never stored (rows ``lo:hi``): Zarr reads such a
    chunk as its fill value, so a deleted chunk file would silently become zeros. Arrays here are
    chunked along the first axis only."""
    if arr.size == 0:
        return []
    rows = arr.chunks[0]
    rest = (0,) * (arr.ndim - 1)
    folder = _array_dir(arr)
    files = [_chunk_file(arr, (i, *rest), folder) for i in range(-(-arr.shape[0] // rows))]
    there = existing(folder, files)
    return [(i * rows, min(arr.shape[0], (i + 1) * rows), f)
            for i, (f, ok) in enumerate(zip(files, there)) if not ok]


def read_array(arr, sel=slice(None), *, what: str):
    """``arr[sel]``, a damaged (truncated, undecodable) chunk file being a one-line error naming it."""
    try:
        return arr[sel]
    except Exception as e:                  # codec errors from zstd/blosc/numcodecs have no common type
        where = _array_dir(arr)
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


def _metadata_guard(method):
    """Zarr's errors on damaged metadata (``JSONDecodeError``, ``KeyError``, ...) -> one line naming the file."""
    import functools

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


@dataclass
class Chunk:
    """Rows ``start .. start + len(labels)`` of a split (valid rows only), as torch tensors."""
    start: int
    global_feats: torch.Tensor   # float16 [b, D] (one view) or [b, V, D]
    local_feats: torch.Tensor    # float16 [b, HW, D] or [b, V, HW, D]
    labels: torch.Tensor         # int64 [b]
    index: np.ndarray            # positions of these rows in the split (0..n-1)


class Split:
    """Read access to one complete split. Rows of images skipped as unreadable are invisible here."""

    def __init__(self, group: zarr.Group, name: str):
        self.group, self.name = group, name
        self.attrs = dict(group.attrs)
        self._global, self._local = group["global"], group["local"]
        n_phys = self._global.shape[0]
        bad = set(self.attrs.get("skipped_rows", []))
        self._rows = np.array([i for i in range(n_phys) if i not in bad], dtype=np.int64)
        self._contiguous = not bad
        self.check_chunks()

    def check_chunks(self) -> None:
        """Refuse a split whose stored chunks are not all there (a chunk of skipped rows only, or of OOD
        labels, which equal the fill value, is legitimately absent)."""
        bad = set(self.attrs.get("skipped_rows", []))
        arrays = [self._global, self._local, self.group["path"]]
        if not is_ood(self.name):
            arrays.append(self.group["label"])
        for arr in arrays:
            for lo, hi, f in missing_chunks(arr):
                if arr.ndim > 1 and all(r in bad for r in range(lo, hi)):
                    continue
                raise IIMError(f"split {self.name}: rows {lo}..{hi - 1} of {arr.path.rsplit('/', 1)[-1]!r} "
                               f"were never stored (missing chunk file {f}); the cache is damaged: delete "
                               f"{_array_dir(arr).parent} and run 'iim extract' again")

    # ---- shape -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self._rows)

    @property
    def views(self) -> int:
        return self._global.shape[1]

    @property
    def hw(self) -> int:
        return self._local.shape[2]

    @property
    def dim(self) -> int:
        return self._global.shape[2]

    @property
    def chunk_rows(self) -> int:
        return self._local.chunks[0]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Split({self.name!r}, n={self.n}, views={self.views}, hw={self.hw}, dim={self.dim})"

    # ---- metadata ----------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        labels = read_array(self.group["label"], what=f"the labels of split {self.name}")
        return np.asarray(labels, dtype=np.int64)[self._rows]

    @property
    def paths(self) -> list[str]:
        paths = read_array(self.group["path"], what=f"the image paths of split {self.name}")
        return [str(p) for p in np.asarray(paths)[self._rows]]

    # ---- features ----------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None, *, view: int | None = None):
        """Rows ``start:stop`` as numpy float16 ``(global [n, V, D], local [n, V, HW, D])``;
        with ``view`` given, that view only: ``(global [n, D], local [n, HW, D])``."""
        stop = self.n if stop is None else min(stop, self.n)
        rows = self._rows[start:stop]
        if len(rows) == 0:
            return (np.zeros((0, self.dim), np.float16) if view is not None else
                    np.zeros((0, self.views, self.dim), np.float16),
                    np.zeros((0, self.hw, self.dim), np.float16) if view is not None else
                    np.zeros((0, self.views, self.hw, self.dim), np.float16))
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        vsel = slice(None) if view is None else view
        what = f"rows {lo}..{hi - 1} of split {self.name}"
        g = read_array(self._global, (slice(lo, hi), vsel), what=what)
        l = read_array(self._local, (slice(lo, hi), vsel), what=what)
        if not self._contiguous:
            g, l = g[rows - lo], l[rows - lo]
        return g, l

    def iter_chunks(self, rows: int | None = None, *, view: int | None = 0) -> Iterator[Chunk]:
        """Stream the split in chunks of ``rows`` images (default: the storage chunk), memory bounded by
        the chunk size. ``view=0`` (default) gives ``[b, D]`` / ``[b, HW, D]``; ``view=None`` all views."""
        rows = rows or self.chunk_rows
        labels = self.labels
        for start in range(0, self.n, rows):
            g, l = self.read(start, start + rows, view=view)
            stop = start + len(g)
            yield Chunk(start, torch.from_numpy(np.ascontiguousarray(g)),
                        torch.from_numpy(np.ascontiguousarray(l)),
                        torch.from_numpy(labels[start:stop]), np.arange(start, stop))


class SplitWriter:
    """Writes one split in whole chunks, each owned by one writer: chunk ``i`` belongs to rank
    ``i % world`` (one process: ``rank=0, world=1``, every chunk). After a chunk's ``global`` and
    ``local`` rows are stored, its rows of the ``row_state`` array (chunked like the data; -1 not
    written, 0 written, 1 unreadable and zero-filled) are stored: Zarr writes a chunk file atomically,
    so a chunk counts as done only once its state chunk exists, and a half-written data chunk never does.
    :meth:`append` walks this writer's chunks that are not done, in order. Rank 0 alone writes the group
    attributes: ``rows_written`` (the done prefix, where readers of a partial split stop) and, in
    :meth:`finish` once every chunk is done, ``complete`` (``row_state`` is then removed)."""

    STATE = "row_state"

    def __init__(self, group: zarr.Group, *, rank: int = 0, world: int = 1):
        self.group, self.rank, self.world = group, rank, world
        self._global, self._local = group["global"], group["local"]
        self._state = group[self.STATE]
        self.chunk_rows = self._local.chunks[0]
        self.n = self._global.shape[0]
        self.n_chunks = -(-self.n // self.chunk_rows) if self.n else 0
        state = np.asarray(self._state[:]) if self.n else np.zeros(0, np.int8)
        self._done = {i for i in range(self.n_chunks) if (state[self._span(i)] >= 0).all()}
        self.todo = [i for i in range(rank, self.n_chunks, world) if i not in self._done]
        self._next = 0                                   # position in todo of the chunk being filled
        self._buf_g: list[np.ndarray] = []
        self._buf_l: list[np.ndarray] = []
        self._skipped: set[int] = set()
        self.rows_written = int(group.attrs.get("rows_written", 0))

    def _span(self, i: int) -> slice:
        return slice(i * self.chunk_rows, min(self.n, (i + 1) * self.chunk_rows))

    @property
    def start(self) -> int:
        """The first row this writer still has to write (``n`` when its share is done)."""
        return self._span(self.todo[0]).start if self.todo else self.n

    @property
    def spans(self) -> list[tuple[int, int]]:
        """``(lo, hi)`` rows of the chunks this writer still has to write, in the order it writes them."""
        return [(self._span(i).start, self._span(i).stop) for i in self.todo]

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def _buffered(self) -> int:
        return sum(len(b) for b in self._buf_g)

    def append(self, global_feats: np.ndarray, local_feats: np.ndarray) -> None:
        """Append the next rows (``[b, V, D]``, ``[b, V, HW, D]``) of this writer's chunks; each chunk is
        stored as soon as its rows are all there."""
        self._buf_g.append(np.asarray(global_feats, dtype=np.float16))
        self._buf_l.append(np.asarray(local_feats, dtype=np.float16))
        self._flush(final=False)

    def mark_skipped(self, row: int, path: str = "") -> None:
        """Record an unreadable image (before appending its row); its zero-filled row is hidden from readers."""
        self._skipped.add(int(row))

    def _flush(self, final: bool) -> None:
        """Store every chunk the buffer fills; with ``final``, leftover rows that fill no chunk are an error."""
        while self._buf_g and self._next < len(self.todo):
            span = self._span(self.todo[self._next])
            if self._buffered() < span.stop - span.start:
                break
            g, l = np.concatenate(self._buf_g), np.concatenate(self._buf_l)
            take = span.stop - span.start
            self._global[span] = g[:take]
            self._local[span] = l[:take]
            rows = np.arange(span.start, span.stop)
            self._state[span] = np.isin(rows, list(self._skipped)).astype(np.int8)   # after the data
            self._done.add(self.todo[self._next])
            self._next += 1
            self._buf_g, self._buf_l = ([g[take:]], [l[take:]]) if take < len(g) else ([], [])
            if self.rank == 0:
                self._record_prefix()
        if self._buffered() and (final or self._next >= len(self.todo)):
            raise IIMError(f"split {self.group.name}: more rows written than the split holds")

    def _chunk_done(self, i: int) -> bool:
        if i in self._done:
            return True
        try:                                    # another rank's chunk: its state file is there or not
            done = bool((np.asarray(self._state[self._span(i)]) >= 0).all())
        except Exception:                       # a store without atomic writes: half a file is not done
            return False
        if done:
            self._done.add(i)
        return done

    def _record_prefix(self) -> None:
        """Rank 0: ``rows_written`` and the skipped rows below it, for readers of a partial split."""
        i = self.rows_written // self.chunk_rows
        while i < self.n_chunks and self._chunk_done(i):
            i += 1
        hi = self._span(i).start if i < self.n_chunks else self.n
        if hi > self.rows_written:
            self._write_attrs(hi)

    def _write_attrs(self, hi: int, **more) -> None:
        state = np.asarray(self._state[:hi]) if hi else np.zeros(0, np.int8)
        rows = [int(r) for r in np.flatnonzero(state == 1)]
        paths = [str(p) for p in np.asarray(self.group["path"][:])[rows]] if rows else []
        self.rows_written = hi
        self.group.attrs.update(rows_written=hi, skipped_rows=rows, skipped_paths=paths, **more)

    def finish_share(self) -> None:
        """Every chunk of this writer is stored (otherwise a one-line error)."""
        self._flush(final=True)
        if self._next < len(self.todo):
            lo = self._span(self.todo[self._next]).start
            raise IIMError(f"split {self.group.name}: rank {self.rank} stopped at row {lo} of {self.n}; not complete")

    def finish(self) -> None:
        """Rank 0, after every writer's :meth:`finish_share`: mark the split complete."""
        self.finish_share()
        missing = [i for i in range(self.n_chunks) if not self._chunk_done(i)]
        if missing:
            raise IIMError(f"split {self.group.name}: {len(missing)} of {self.n_chunks} chunks not written "
                           f"(first: rows from {self._span(missing[0]).start}); not complete")
        self._write_attrs(self.n)              # rows_written = n first: a kill below is recovered from it
        del self.group[self.STATE]
        self.group.attrs.update(complete=True, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))


def _state_array(grp, n: int, chunk_rows: int, *, done: int = 0, skipped=()) -> None:
    """The ``row_state`` array of a split being written (see :class:`SplitWriter`); rows below ``done``
    (a split begun before row states existed, or finished but not yet marked) are written."""
    arr = grp.create_array(SplitWriter.STATE, shape=(n,), chunks=(chunk_rows,), dtype="int8", fill_value=-1,
                           overwrite=True)
    if done:
        state = np.zeros(done, np.int8)
        state[[r for r in skipped if r < done]] = 1
        arr[:done] = state


class Cache:
    """A feature-cache folder: ``manifest.json`` plus one Zarr group per split. ``root``: a local folder
    (:class:`~pathlib.Path`) or a :class:`~iim.cache.location.RemotePath` (any fsspec URL)."""

    @_metadata_guard
    def __init__(self, root, manifest: dict):
        self.root = as_path(root)
        self.manifest = manifest
        self._zroot = zarr.open_group(store=zarr_store(self.root), mode="a")

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, model={self.manifest.get('model')!r}, splits={self.splits()})"

    @property
    def classnames(self) -> list[str]:
        return list(self.manifest.get("classnames") or [])

    @_metadata_guard
    def split_names(self, complete_only: bool = False) -> list[str]:
        names = []                        # the split groups, from the folder (Zarr's listing trips on damage)
        for meta in sorted(self.root.glob("*/zarr.json"), key=str):
            try:
                node = json.loads(meta.read_text()).get("node_type")
            except (OSError, ValueError, AttributeError):
                raise IIMError(f"cache {self.root}: {meta} is damaged (not valid JSON); delete "
                               f"{meta.parent} and run 'iim extract' again to redo it") from None
            if node == "group":
                names.append(meta.parent.name)
        if complete_only:
            names = [n for n in names if self._zroot[n].attrs.get("complete", False)]
        return names

    def splits(self) -> list[str]:
        """Names of the complete splits."""
        return self.split_names(complete_only=True)

    def train_splits(self) -> list[str]:
        return [n for n in self.splits() if parse_train_split(n)]

    def ood_splits(self) -> list[str]:
        return [n for n in self.splits() if is_ood(n)]

    def has_split(self, name: str) -> bool:
        return name in self.split_names()

    @_metadata_guard
    def is_complete(self, name: str) -> bool:
        return self.has_split(name) and bool(self._zroot[name].attrs.get("complete", False))

    @_metadata_guard
    def split(self, name: str) -> Split:
        """Open a complete split for reading; a missing or incomplete split is a clear error."""
        if not self.has_split(name):
            have = ", ".join(self.splits()) or "none"
            raise IIMError(f"cache {self.root} has no split {name!r} (complete splits: {have})")
        if not self.is_complete(name):
            raise IIMError(f"split {name!r} in {self.root} is incomplete (extraction was interrupted); "
                           f"run the same 'iim extract' command again to resume it")
        return Split(self._zroot[name], name)

    @_metadata_guard
    def split_status(self, name: str) -> dict:
        """Attributes and storage shapes of any split, complete or not (for ``iim cache info``)."""
        if not self.has_split(name):
            raise IIMError(f"cache {self.root} has no split {name!r}")
        grp = self._zroot[name]
        if "rows_written" not in grp.attrs:                 # killed while being created
            return {"complete": False, "uninitialised": True, "n": 0, "views": 0, "rows_written": 0}
        return dict(grp.attrs, global_shape=list(grp["global"].shape), local_shape=list(grp["local"].shape),
                    chunk_rows=int(grp["local"].chunks[0]))

    def writer(self, name: str, *, n: int, views: int, hw: int, dim: int, labels, paths,
               attrs: dict | None = None, chunk_rows: int | None = None, rank: int = 0,
               world: int = 1) -> SplitWriter:
        """Create a split (or reopen an interrupted one with the same rows) for writing.
        ``chunk_rows`` (rows per storage chunk) defaults to about :data:`CHUNK_BYTES` of ``local``.
        Under torchrun, rank 0 calls this first (it creates the arrays), the other ranks after a barrier;
        each writer then writes the chunks of its ``rank`` of ``world``."""
        labels = np.asarray(labels, dtype=np.int64)
        paths = [str(p) for p in paths]
        if len(labels) != n or len(paths) != n:
            raise IIMError(f"split {name}: {n} rows but {len(labels)} labels and {len(paths)} paths")
        if self.has_split(name) and "rows_written" not in self._zroot[name].attrs:
            self._zroot.create_group(name, overwrite=True)    # killed while being created: start it again
        elif self.has_split(name):
            grp = self._zroot[name]
            same = (grp["global"].shape == (n, views, dim) and grp["local"].shape == (n, views, hw, dim)
                    and [str(p) for p in np.asarray(grp["path"][:])] == paths
                    and np.array_equal(grp["label"][:], labels))
            if not same:
                raise IIMError(f"split {name!r} in {self.root} was started with other images or shapes; "
                               f"delete {self.root / name} to extract it again")
            if SplitWriter.STATE not in grp and rank == 0:     # rows_written says which rows are done
                _state_array(grp, n, grp["local"].chunks[0], done=int(grp.attrs.get("rows_written", 0)),
                             skipped=grp.attrs.get("skipped_rows", []))
            return SplitWriter(grp, rank=rank, world=world)
        row_bytes = max(1, views * hw * dim * 2)
        chunk_rows = int(max(1, min(n, chunk_rows or CHUNK_BYTES // row_bytes)))
        grp = self._zroot.require_group(name)
        grp.create_array("global", shape=(n, views, dim), chunks=(chunk_rows, views, dim), dtype="float16",
                         fill_value=0)
        grp.create_array("local", shape=(n, views, hw, dim), chunks=(chunk_rows, views, hw, dim),
                         dtype="float16", fill_value=0)
        _state_array(grp, n, chunk_rows)
        grp.create_array("label", shape=(n,), chunks=(max(1, n),), dtype="int64", fill_value=-1)
        grp.create_array("path", shape=(n,), chunks=(max(1, n),), dtype=str)
        if n:
            grp["label"][:] = labels
            grp["path"][:] = np.array(paths, dtype=object)
        grp.attrs.update(dict(attrs or {}), complete=False, rows_written=0, views=views, n=n,
                         skipped_rows=[], skipped_paths=[],
                         created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return SplitWriter(grp, rank=rank, world=world)

    def has_global_prototypes(self) -> bool:
        return (self.root / "global_proto" / "zarr.json").is_file()

    @_metadata_guard
    def global_prototypes(self) -> torch.Tensor:
        """The frozen ``"a photo of a {c}."`` prototypes stored at extraction, float32 ``[C, D]``."""
        try:
            arr = self._zroot["global_proto"]
        except KeyError:
            raise IIMError(f"cache {self.root} has no global prototypes (extract with a newer iim)") from None
        lost = missing_chunks(arr)
        if lost:
            raise IIMError(f"cache {self.root}: the global prototypes were never stored (missing chunk file "
                           f"{lost[0][2]}); the cache is damaged: extract it again")
        return torch.from_numpy(np.asarray(read_array(arr, what="the global prototypes"), dtype=np.float32))

    def write_global_prototypes(self, protos) -> None:
        """Store the prototypes; a crash mid-write leaves no ``global_proto`` (written under a temporary
        name, then renamed) rather than a zero-filled one."""
        protos = np.asarray(protos, dtype=np.float32)
        tmp = "global_proto.partial"
        self._zroot.create_array(tmp, shape=protos.shape, dtype="float32", overwrite=True,
                                 chunks=protos.shape)[:] = protos
        replace_tree(self.root / tmp, self.root / "global_proto")
        self._zroot = zarr.open_group(store=zarr_store(self.root), mode="a")

    def update_manifest(self, **fields) -> None:
        self.manifest.update(fields)
        write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")


def _read_manifest(root) -> dict:
    try:
        return json.loads((root / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise IIMError(f"{root / MANIFEST} is not valid JSON ({e})") from None


def open_cache(root) -> Cache:
    """Open an existing cache (a folder or an fsspec URL) for reading; a folder without a manifest is a
    clear error."""
    root = as_path(root)
    if not (root / MANIFEST).is_file():
        if not root.exists():
            raise IIMError(f"no cache at {root} (run 'iim extract' first)")
        raise IIMError(f"{root} is not an iim feature cache (no {MANIFEST})")
    return Cache(root, _read_manifest(root))


def create_cache(root, manifest: dict) -> Cache:
    """Open the cache at ``root`` for writing, creating it if needed.

    An existing cache must have been made with the same model, weights, image size, feature definition,
    benchmark and classes (:data:`iim.cache.fingerprint.KEY_FIELDS`); anything else is refused so that features never mix.
    """
    root = as_path(root)
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    if (root / MANIFEST).is_file():
        old = _read_manifest(root)
        diff = compare(old, manifest)
        if diff:
            was, now = diff[0].shown()
            raise IIMError(f"cache {root} was made with {diff[0].key}={was}, not {now}; "
                           f"use another --out folder (caches are never mixed)")
        return Cache(root, old)
    if root.exists() and any(root.iterdir()):
        raise IIMError(f"{root} exists and is not an iim feature cache; choose another --out folder")
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return Cache(root, manifest)
