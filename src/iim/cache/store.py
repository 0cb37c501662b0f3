"""The cache folder: its atomic manifest, its splits (opened for reading, created or reopened for
writing) and its stored global prototypes; ``open_cache`` / ``create_cache``."""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import zarr

from ..errors import IIMError
from .damage import metadata_guard, missing_chunks, read_array
from .fingerprint import compare
from .location import as_path, replace_tree, write_text, zarr_store
from .names import is_ood, parse_train_split, stored_name
from .split import Split
from .writer import SplitWriter, state_array

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_BYTES = 16 << 20   # target size of one chunk of `local`


class Cache:
    """A feature-cache folder: ``manifest.json`` plus one Zarr group per split. ``root``: a local folder
    (:class:`~pathlib.Path`) or a :class:`~iim.cache.location.RemotePath` (any fsspec URL)."""

    @metadata_guard
    def __init__(self, root, manifest: dict):
        self.root = as_path(root)
        self.manifest = manifest
        self._zroot = zarr.open_group(store=zarr_store(self.root), mode="a")

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, model={self.manifest.get('model')!r}, splits={self.splits()})"

    @property
    def classnames(self) -> list[str]:
        return list(self.manifest.get("classnames") or [])

    @metadata_guard
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

    def stored_name(self, name: str) -> str:
        """The name the cache holds split ``name`` under: ``name``, or the other spelling of the same
        train split (:func:`iim.cache.names.stored_name`: caches written before shots were spelled out)."""
        return name if parse_train_split(name) is None else stored_name(name, self.split_names())

    def has_split(self, name: str) -> bool:
        names = self.split_names()
        return stored_name(name, names) in names

    @metadata_guard
    def is_complete(self, name: str) -> bool:
        name = self.stored_name(name)
        return self.has_split(name) and bool(self._zroot[name].attrs.get("complete", False))

    @metadata_guard
    def split(self, name: str) -> Split:
        """Open a complete split for reading (under either spelling of a train split's name); a missing
        or incomplete split is a clear error."""
        name = self.stored_name(name)
        if not self.has_split(name):
            have = ", ".join(self.splits()) or "none"
            raise IIMError(f"cache {self.root} has no split {name!r} (complete splits: {have})")
        if not self.is_complete(name):
            raise IIMError(f"split {name!r} in {self.root} is incomplete (extraction was interrupted); "
                           f"run the same 'iim extract' command again to resume it")
        return Split(self._zroot[name], name)

    @metadata_guard
    def split_status(self, name: str) -> dict:
        """Attributes and storage shapes of any split, complete or not (for ``iim cache info``)."""
        name = self.stored_name(name)
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
        each writer then writes the chunks of its ``rank`` of ``world``. A train split the cache holds
        under its older name is reopened under that name, never written twice."""
        name = self.stored_name(name)
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
                state_array(grp, n, grp["local"].chunks[0], done=int(grp.attrs.get("rows_written", 0)),
                             skipped=grp.attrs.get("skipped_rows", []))
            return SplitWriter(grp, rank=rank, world=world)
        row_bytes = max(1, views * hw * dim * 2)
        chunk_rows = int(max(1, min(n, chunk_rows or CHUNK_BYTES // row_bytes)))
        grp = self._zroot.require_group(name)
        grp.create_array("global", shape=(n, views, dim), chunks=(chunk_rows, views, dim), dtype="float16",
                         fill_value=0)
        grp.create_array("local", shape=(n, views, hw, dim), chunks=(chunk_rows, views, hw, dim),
                         dtype="float16", fill_value=0)
        state_array(grp, n, chunk_rows)
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

    @metadata_guard
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
