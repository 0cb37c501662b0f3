"""Read access to one complete split: its shape, labels and paths, and its features by rows or
streamed chunk by chunk in bounded memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import zarr

from ..errors import IIMError
from .damage import array_dir, missing_chunks, read_array
from .names import is_ood


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
                               f"{array_dir(arr).parent} and run 'iim extract' again")

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
