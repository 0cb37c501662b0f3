"""Writing one split in whole chunks, resumable, each chunk owned by one writer (rank)."""
from __future__ import annotations

import time

import numpy as np
import zarr

from ..errors import IIMError


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


def state_array(grp, n: int, chunk_rows: int, *, done: int = 0, skipped=()) -> None:
    """The ``row_state`` array of a split being written (see :class:`SplitWriter`); rows below ``done``
    (a split begun before row states existed, or finished but not yet marked) are written."""
    arr = grp.create_array(SplitWriter.STATE, shape=(n,), chunks=(chunk_rows,), dtype="int8", fill_value=-1,
                           overwrite=True)
    if done:
        state = np.zeros(done, np.int8)
        state[[r for r in skipped if r < done]] = 1
        arr[:done] = state
