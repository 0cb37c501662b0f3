"""Image folders: deterministic listing, case-insensitive folder lookup, and the dataset stage one reads.

Listing is independent of the filesystem: files are recognised by extension (case-insensitive), hidden
files (``.name``) are ignored, and the result is sorted by relative POSIX path (code-point order), so
the same folder lists identically on every machine.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".pbm")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root, *, recursive: bool = True) -> list[str]:
    """Image files under ``root`` as sorted relative POSIX paths (``"sub/img.jpg"``); a file reached
    twice through folder links is listed once (under the first path in walk order)."""
    root = Path(root)
    found = []
    if recursive:   # folder links are followed, each real folder once (a link loop ends), each file once
        seen_dirs, seen_files = set(), set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(root)
            for f in sorted(filenames):
                real = os.path.realpath(os.path.join(dirpath, f))
                if is_image_file(f) and real not in seen_files:
                    seen_files.add(real)
                    found.append((rel / f).as_posix())
    else:
        found = [e.name for e in os.scandir(root) if is_image_file(e.name) and e.is_file()]
    return sorted(found)


def list_class_dirs(root) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``root``: the classes of an ImageFolder."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def find_dir(root, rel: str) -> Path | None:
    """``root / rel`` matching each path component case-insensitively (``sun`` finds ``SUN``), or None."""
    path = Path(root)
    for part in Path(rel).parts:
        exact = path / part
        if exact.is_dir():
            path = exact
            continue
        if not path.is_dir():
            return None
        match = sorted(e.name for e in os.scandir(path) if e.is_dir() and e.name.lower() == part.lower())
        if not match:
            return None
        path = path / match[0]
    return path if path.is_dir() else None


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ORIENTATION = "exif"     # recorded in the cache: images are turned upright by their EXIF orientation tag


def to_rgb(image: Image.Image) -> Image.Image:
    """The RGB image the encoder sees: turned as its EXIF orientation tag says (a phone photo tagged
    "rotate 90" is encoded upright; PIL's ``ImageOps.exif_transpose``), then PIL's own ``convert("RGB")``
    for every mode (grayscale, palette, CMYK, RGBA: alpha dropped, as CLIP's preprocessing does), except
    16-bit grayscale, which PIL would clip at 255 (almost all white): it is scaled to 8 bits (``v >> 8``)
    first."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT:
        image = Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    return image.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Open and fully decode an image as RGB with :func:`to_rgb` (raises on unreadable or truncated files)."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def view_seed(seed: int, rel_path: str, view: int) -> int:
    """Seed of augmented view ``view`` of one image: a hash of (seed, relative path, view), so a view
    is the same whatever the batch, worker or resume point."""
    digest = hashlib.blake2b(f"{seed}/{rel_path}/{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class ImageRows(torch.utils.data.Dataset):
    """Row ``i`` of a split: ``(i, images [V, 3, H, W], error)``; ``error`` is "" for a readable image.

    Unreadable files do not raise inside workers: they come back as zero images with ``error`` set,
    and the extraction loop decides (stop naming the file, or skip it with ``--skip-bad``).
    With ``augment`` given, each of the ``views`` views is ``augment(image)`` under
    :func:`view_seed`; otherwise the single view is ``transform(image)`` (the eval preprocess).
    """

    def __init__(self, root, files: list[str], transform, *, image_size: int, views: int = 1,
                 augment=None, seed: int = 0):
        if augment is None and views != 1:
            raise ValueError("several views need an augmentation")
        self.root, self.files = Path(root), list(files)
        self.transform, self.augment = transform, augment
        self.views, self.seed, self.image_size = views, seed, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int):
        rel = self.files[row]
        try:
            image = load_rgb(self.root / rel)
        except Exception as e:  # PIL raises OSError, UnidentifiedImageError, DecompressionBombError, ...
            empty = torch.zeros(self.views, 3, self.image_size, self.image_size)
            return row, empty, f"{type(e).__name__}: {e}".splitlines()[0]
        if self.augment is None:
            return row, self.transform(image)[None], ""
        views = []
        for v in range(self.views):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed(self.seed, rel, v))
                views.append(self.augment(image))
        return row, torch.stack(views), ""
