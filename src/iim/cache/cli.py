"""``iim cache``: look into feature caches (``info``, ``ls``) and check them (``verify``)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from tqdm.auto import tqdm

from ..cli_options import progress_option
from ..errors import IIMError
from .names import is_ood
from .store import MANIFEST, Cache, open_cache


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _state(status: dict) -> str:
    if status.get("complete"):
        return "complete"
    return f"partial {status.get('rows_written', 0)}/{status.get('n', '?')}"


@click.group("cache")
def cache():
    """Inspect and check feature caches written by 'iim extract'."""


@cache.command("info")
@click.argument("path", type=click.Path(file_okay=False))
def info(path):
    """Manifest and splits of the cache at PATH (complete and interrupted ones)."""
    from ..data.splits import split_crop_scale
    c = open_cache(path)
    m = c.manifest
    click.echo(f"{c.root}")
    click.echo(f"  benchmark    {m.get('benchmark')} ({len(c.classnames)} classes)")
    click.echo(f"  model        {m.get('model')}  weights {m.get('weights')}  image {m.get('image_size')} px"
               f"  D={m.get('embed_dim')}  HW={m.get('num_patches')}")
    if m.get("logit_scale") is not None:
        click.echo(f"  logit scale  {m['logit_scale']:.4g} (the model's own; training's default tau)")
    click.echo(f"  features     {m.get('feature_version')}  (iim {m.get('iim_version')}, "
               f"created {m.get('created')})")
    try:
        protos = c.global_prototypes()
        click.echo(f"  prototypes   'a photo of a {{c}}.' {list(protos.shape)}")
    except IIMError:
        click.echo("  prototypes   missing")
    names = c.split_names()
    if not names:
        click.echo("  no splits yet")
        return
    width = max(12, *(len(n) for n in names))
    click.echo(f"  {'split':{width}s} {'rows':>8s} {'views':>5s} {'crop':>5s}  {'state':18s} {'skipped':>7s} "
               f"{'size':>10s}")
    for name in names:
        s = c.split_status(name)
        crop = split_crop_scale(s)         # s_min of the augmented views; '-': one view, no crop
        click.echo(f"  {name:{width}s} {s.get('n', s['global_shape'][0]):>8d} {s['global_shape'][1]:>5d} "
                   f"{'-' if crop is None else f'{crop:g}':>5s}  "
                   f"{_state(s):18s} {len(s.get('skipped_rows', [])):>7d} {_human(_size(c.root / name)):>10s}")


@cache.command("ls")
@click.argument("root", default="cache", type=click.Path(file_okay=False))
def ls(root):
    """The caches in ROOT (default: ./cache), one line each."""
    root = Path(root)
    if not root.is_dir():
        raise IIMError(f"no folder {root} (caches are written to cache/<benchmark> by default)")
    found = [root] if (root / MANIFEST).is_file() else sorted(
        p for p in root.iterdir() if (p / MANIFEST).is_file())
    if not found:
        click.echo(f"no caches in {root}")
        return
    for p in found:
        try:
            c = open_cache(p)
            m = c.manifest
            done = c.splits()
            partial = len(c.split_names()) - len(done)
        except IIMError as e:                        # one broken cache does not hide the others
            click.echo(f"{str(p):24s} BROKEN: {e}")
            continue
        click.echo(f"{str(p):24s} {m.get('benchmark')}  {m.get('model')}/{m.get('weights')}  "
                   f"splits: {', '.join(done) or 'none'}" + (f" (+{partial} partial)" if partial else ""))


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


@cache.command("verify")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="Check metadata, shapes, labels and that every chunk file exists; "
              "do not read the features.")
@progress_option
def verify(path, quick, progress):
    """Check the cache at PATH: manifest, metadata, shapes, labels (range, and class folder), rows
    written, every chunk file present, and (unless --quick) every stored feature decodes, is finite
    and was written."""
    c = open_cache(path)
    problems = check_cache(c, deep=not quick, progress=progress)
    for p in problems:
        click.echo(f"  {p}", err=True)
    if problems:
        raise IIMError(f"{c.root}: {len(problems)} problem(s) found")
    done, partial = c.splits(), len(c.split_names()) - len(c.splits())
    click.echo(f"{c.root}: OK ({len(done)} complete split(s)" + (f", {partial} partial" if partial else "")
               + (", features not read" if quick else "") + ")")
