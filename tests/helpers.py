"""Reusable test fixtures: a random feature cache and a fake run folder (the train -> score contract).

    cache = make_random_cache(tmp_path / "cache")                 # tiny-model shapes, 4 classes
    run = make_fake_run(tmp_path / "runs" / "r1", cache)           # runs/r1/checkpoint.pt
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from iim.cache import create_cache, manifest_key, ood_split_name, train_split_name

CLASSNAMES = ["apple", "boat", "cat", "dog", "eel", "fox", "goat", "hen"]


def random_manifest(classes: int = 4, **overrides) -> dict:
    """The manifest fields an extraction writes, for the tiny test model."""
    return {"model": "iim-test-tiny", "pretrained": "none", "weights": "none", "image_size": 32,
            "feature_version": "maskclip-value-v1", "benchmark": "random",
            "classnames": CLASSNAMES[:classes], **overrides}


def make_random_cache(path, *, classes: int = 4, hw: int = 64, dim: int = 32, n_test: int = 40,
                      ood: dict | None = None, shots: int = 2, seed: int = 0, views: int = 1,
                      signal: float = 0.8, manifest: dict | None = None):
    """A complete cache with random features: splits ``test``, ``ood_<name>`` (default two sets of 30),
    ``train_split_name(shots, 1)``, and global prototypes.

    ID images (train and test) carry a ``signal``-sized copy of their class's prototype in the global
    feature and in a third of their patches, so that a detector has something to find; OOD images are
    pure noise. Returns the open :class:`iim.cache.Cache`.
    """
    ood = {"near": 30, "far": 30} if ood is None else ood
    gen = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=-1)
    cache = create_cache(path, manifest or random_manifest(classes))
    cache.write_global_prototypes(protos.numpy())

    def write(name, n, labels):
        g = torch.randn(n, views, dim, generator=gen) * 0.3
        loc = torch.randn(n, views, hw, dim, generator=gen) * 0.3
        for i, y in enumerate(labels):
            if y >= 0:
                g[i] += signal * protos[y]
                loc[i, :, : hw // 3] += signal * protos[y]
        w = cache.writer(name, n=n, views=views, hw=hw, dim=dim, labels=labels,
                         paths=[f"{name}/{i}.png" for i in range(n)])
        w.append(g.numpy(), loc.numpy())
        w.finish()

    write(train_split_name(shots, 1), shots * classes, np.repeat(np.arange(classes), shots))
    write("test", n_test, np.arange(n_test) % classes)
    for name, n in ood.items():
        write(ood_split_name(name), n, -np.ones(n, dtype=np.int64))
    return cache


def make_fake_run(run_dir, cache, *, n_neg: int = 5, epoch: int = 3, epochs: int = 3, seed: int = 0,
                  config: dict | None = None, complete: bool | None = None) -> Path:
    """A run folder holding a ``checkpoint.pt`` that follows the run contract, with "learned" local
    prototypes = the cache's global prototypes plus noise and random negatives."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    glob = cache.global_prototypes()
    man = cache.manifest
    ckpt = {
        "config": {"cache": str(Path(cache.root).resolve()), "split": cache.train_splits()[0],
                   "model": man["model"], "weights": man["weights"], "classnames": list(man["classnames"]),
                   "k": 10, "n_neg": n_neg, "class_specific": False, "seed": seed, "epochs": epochs,
                   **(config or {})},
        "cache_fingerprint": manifest_key(man),
        "epoch": epoch,
        "complete": epoch == epochs if complete is None else complete,
        "prototypes": {"global": glob, "local": glob + 0.1 * torch.randn(glob.shape, generator=gen),
                       "neg": torch.randn(n_neg, glob.shape[1], generator=gen)},
    }
    torch.save(ckpt, run_dir / "checkpoint.pt")
    return run_dir
