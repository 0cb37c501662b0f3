"""The ``demo`` benchmark: the demo world written once as image folders, then read like any benchmark.

    cache/demo-data/
        train/<class>/00000.png ...    32 images per ID class (the few-shot pool)
        test/<class>/00000.png ...     50 images per ID class
        ood/<set>/00000.png ...        500 images per OOD set (novel_shapes, novel_colours, scenes, textures)
        world.json                     what was generated (written last: its presence marks a complete world)

Generation is deterministic (world seed 0) and atomic: images go to a temporary sibling folder that is
renamed into place when complete, so an interrupted run leaves no half world behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..errors import IIMError
from . import world as W

DEFAULT_ROOT = Path("cache") / "demo-data"
DATA_ENV = "IIM_DEMO_DATA"
WORLD_VERSION = 1       # bump when world.py changes what it draws
WORLD_SEED = 0
N_TRAIN, N_TEST, N_OOD = 32, 50, 500
MARKER = "world.json"
CLASSNAMES = sorted(W.ID_CLASSES)   # class index = sorted class-folder order, as for ImageFolder


def class_dir(name: str) -> str:
    return name.replace(" ", "_")


def world_config(*, seed: int = WORLD_SEED, n_train: int = N_TRAIN, n_test: int = N_TEST,
                 n_ood: int = N_OOD) -> dict:
    return {"version": WORLD_VERSION, "seed": seed, "n_train": n_train, "n_test": n_test, "n_ood": n_ood,
            "classes": CLASSNAMES, "ood_sets": list(W.OOD_SETS)}


def default_root() -> Path:
    return Path(os.environ.get(DATA_ENV) or DEFAULT_ROOT)


def _jobs(cfg: dict):
    """(relative path, function drawing the image) for every image of the world."""
    for split, n in (("train", cfg["n_train"]), ("test", cfg["n_test"])):
        for name in cfg["classes"]:
            c = W.ID_CLASSES.index(name)
            for i in range(n):
                yield f"{split}/{class_dir(name)}/{i:05d}.png", (W.id_sample, (cfg["seed"], split, i, c))
    for name in cfg["ood_sets"]:
        for i in range(cfg["n_ood"]):
            yield f"ood/{name}/{i:05d}.png", (W.ood_sample, (cfg["seed"], name, i))


def read_world(root) -> dict | None:
    """The config of the complete world in ``root``, or None."""
    marker = Path(root) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def ensure_world(root=None, *, progress: bool = True, **sizes) -> Path:
    """Generate the demo world into ``root`` (default ``cache/demo-data`` or ``$IIM_DEMO_DATA``) unless
    it is already there; return ``root``. With no ``sizes`` given, an existing world of any size is
    accepted (a small one made by the tests, say); a world of another version or seed is refused."""
    root = Path(root) if root is not None else default_root()
    cfg = world_config(**sizes)
    have = read_world(root)
    if have is not None:
        same = {k: have.get(k) for k in cfg} == cfg if sizes else \
            all(have.get(k) == cfg[k] for k in ("version", "seed", "classes", "ood_sets"))
        if not same:
            raise IIMError(f"{root} holds a different demo world (version/seed/sizes differ); "
                           f"delete it to regenerate")
        return root
    if root.exists() and any(root.iterdir()):
        raise IIMError(f"{root} exists but holds no complete demo world ({MARKER} missing); delete it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        jobs = list(_jobs(cfg))
        for rel, (fn, args) in tqdm(jobs, desc="generating demo world", unit="img",
                                    disable=None if progress else True):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fn(*args).image).save(path, compress_level=1)
        (tmp / MARKER).write_text(json.dumps(cfg, indent=1))
        if root.exists():
            root.rmdir()          # empty (checked above)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def demo_benchmark(data_root=None):
    """Resolver for the benchmark registry: the demo world (generated on first use) as a Benchmark,
    in ``<data_root>/demo`` when a data root is given, else in ``cache/demo-data`` (``$IIM_DEMO_DATA``)."""
    return world_benchmark(Path(data_root) / "demo" if data_root else None)


def world_benchmark(root=None, *, progress: bool = True):
    """The demo world in ``root`` (see :func:`ensure_world`) as a :class:`~iim.data.benchmarks.Benchmark`."""
    from ..data.benchmarks import Benchmark, Folder

    root = ensure_world(root, progress=progress)
    cfg = read_world(root)
    return Benchmark(
        name="demo", description="demo world: 20 shape-colour classes, 4 OOD sets (offline, generated)",
        classnames=list(CLASSNAMES), class_dirs=[class_dir(c) for c in CLASSNAMES],
        train=Folder("demo train", ((root, "train"),), cfg["n_train"] * len(CLASSNAMES)),
        test=Folder("demo test", ((root, "test"),), cfg["n_test"] * len(CLASSNAMES)),
        ood={name: Folder(f"demo OOD set {name}", ((root, f"ood/{name}"),), cfg["n_ood"])
             for name in W.OOD_SETS},
    )
