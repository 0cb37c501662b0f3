"""Benchmarks: named sets of ID and OOD image folders under a data root, and user benchmarks in TOML.

Built in (SPEC §6), all resolved under ``--data-root`` / ``$IIM_DATA_ROOT``:

    imagenet            ImageNet-1k: <root>/imagenet/train/<wnid>/..., <root>/imagenet/val/<wnid>/...
    imagenet100         the 100 classes of MCM's wnid list (data/imagenet100_wnids.txt)
    imagenet500-easy    classes 0..499 of the sorted wnids
    imagenet500-hard    classes 500..999 of the sorted wnids
    OOD sets (MOS)      <root>/iNaturalist, <root>/SUN, <root>/Places, <root>/Texture/images or dtd/images

Folder names match case-insensitively, and the accepted layout variants are data (the tuples below).
Other benchmarks join the registry with :func:`register_benchmark`; a user benchmark is a TOML file::

    name = "my-bench"
    classnames = ["cat", "dog"]     # optional: in sorted class-folder order (or a table folder = name);
                                    # default: the class folder names
    train = "data/train"            # ImageFolder roots (<class>/<image>), relative to the TOML's folder
    test = "data/test"
    [ood]
    textures = "data/ood/textures"  # name -> folder of images, searched recursively
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from ..errors import IIMError
from .folders import find_dir, list_class_dirs

DATA_ROOT_ENV = "IIM_DATA_ROOT"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Folder:
    """A folder of a benchmark: the first of ``candidates`` (base, relative path) that exists."""
    what: str                                   # for messages: "ImageNet val", "OOD set sun"
    candidates: tuple[tuple[Path, str], ...]
    expected: int | None = None                 # expected image count (a mismatch warns)

    def find(self) -> Path | None:
        for base, rel in self.candidates:
            found = find_dir(base, rel)
            if found is not None:
                return found.resolve()
        return None

    def path(self) -> Path:
        found = self.find()
        if found is None:
            looked = ", ".join(str(Path(b) / r) for b, r in self.candidates)
            raise IIMError(f"{self.what} not found (looked for {looked})")
        return found


@dataclass
class Benchmark:
    """A resolved benchmark: C classes (names + class-folder names) and where its images are."""
    name: str
    classnames: list[str]
    class_dirs: list[str]                       # folder of class c inside the train / test roots
    train: Folder | None = None                 # ImageFolder of the few-shot pool
    test: Folder | None = None                  # ImageFolder of the ID test set
    ood: dict[str, Folder] = field(default_factory=dict)
    description: str = ""
    crop_scale: float = 0.85                    # s_min of the augmented views (SPEC §1)

    def __post_init__(self):
        if len(self.classnames) != len(self.class_dirs):
            raise IIMError(f"benchmark {self.name}: {len(self.classnames)} class names for "
                           f"{len(self.class_dirs)} class folders")


# ---------------------------------------------------------------------------------------------------
# Built-in benchmarks, as data
# ---------------------------------------------------------------------------------------------------
# ImageNet folder under the data root (first found wins); each holds train/ and val/ (class folders)
IMAGENET_DIRS = ("imagenet", "imagenet-1k", "imagenet1k", "ILSVRC2012", "ILSVRC/Data/CLS-LOC")
IMAGENET_VAL_PER_CLASS = 50


@dataclass(frozen=True)
class ImageNetVariant:
    description: str
    classes: slice | str   # a slice of the sorted 1000 wnids, or a wnid-list file in iim/data
    crop_scale: float = 0.85   # s_min of RandomResizedCrop, from the authors' configs (SPEC §1, §9)


IMAGENET_VARIANTS = {
    "imagenet": ImageNetVariant("ImageNet-1k (1000 classes)", slice(0, 1000)),
    "imagenet100": ImageNetVariant("ImageNet-100 (MCM's 100 wnids)", "imagenet100_wnids.txt", 0.65),
    "imagenet500-easy": ImageNetVariant("ImageNet-500-Easy (sorted-wnid classes 0..499)", slice(0, 500)),
    "imagenet500-hard": ImageNetVariant("ImageNet-500-Hard (sorted-wnid classes 500..999)", slice(500, 1000)),
}


@dataclass(frozen=True)
class OODSet:
    folders: tuple[str, ...]   # accepted layouts under the data root, searched recursively for images
    expected: int


OOD_SETS = {   # the MOS subsets (SPEC §6)
    "inaturalist": OODSet(("iNaturalist",), 10000),
    "sun": OODSet(("SUN",), 10000),
    "places": OODSet(("Places",), 10000),
    "texture": OODSet(("Texture/images", "dtd/images", "Texture", "dtd"), 5640),
}


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in sorted order (= class index order), from timm's bundled list."""
    from timm.data import ImageNetInfo   # timm is a dependency of open_clip
    wnids = list(ImageNetInfo().label_names())
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise IIMError(f"timm's ImageNet class list has {len(wnids)} entries or is not sorted; "
                       f"iim needs the 1000 sorted ImageNet-1k wnids (check the installed timm)")
    return wnids


def _package_list(name: str) -> list[str]:
    text = resources.files("iim.data").joinpath(name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def imagenet_benchmark(name: str, data_root=None) -> Benchmark:
    """Resolve one of :data:`IMAGENET_VARIANTS` (+ the four MOS OOD sets) under the data root."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    variant = IMAGENET_VARIANTS[name]
    root = resolve_data_root(data_root)
    wnids = imagenet_wnids()
    chosen = (wnids[variant.classes] if isinstance(variant.classes, slice)
              else sorted(_package_list(variant.classes)))
    index = {w: i for i, w in enumerate(wnids)}
    unknown = [w for w in chosen if w not in index]
    if unknown:
        raise IIMError(f"{variant.classes}: {unknown[0]} is not an ImageNet-1k wnid")

    def folder(sub, what, expected=None):
        return Folder(what, tuple((root, f"{d}/{sub}") for d in IMAGENET_DIRS), expected)

    return Benchmark(
        name=name, description=variant.description, crop_scale=variant.crop_scale,
        classnames=[IMAGENET_CLASSNAMES[index[w]] for w in chosen], class_dirs=chosen,
        train=folder("train", "ImageNet train"),
        test=folder("val", "ImageNet val", IMAGENET_VAL_PER_CLASS * len(chosen)),
        ood={k: Folder(f"OOD set {k}", tuple((root, f) for f in s.folders), s.expected)
             for k, s in OOD_SETS.items()},
    )


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------
Resolver = Callable[..., Benchmark]   # resolver(data_root: Path | None) -> Benchmark
_REGISTRY: dict[str, tuple[Resolver | str, str]] = {}


def register_benchmark(name: str, resolver: Resolver | str, *, description: str = "",
                       replace: bool = False) -> None:
    """Add a named benchmark. ``resolver(data_root)`` returns a :class:`Benchmark`; it may also be a
    ``"module:function"`` string, imported only when the benchmark is used."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"benchmark {name!r} is already registered")
    if not NAME_RE.match(name):
        raise ValueError(f"bad benchmark name {name!r}")
    _REGISTRY[name] = (resolver, description)


def known_benchmarks() -> dict[str, str]:
    """Registered benchmark names -> one-line descriptions."""
    return {k: d for k, (_, d) in sorted(_REGISTRY.items())}


for _name, _variant in IMAGENET_VARIANTS.items():
    register_benchmark(_name, lambda data_root=None, _n=_name: imagenet_benchmark(_n, data_root),
                       description=_variant.description)
register_benchmark("demo", "iim.demo.benchmark:demo_benchmark",
                   description="generated offline demo world (shapes and colours), made on first use")


def resolve_data_root(data_root=None) -> Path:
    """``data_root`` or ``$IIM_DATA_ROOT``; a clear error when neither names an existing folder."""
    value = data_root or os.environ.get(DATA_ROOT_ENV)
    if not value:
        raise IIMError(f"no data root: pass --data-root DIR or set {DATA_ROOT_ENV} "
                       f"(ImageNet under DIR/imagenet/{{train,val}}, OOD sets under DIR/iNaturalist, ...)")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise IIMError(f"data root {root} is not a folder")
    return root


def load_benchmark(spec: str, data_root=None) -> Benchmark:
    """A registered benchmark by name, or a user benchmark from a ``.toml`` file."""
    spec = str(spec)
    if spec.lower().endswith(".toml") or (os.sep in spec and Path(spec).is_file()):
        return load_toml_benchmark(spec)
    if spec not in _REGISTRY:
        known = ", ".join(known_benchmarks())
        raise IIMError(f"unknown benchmark {spec!r}; known: {known} (or a .toml file)")
    resolver, _ = _REGISTRY[spec]
    if isinstance(resolver, str):
        import importlib
        module, attr = resolver.split(":")
        try:
            resolver = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise IIMError(f"benchmark {spec!r} is not available in this install ({resolver})") from None
    return resolver(data_root)


# ---------------------------------------------------------------------------------------------------
# User benchmarks (TOML)
# ---------------------------------------------------------------------------------------------------
TOML_KEYS = {"name", "classnames", "train", "test", "ood", "description"}
MAX_NAME = 100          # the default --out is cache/<name>: a folder name, well below the usual 255 bytes


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise IIMError("reading a TOML benchmark needs Python >= 3.11 or 'pip install tomli'") from None
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise IIMError(f"{path}: invalid TOML ({e})") from None


def load_toml_benchmark(path) -> Benchmark:
    """Read a user benchmark (see the module docstring); paths are relative to the file's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise IIMError(f"benchmark file not found: {path}")
    cfg = _read_toml(path)
    extra = sorted(set(cfg) - TOML_KEYS)
    if extra:
        raise IIMError(f"{path}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(TOML_KEYS))})")
    name = cfg.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_NAME:
        raise IIMError(f"{path}: 'name' must be a string of letters, digits, '.', '_' or '-' (at most "
                       f"{MAX_NAME} characters, starting with a letter or digit)")
    if not isinstance(cfg.get("description", ""), str):
        raise IIMError(f"{path}: 'description' must be a string")
    if "train" not in cfg and "test" not in cfg:
        raise IIMError(f"{path}: give at least one of 'train' and 'test' (ImageFolder roots)")

    base = path.parent
    folders = {}
    for key in ("train", "test"):
        if key in cfg:
            if not isinstance(cfg[key], str):
                raise IIMError(f"{path}: '{key}' must be a folder path")
            folders[key] = Folder(f"{name} {key} folder", ((base, str(Path(cfg[key]).expanduser())),))
    ood = cfg.get("ood", {})
    if not isinstance(ood, dict) or not all(isinstance(v, str) for v in ood.values()):
        raise IIMError(f"{path}: [ood] must be a table of name = \"folder\"")
    for k in ood:
        if not re.match(r"^[A-Za-z0-9_-]+$", k):
            raise IIMError(f"{path}: OOD set name {k!r} may hold only letters, digits, '_' and '-'")

    class_dirs = _class_dirs(path, folders)
    return Benchmark(
        name=name, description=str(cfg.get("description", f"user benchmark {path}")),
        classnames=_classnames(path, cfg.get("classnames"), class_dirs), class_dirs=class_dirs,
        train=folders.get("train"), test=folders.get("test"),
        ood={k: Folder(f"{name} OOD set {k}", ((base, str(Path(v).expanduser())),)) for k, v in ood.items()},
    )


def _class_dirs(path: Path, folders: dict[str, Folder]) -> list[str]:
    listed = {k: list_class_dirs(f.path()) for k, f in folders.items() if f.find() is not None}
    if not listed:
        folders[next(iter(folders))].path()   # raises: folder not found
    if len(listed) == 2 and listed["train"] != listed["test"]:
        odd = sorted(set(listed["train"]) ^ set(listed["test"]))[0]   # lists are sorted: sets differ
        where = "train" if odd in listed["train"] else "test"
        raise IIMError(f"{path}: train and test have different class folders ({odd!r} only in {where})")
    dirs = next(iter(listed.values()))
    if not dirs:
        raise IIMError(f"{path}: {next(iter(folders.values())).path()} has no class folders")
    return dirs


def prompt_form(name: str) -> str:
    """What CLIP's tokenizer sees of a class name: lower case, runs of whitespace as one space, no
    leading or trailing space (open_clip's ``whitespace_clean(...).lower()``): names equal in this form
    give the same prompt."""
    return " ".join(name.split()).lower()


def _classnames(path: Path, names, class_dirs: list[str]) -> list[str]:
    out = _given_classnames(path, names, class_dirs)
    for d, n in zip(class_dirs, out):
        if not n.strip():
            raise IIMError(f"{path}: the class name of folder {d!r} is empty; give it a name (classnames)")
        if any(unicodedata.category(ch) == "Cc" for ch in n):
            raise IIMError(f"{path}: the class name {n!r} of folder {d!r} holds a control character "
                           f"(newline, tab, ...); rename it (classnames)")
    forms = [prompt_form(n) for n in out]
    twice = sorted({f for f in forms if forms.count(f) > 1})
    if twice:   # identical prompts: the classes could not be told apart
        raise IIMError(f"{path}: classnames must differ; " + ", ".join(_same_prompt(out, class_dirs, forms, f)
                                                                        for f in twice))
    return out


def _same_prompt(names: list[str], class_dirs: list[str], forms: list[str], form: str) -> str:
    """``'a' names folders x, y`` or ``'Cat' and 'cat' name folders x, y (...)`` for one repeated form."""
    spelled = sorted({n for n, f in zip(names, forms) if f == form})
    dirs = ", ".join(d for d, f in zip(class_dirs, forms) if f == form)
    if len(spelled) == 1:
        return f"{spelled[0]!r} names folders {dirs}"
    return (f"{' and '.join(map(repr, spelled))} name folders {dirs} (the same prompt: the tokenizer reads "
            f"lower case, spaces folded)")


def _given_classnames(path: Path, names, class_dirs: list[str]) -> list[str]:
    if names is None:
        return list(class_dirs)
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        if len(names) != len(class_dirs):
            raise IIMError(f"{path}: {len(names)} classnames for {len(class_dirs)} class folders "
                           f"(list them in sorted folder order)")
        return list(names)
    if isinstance(names, dict) and all(isinstance(n, str) for n in names.values()):
        unknown = sorted(set(names) - set(class_dirs))
        if unknown:
            raise IIMError(f"{path}: classnames names folder {unknown[0]!r}, which is not a class folder")
        return [names.get(d, d) for d in class_dirs]
    raise IIMError(f"{path}: 'classnames' must be a list of strings or a table folder = \"name\"")
