"""Small, deterministic image folders for the tests (no downloads).

    make_image_folder(root, {"cat": 5, "dog": 4})      # root/cat/000.png ... (ImageFolder layout)
    make_world(tmp_path)                                # train/, test/, ood/{noise,stripes}/, bench.toml
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXTS = (".png", ".jpg", ".JPEG")   # mixed on purpose: listing must be case-insensitive


def write_image(path, seed: int, *, size=(40, 36), tint=(128, 128, 128)) -> Path:
    """A noisy tinted picture with a bright square at a seed-dependent place; format from the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.clip(rng.normal(tint, 40, size=(h, w, 3)), 0, 255)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y:y + h // 3, x:x + w // 3] = 255 - np.asarray(tint)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(img.astype(np.uint8)).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def make_image_folder(root, counts: dict[str, int], *, seed: int = 0, flat: bool = False) -> Path:
    """ImageFolder ``root/<class>/<i><ext>`` (or all in ``root`` with ``flat``)."""
    root = Path(root)
    for c, (name, n) in enumerate(sorted(counts.items())):
        tint = tuple(int(v) for v in np.random.default_rng(1000 + c).integers(30, 225, size=3))
        for i in range(n):
            rel = f"{name}_{i:03d}{EXTS[i % len(EXTS)]}" if flat else f"{name}/{i:03d}{EXTS[i % len(EXTS)]}"
            write_image(root / rel, seed * 100_003 + c * 1009 + i, tint=tint)
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_ood_folder(root, n: int, *, seed: int = 0, nested: bool = True) -> Path:
    """``n`` images under ``root`` (in two sub-folders with ``nested``: OOD sets are searched recursively)."""
    root = Path(root)
    for i in range(n):
        sub = f"part{i % 2}/" if nested else ""
        write_image(root / f"{sub}{i:04d}{EXTS[i % len(EXTS)]}", 7_000_000 + seed * 10_007 + i,
                    tint=(40 + 10 * (i % 5), 200, 90))
    return root


def truncate(path, keep: float = 0.4) -> Path:
    """Cut a file to ``keep`` of its bytes (a truncated JPEG is unreadable)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep))])
    return path


def make_world(root, *, classes=("ant", "bee", "cat"), train_per_class: int = 6, test_per_class: int = 4,
               ood=None, seed: int = 0) -> dict:
    """A small benchmark: ``train/``, ``test/``, ``ood/<name>/`` and ``bench.toml`` describing it."""
    root = Path(root)
    ood = {"noise": 5, "stripes": 4} if ood is None else ood
    make_image_folder(root / "train", {c: train_per_class for c in classes}, seed=seed)
    make_image_folder(root / "test", {c: test_per_class for c in classes}, seed=seed + 1)
    for k, (name, n) in enumerate(sorted(ood.items())):
        make_ood_folder(root / "ood" / name, n, seed=seed + 10 + k)
    lines = ['name = "toy"', 'train = "train"', 'test = "test"', "", "[ood]"]
    lines += [f'{name} = "ood/{name}"' for name in sorted(ood)]
    (root / "bench.toml").write_text("\n".join(lines) + "\n")
    return {"root": root, "toml": root / "bench.toml", "train": root / "train", "test": root / "test"}
