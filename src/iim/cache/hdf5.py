"""HDF5 interchange: ``iim cache export --format hdf5`` and ``iim cache import``.

Layout of the file: root attribute ``manifest`` (JSON); dataset ``global_proto`` ``[C, D]``; one group per
split with datasets ``global``, ``local``, ``label``, ``path`` (all physical rows, as stored in the cache)
and the split's attributes as one JSON attribute ``attrs``. The root attribute ``sha256`` (JSON) holds the
SHA-256 of every dataset and attribute above (:func:`digests`), computed at export from the finished
file; import recomputes them and refuses a file whose content differs (a dataset changed, a copy cut
short) before it writes anything. Exports older than the checksums import with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import IIMError
from .damage import read_array
from .store import create_cache, open_cache


CHECKSUMS = "sha256"         # root attribute: {"manifest": hex, "global_proto": hex, "<split>/<dataset>": hex, ...}
log = logging.getLogger("iim")


def _h5py():
    import h5py
    return h5py


def _array_digest(ds) -> str:
    """SHA-256 of a dataset's dtype, shape and values in C order, read one chunk of rows at a time; the
    strings of ``path`` as their JSON list."""
    h = hashlib.sha256(f"{ds.dtype.str}{ds.shape}".encode())
    if ds.dtype.kind == "O":
        h.update(json.dumps([p.decode() if isinstance(p, bytes) else str(p) for p in ds[:]]).encode())
        return h.hexdigest()
    step = (ds.chunks[0] if ds.chunks else ds.shape[0] if ds.shape else 1) or 1
    for lo in range(0, ds.shape[0] if ds.shape else 1, step):
        h.update(np.ascontiguousarray(ds[lo:lo + step] if ds.shape else ds[()]).tobytes())
    return h.hexdigest()


def digests(f) -> dict[str, str]:
    """Name -> SHA-256 of every part of an export: the manifest, ``global_proto``, and each split's
    ``attrs`` and datasets (``<split>/<name>``). An unreadable dataset is a one-line error."""
    h5py = _h5py()
    out = {}
    if "manifest" in f.attrs:
        out["manifest"] = hashlib.sha256(str(f.attrs["manifest"]).encode()).hexdigest()
    for name in sorted(f):
        item = f[name]
        try:
            if isinstance(item, h5py.Group):
                out[f"{name}/attrs"] = hashlib.sha256(str(item.attrs.get("attrs", "")).encode()).hexdigest()
                for key in sorted(item):
                    out[f"{name}/{key}"] = _array_digest(item[key])
            else:
                out[name] = _array_digest(item)
        except (OSError, ValueError, KeyError) as e:
            raise IIMError(f"{f.filename}: {name} cannot be read ({str(e).strip()[:100]}); the file is damaged, "
                           f"export it again") from None
    return out


def check_digests(f) -> None:
    """Compare the file's content with the checksums recorded at export; a difference is a one-line
    error naming the first part that differs. An export without checksums is accepted with a warning."""
    if CHECKSUMS not in f.attrs:
        log.warning(f"{f.filename} was exported without checksums (older iim): its content is not verified")
        return
    want, got = json.loads(f.attrs[CHECKSUMS]), digests(f)
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            what = "is missing" if key not in got else "is new" if key not in want else "differs from the export"
            raise IIMError(f"{f.filename}: {key} {what} (checksum recorded at export); the file was changed or "
                           f"damaged after 'iim cache export': export it again")


def export_hdf5(cache_dir, out, *, allow_incomplete: bool = False, progress: bool = True) -> Path:
    """Write the cache at ``cache_dir`` to the HDF5 file ``out``, one storage chunk at a time (memory
    bounded by a chunk), to a temporary file renamed onto ``out`` at the end."""
    h5py = _h5py()
    c = open_cache(cache_dir)
    out = Path(out)
    names = c.split_names()
    partial = [n for n in names if not c.is_complete(n)]
    if partial and not allow_incomplete:
        raise IIMError(f"cache {c.root}: split(s) {', '.join(partial)} are incomplete; finish them with "
                       f"'iim extract' or pass --allow-incomplete to export what was written")
    if not out.parent.is_dir():
        raise IIMError(f"no folder {out.parent} for {out}")
    protos = c.global_prototypes().numpy() if c.has_global_prototypes() else None
    for n in names:                                       # damage is refused before anything is written
        if c.is_complete(n):
            c.split(n)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["manifest"] = json.dumps(c.manifest)
            if protos is not None:
                f.create_dataset("global_proto", data=protos)
            for name in names:
                _export_split(f, c._zroot[name], name, progress)
        with h5py.File(tmp, "r+") as f:                   # the checksums of what the file holds
            f.attrs[CHECKSUMS] = json.dumps(digests(f), sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _export_split(f, grp, name: str, progress: bool) -> None:
    attrs = dict(grp.attrs)
    if "rows_written" not in attrs:                       # killed while being created: nothing to carry
        return
    h = f.create_group(name)
    h.attrs["attrs"] = json.dumps(attrs)
    h.create_dataset("label", data=np.asarray(read_array(grp["label"], what=f"the labels of {name}"), np.int64))
    paths = [str(p) for p in np.asarray(read_array(grp["path"], what=f"the paths of {name}"))]
    h.create_dataset("path", data=np.array(paths, dtype=object), dtype=_h5py().string_dtype())
    rows = int(attrs["rows_written"])
    step = grp["local"].chunks[0]
    bar = tqdm(total=rows, unit="img", desc=f"export {name}", leave=False, disable=None if progress else True)
    for key in ("global", "local"):
        src = grp[key]
        dst = h.create_dataset(key, shape=src.shape, dtype="float16", chunks=(min(step, src.shape[0]) or 1,)
                               + tuple(src.shape[1:]), fillvalue=0)
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            dst[lo:hi] = read_array(src, slice(lo, hi), what=f"rows {lo}..{hi - 1} of split {name}")
            if key == "local":
                bar.update(hi - lo)
    bar.close()


def import_hdf5(path, cache_dir, *, progress: bool = True):
    """Write the HDF5 file ``path`` (from :func:`export_hdf5`) into the cache at ``cache_dir`` through the
    cache's own writer, so that the result is an ordinary cache. Returns the open cache."""
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise IIMError(f"no file {path}")
    if not h5py.is_hdf5(path):
        raise IIMError(f"{path} is not an HDF5 file (expected one written by 'iim cache export --format hdf5')")
    try:
        f = h5py.File(path, "r")
    except OSError as e:                                   # a truncated copy fails here (HDF5 checks its end)
        raise IIMError(f"{path} cannot be opened as HDF5 ({str(e).strip()[:120]}); the file is damaged or cut "
                       f"short: export it again") from None
    with f:
        if "manifest" not in f.attrs:
            raise IIMError(f"{path} is not an iim feature export (no 'manifest' attribute)")
        check_digests(f)                                   # before anything is written
        c = create_cache(cache_dir, json.loads(f.attrs["manifest"]))
        if "global_proto" in f:
            c.write_global_prototypes(f["global_proto"][:])
        for name in sorted(k for k in f if isinstance(f[k], h5py.Group)):
            _import_split(c, f[name], name, progress)
    return open_cache(cache_dir)


def _import_split(c, h, name: str, progress: bool) -> None:
    attrs = json.loads(h.attrs["attrs"])
    g, l = h["global"], h["local"]
    n, views, hw, dim = l.shape
    paths = [p.decode() if isinstance(p, bytes) else str(p) for p in h["path"][:]]
    keep = {k: v for k, v in attrs.items() if k not in ("complete", "rows_written", "skipped_rows",
                                                         "skipped_paths", "finished")}
    w = c.writer(name, n=n, views=views, hw=hw, dim=dim, labels=h["label"][:], paths=paths, attrs=keep,
                 chunk_rows=l.chunks[0] if l.chunks else None)
    rows = int(attrs.get("rows_written", n))
    for row, p in zip(attrs.get("skipped_rows", []), attrs.get("skipped_paths", [])):
        w.mark_skipped(row, p)
    bar = tqdm(total=rows, unit="img", desc=f"import {name}", leave=False, disable=None if progress else True)
    for lo in range(w.rows_written, rows, w.chunk_rows):
        hi = min(rows, lo + w.chunk_rows)
        w.append(g[lo:hi], l[lo:hi])
        bar.update(hi - lo)
    bar.close()
    if attrs.get("complete"):
        w.finish()
    else:
        w._flush(final=True)
