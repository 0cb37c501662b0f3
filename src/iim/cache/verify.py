"""Checking a cache: is everything the manifest promises there, consistent, and (deep) readable?

    problems = check_cache(open_cache("cache/imagenet"))     # [] when consistent

Returns messages; prints nothing (``iim cache verify`` prints them).
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..errors import IIMError
from .names import is_ood
from .store import Cache


def label_folder_problems(where: str, labels, paths, class_dirs, classnames) -> list[str]:
    """ID images lie in ``<class folder>/...``: each label must be the class of its image's folder
    (``class_dirs``, recorded by extraction; caches from before it are not checked)."""
    if not class_dirs:
        return []
    expected = {d: c for c, d in enumerate(class_dirs)}
    folders = [str(p).split("/", 1)[0] for p in paths]
    bad = [i for i, (f, y) in enumerate(zip(folders, labels)) if expected.get(f) != int(y)]
    if not bad:
        return []
    i, want = bad[0], expected.get(folders[bad[0]])
    return [f"{where}: {len(bad)} label(s) disagree with their class folder, e.g. row {i} ({paths[i]}) has "
            f"label {int(labels[i])} ({classnames[int(labels[i])]!r})"
            + (f", its folder is class {want} ({classnames[want]!r})" if want is not None else "")]


def check_cache(c: Cache, *, deep: bool = True, progress: bool = True) -> list[str]:
    """Problems found in cache ``c`` (empty list: consistent). ``deep`` also reads every feature."""
    m, problems = c.manifest, []
    dim, hw, n_cls = m.get("embed_dim"), m.get("num_patches"), len(c.classnames)
    try:
        protos = c.global_prototypes()
        if list(protos.shape) != [n_cls, dim] or not bool(np.isfinite(protos.numpy()).all()):
            problems.append(f"global prototypes: shape {list(protos.shape)}, expected [{n_cls}, {dim}] finite")
    except IIMError as e:
        problems.append(str(e))
    recorded = m.get("splits") or {}
    for name in c.split_names():
        try:
            s = c.split_status(name)
        except IIMError as e:
            problems.append(str(e))
            continue
        n, views = s["global_shape"][:2]
        where = f"split {name}"
        if s["global_shape"] != [n, views, dim] or s["local_shape"] != [n, views, hw, dim]:
            problems.append(f"{where}: shapes {s['global_shape']} / {s['local_shape']} do not match "
                            f"D={dim}, HW={hw}")
            continue
        rows = int(s.get("rows_written", 0))
        if rows > n or (s.get("complete") and rows != n):
            problems.append(f"{where}: rows_written {rows} of {n} (complete={s.get('complete')})")
        if bool(s.get("complete")) != bool(recorded.get(name, {}).get("complete", s.get("complete"))):
            problems.append(f"{where}: the manifest and the split disagree on completeness")
        skipped = s.get("skipped_rows", [])
        if len(skipped) != len(s.get("skipped_paths", [])) or any(not 0 <= r < n for r in skipped):
            problems.append(f"{where}: inconsistent skipped rows")
        if not s.get("complete"):
            continue
        try:
            split = c.split(name)          # refuses missing chunk files
        except IIMError as e:
            problems.append(str(e))
            continue
        labels = np.asarray(split.group["label"][:])
        if len(labels) != n or len(split.group["path"][:]) != n:
            problems.append(f"{where}: label/path arrays do not have {n} rows")
        elif is_ood(name) and (labels != -1).any():
            problems.append(f"{where}: OOD labels must all be -1")
        elif not is_ood(name) and ((labels < 0) | (labels >= n_cls)).any():
            problems.append(f"{where}: labels outside 0..{n_cls - 1}")
        elif not is_ood(name):
            problems += label_folder_problems(where, labels, np.asarray(split.group["path"][:]),
                                              m.get("class_dirs"), c.classnames)
        if deep:
            bar = tqdm(total=split.n, unit="img", desc=f"verify {name}", leave=False,
                       disable=None if progress else True)    # None: no bar when stderr is not a terminal
            try:
                for chunk in split.iter_chunks(view=None):
                    for what, arr in (("global", chunk.global_feats), ("local", chunk.local_feats)):
                        a = arr.numpy()
                        if not np.isfinite(a).all():
                            problems.append(f"{where}: non-finite {what} features near row {chunk.start}")
                        zero = ~a.reshape(len(a), -1).any(axis=1)
                        if zero.any():
                            problems.append(f"{where}: all-zero {what} features at row "
                                            f"{int(chunk.index[np.argmax(zero)])} (never written?)")
                    bar.update(len(chunk.labels))
            except IIMError as e:                   # an undecodable chunk: report it, check the rest
                problems.append(str(e))
            bar.close()
    return problems
