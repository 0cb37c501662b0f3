"""What each cache split holds: few-shot train splits (SPEC §6), the ID test split, one split per OOD set.

Few-shot sampling is portable: for class folder ``d`` the files are listed and SORTED by relative path,
``rng = random.Random(f"{seed}/{d}")`` draws one key ``rng.random()`` per file in that order, and the K
files with the smallest keys are chosen (then kept in sorted order). ``random.random()`` is the one
stream Python guarantees across versions and machines, so a split depends only on the files, the seed
and the class folder name; never on the directory-listing order. Shots are nested: the K-shot files
of a seed are among its 2K-shot files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..cache.names import ood_split_name, stored_name, train_split_name
from ..errors import IIMError
from .benchmarks import Benchmark
from .folders import ORIENTATION, list_images

Warn = Callable[[str], None]


@dataclass
class SplitPlan:
    """The rows of one split: images ``root / files[i]`` with ``labels[i]`` (-1 for OOD)."""
    name: str
    kind: str                       # "train" | "test" | "ood"
    root: Path
    files: list[str]
    labels: list[int]
    views: int = 1
    seed: int = 0                   # seeds the augmented views of train splits
    attrs: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.files)


FILES_HASH = "json-list"      # split attribute ``files_hash``: how ``files_sha256`` encodes the list


def files_digest(files: list[str], encoding: str = FILES_HASH) -> str:
    """sha256 of the relative paths as a JSON list (``files_hash: json-list``): compare splits across
    machines at a glance. ``encoding="newline"``: the newline-joined paths of caches written before
    ``files_hash`` was recorded (ambiguous: a newline inside a name), to compare with those."""
    if encoding == "newline":
        return hashlib.sha256("\n".join(files).encode()).hexdigest()
    return hashlib.sha256(json.dumps(list(files)).encode()).hexdigest()


def file_attrs(files: list[str]) -> dict:
    """The split attributes about its files: their digest, and how each image was read (``orientation``:
    :data:`iim.data.folders.ORIENTATION`; splits of an older iim have none: EXIF orientation ignored)."""
    return dict(files_sha256=files_digest(files), files_hash=FILES_HASH, orientation=ORIENTATION)


def few_shot(files: list[str], shots: int, seed: int, class_dir: str) -> list[str]:
    """The ``shots`` files of one class for ``seed`` (see the module docstring), in sorted order."""
    files = sorted(files)
    if shots > len(files):
        raise IIMError(f"class {class_dir!r} has {len(files)} images, fewer than --shots {shots}")
    rng = random.Random(f"{seed}/{class_dir}")
    keys = [rng.random() for _ in files]
    chosen = sorted(range(len(files)), key=lambda i: (keys[i], i))[:shots]
    return [files[i] for i in sorted(chosen)]


def class_files(root: Path, class_dirs: list[str], what: str) -> list[list[str]]:
    """Per class, its images as sorted paths relative to ``root`` (``"<class>/<file>"``).
    A missing or empty class folder is an error naming it."""
    out = []
    for d in class_dirs:
        folder = root / d
        if not folder.is_dir():
            if list_images(root, recursive=False):
                raise IIMError(f"{what} {root} holds images directly, not in class folders; "
                               f"sort them into <class>/<image> folders (for ImageNet val: wnid folders)")
            raise IIMError(f"{what}: class folder {d!r} missing in {root}")
        files = list_images(folder)
        if not files:
            raise IIMError(f"{what}: class folder {folder} holds no images")
        out.append([f"{d}/{f}" for f in files])
    return out


def check_count(what: str, n: int, expected: int | None, warn: Warn | None) -> None:
    if n == 0:
        raise IIMError(f"{what} holds no images")
    if expected is not None and n != expected and warn is not None:
        warn(f"{what} has {n} images, expected {expected}")


def train_pools(bench: Benchmark) -> list[list[str]]:
    """Every class's train images (sorted), listed once for all the (shots, seed) splits of a run."""
    if bench.train is None:
        raise IIMError(f"benchmark {bench.name} has no train folder, so no few-shot split")
    return class_files(bench.train.path(), bench.class_dirs, bench.train.what)


def plan_train(bench: Benchmark, shots: int, seed: int, *, views: int = 1, pools=None,
               crop_scale: float | None = None) -> SplitPlan:
    """K-shot support set ``train_shots{K}_seed{S}`` (``_views{V}`` appended for V > 1 augmented views,
    cropped with scale ``(crop_scale, 1)``, default the benchmark's); ``pools`` (from
    :func:`train_pools`) saves listing the train folder again."""
    if bench.train is None:
        raise IIMError(f"benchmark {bench.name} has no train folder, so no few-shot split")
    if shots < 1 or views < 1:
        raise IIMError("--shots and --views must be at least 1")
    root = bench.train.path()
    files, labels = [], []
    for label, (d, pool) in enumerate(zip(bench.class_dirs, pools or train_pools(bench))):
        chosen = few_shot(pool, shots, seed, d)
        files += chosen
        labels += [label] * len(chosen)
    s_min = check_crop_scale(bench.crop_scale if crop_scale is None else crop_scale) if views > 1 else None
    attrs = dict(kind="train", shots=shots, seed=seed, source=str(root), **file_attrs(files),
                 sampler="sorted listing, random.Random(f'{seed}/{class_dir}'), K smallest keys",
                 crop_scale=s_min, augment="none (eval preprocess)" if views == 1 else
                 f"RandomResizedCrop(scale=({s_min:g}, 1), bicubic) + horizontal flip, per-view seed")
    return SplitPlan(train_split_name(shots, seed, views=views), "train", root, files, labels, views,
                     seed, attrs)


def stored_plans(plans: list[SplitPlan], cache) -> list[SplitPlan]:
    """``plans`` renamed to the names ``cache`` already holds them under, as groups or manifest entries:
    a train split of an older cache keeps its ``train_k{K}_s{S}`` name, so it is resumed or skipped,
    never extracted a second time."""
    held = [*cache.split_names(), *(cache.manifest.get("splits") or {})]
    return [dataclasses.replace(p, name=stored_name(p.name, held)) for p in plans]


def check_crop_scale(s_min) -> float:
    """``--crop-scale``: the smallest crop area fraction, in (0, 1]."""
    if not isinstance(s_min, (int, float)) or not 0 < s_min <= 1:
        raise IIMError(f"--crop-scale {s_min!r}: the smallest crop area fraction must lie in (0, 1]")
    return float(s_min)


def split_crop_scale(attrs: dict) -> float | None:
    """The crop scale a train split's views were extracted with (None: one view, no augmentation);
    splits written before it was recorded used torchvision's default 0.08."""
    if attrs.get("kind") != "train" or "augment" not in attrs or str(attrs["augment"]).startswith("none"):
        return None
    return attrs.get("crop_scale", 0.08)


def plan_test(bench: Benchmark, *, warn: Warn | None = None) -> SplitPlan:
    """Every image of every class folder of the test set, class by class, sorted."""
    if bench.test is None:
        raise IIMError(f"benchmark {bench.name} has no test folder")
    root = bench.test.path()
    per_class = class_files(root, bench.class_dirs, bench.test.what)
    files = [f for fs in per_class for f in fs]
    labels = [c for c, fs in enumerate(per_class) for _ in fs]
    check_count(f"{bench.test.what} ({root})", len(files), bench.test.expected, warn)
    return SplitPlan("test", "test", root, files, labels,
                     attrs=dict(kind="test", source=str(root), **file_attrs(files)))


def plan_ood(bench: Benchmark, name: str, *, warn: Warn | None = None) -> SplitPlan:
    """Every image under the OOD set's folder (recursive, sorted), label -1."""
    if name not in bench.ood:
        have = ", ".join(bench.ood) or "none"
        raise IIMError(f"benchmark {bench.name} has no OOD set {name!r} (it has: {have})")
    folder = bench.ood[name]
    root = folder.path()
    files = list_images(root)
    check_count(f"{folder.what} ({root})", len(files), folder.expected, warn)
    return SplitPlan(ood_split_name(name), "ood", root, files, [-1] * len(files),
                     attrs=dict(kind="ood", ood=name, source=str(root), **file_attrs(files)))
