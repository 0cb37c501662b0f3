"""What makes two feature sets comparable, and the one function that says how two differ.

A cache's *fingerprint* is the part of its manifest that fixes what its features mean (model, weights,
image size, feature definition, benchmark, classes). Two extractions may share a cache, a run may be
resumed or scored on a cache, and runs may be averaged, only when their fingerprints agree; every such
refusal names the first difference found by :func:`compare`.
"""
from __future__ import annotations

from dataclasses import dataclass

# Fields that must agree for two extractions to share a cache (mixing features is never allowed).
KEY_FIELDS = ("model", "weights", "image_size", "feature_version", "benchmark", "classnames")


def fingerprint(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in KEY_FIELDS}


@dataclass(frozen=True)
class Difference:
    key: str
    a: object
    b: object

    def shown(self) -> tuple[str, str]:
        """Both values as a message shows them: lists of class names by their length when it differs."""
        if isinstance(self.a, (list, tuple)) and isinstance(self.b, (list, tuple)) and self.key == "classnames":
            if len(self.a) != len(self.b):
                return f"{len(self.a)} classes", f"{len(self.b)} classes"
            i = next(i for i, (x, y) in enumerate(zip(self.a, self.b)) if x != y)
            return f"class #{i} {self.a[i]!r}", f"{self.b[i]!r}"
        return repr(self.a), repr(self.b)

    def __str__(self) -> str:
        """``model: 'a' vs 'b'``; class lists: ``classes: 4 vs 3 classes`` or ``class names: #2 is 'a' vs 'b'``."""
        if self.key == "classnames" and isinstance(self.a, (list, tuple)) and isinstance(self.b, (list, tuple)):
            if len(self.a) != len(self.b):
                return f"classes: {len(self.a)} vs {len(self.b)} classes"
            i = next(i for i, (x, y) in enumerate(zip(self.a, self.b)) if x != y)
            return f"class names: #{i} is {self.a[i]!r} vs {self.b[i]!r}"
        a, b = self.shown()
        return f"{self.key}: {a} vs {b}"


def compare(a: dict, b: dict, keys=KEY_FIELDS, *, missing_ok: bool = False) -> list[Difference]:
    """The entries of ``keys`` on which ``a`` and ``b`` disagree, in the order of ``keys``.
    ``missing_ok``: a key absent from either side (an older file) is not a difference."""
    out = []
    for k in keys:
        if missing_ok and (k not in a or k not in b):
            continue
        if a.get(k) != b.get(k):
            out.append(Difference(k, a.get(k), b.get(k)))
    return out


def content_digest(split) -> str:
    """sha256 of a complete split's stored global features, labels and image paths (each array's shape,
    dtype and bytes, length-prefixed): equal for the same features, different for a split of the same
    name made from other images (another cache, or the folder extracted again)."""
    import hashlib
    import json

    import numpy as np

    h = hashlib.sha256()
    paths = json.dumps(split.paths).encode()
    for arr in (np.ascontiguousarray(split.group["global"][:]), split.labels):
        head = f"{arr.dtype.str}{list(arr.shape)}".encode()
        h.update(len(head).to_bytes(8, "little") + head + arr.nbytes.to_bytes(8, "little") + arr.tobytes())
    h.update(len(paths).to_bytes(8, "little") + paths)
    return h.hexdigest()
