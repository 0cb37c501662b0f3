"""Which files ``iim predict IMAGES...`` scores: files as given, folders searched recursively for image
files (by extension, as ``iim extract`` lists folders), and glob patterns (``**`` recursive) for shells
that did not expand them. A path that does not exist, or a pattern that matches nothing, is an error
before any work starts; so is a selection without a single file."""
from __future__ import annotations

import glob
from pathlib import Path

from ..data.folders import IMAGE_EXTENSIONS, list_images
from ..errors import IIMError


def select_images(args) -> list[str]:
    """The files ``args`` name, in argument order (folders sorted), each once."""
    found: list[str] = []
    for arg in map(str, args):
        if Path(arg).exists():
            targets = [arg]
        elif glob.has_magic(arg):
            targets = sorted(glob.glob(arg, recursive=True))
            if not targets:
                raise IIMError(f"{arg} matches no file")
        else:
            raise IIMError(f"no such file or folder: {arg}")
        for t in targets:
            p = Path(t)
            found += [str(p / rel) for rel in list_images(p)] if p.is_dir() else [t]
    found = list(dict.fromkeys(found))
    if not found:
        shown = " ".join(map(str, args)) or "(nothing)"
        raise IIMError(f"no images to predict in {shown}: pass image files, folders holding "
                       f"{'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:4])}/... files, or globs")
    return found
