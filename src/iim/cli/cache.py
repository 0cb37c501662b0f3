"""``iim cache``: look into feature caches (``info``, ``ls``), check them (``verify``), exchange them as HDF5 (``export``, ``import``)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import progress_option
from ..errors import IIMError
from ..cache.location import as_path, guarantees, tree_size
from ..cache.store import MANIFEST, open_cache
from ..cache.verify import check_cache


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
    """Manifest and splits of the cache at PATH (a folder or an fsspec URL; complete and interrupted splits)."""
    from ..data.splits import split_crop_scale
    c = open_cache(path)
    m = c.manifest
    click.echo(f"{c.root}")
    click.echo(f"  storage      {guarantees(c.root)}")
    click.echo(f"  benchmark    {m.get('benchmark')} ({len(c.classnames)} classes)")
    click.echo(f"  model        {m.get('model')}  weights {m.get('weights')}  image {m.get('image_size')} px"
               f"  D={m.get('embed_dim')}  HW={m.get('num_patches')}")
    if m.get("logit_scale") is not None:
        click.echo(f"  logit scale  {m['logit_scale']:.4g} (the model's own; training's default tau)")
    click.echo(f"  features     {m.get('feature_version')}  (iim {m.get('iim_version')}, "
               f"created {m.get('created')})")
    click.echo("  images       " + ("EXIF orientation applied" if m.get("orientation") == "exif" else
                                    "EXIF orientation ignored (extracted by an iim before it was applied)"))
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
                   f"{_state(s):18s} {len(s.get('skipped_rows', [])):>7d} {_human(tree_size(c.root / name)):>10s}")


@cache.command("ls")
@click.argument("root", default="cache", type=click.Path(file_okay=False))
def ls(root):
    """The caches in ROOT (default: ./cache; a folder or an fsspec URL), one line each."""
    root = as_path(root)
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


@cache.command("verify")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="Check metadata, shapes, labels and that every chunk file exists; "
              "do not read the features.")
@progress_option
def verify(path, quick, progress):
    """Check the cache at PATH (a folder or an fsspec URL): manifest, metadata, shapes, labels (range, and class folder), rows
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


@cache.command("export")
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True,
              help="File format of the export.")
@click.option("--allow-incomplete", is_flag=True, help="Export interrupted splits too (the rows written so "
              "far; they stay incomplete when imported).")
@click.argument("path", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@progress_option
def export(fmt, allow_incomplete, path, out, progress):
    """Write the cache at PATH to one HDF5 file OUT (a group per split, the manifest as a root attribute)."""
    from ..cache.hdf5 import export_hdf5
    out = export_hdf5(path, out, allow_incomplete=allow_incomplete, progress=progress)
    click.echo(f"wrote {out} ({_human(Path(out).stat().st_size)})")


@cache.command("import")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("path", type=click.Path(file_okay=False))
@progress_option
def import_(src, path, progress):
    """Write the HDF5 file SRC (from 'iim cache export') into the cache at PATH (a new or matching cache)."""
    from ..cache.hdf5 import import_hdf5
    c = import_hdf5(src, path, progress=progress)
    click.echo(f"{c.root}: imported {len(c.splits())} complete split(s)")
