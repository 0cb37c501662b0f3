"""What the runs trained in one process share, each made once: caches, text models, global
prototypes, train features."""
from __future__ import annotations

from pathlib import Path

import torch

from ...cache import open_cache
from ...cache_model import load_cache_model
from ...text import global_prototypes
from .feed import TrainFeatures


class Resources:
    """What the runs trained in one process share, each made once: the opened caches, each cache's
    text model (per device) and global prototypes, each train split's features (:class:`TrainFeatures`;
    every run reads them through its own shallow copy, which holds its own epoch draw)."""

    def __init__(self, *, progress: bool = True):
        self.progress, self._made = progress, {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def cache(self, path):
        return self._once(("cache", str(Path(path).resolve())), lambda: open_cache(path))

    def model(self, cache, device, pretrained, *, note=None):
        """The cache's model (:func:`iim.cache_model.load_cache_model`: its weights checked)."""
        return self._once(("model", str(cache.root), str(device), pretrained),
                          lambda: load_cache_model(cache, device, pretrained, note=note)[0])

    def global_prototypes(self, cache, model) -> torch.Tensor:
        return self._once(("global", str(cache.root), id(model)), lambda: (
            cache.global_prototypes() if cache.has_global_prototypes()      # damaged: refused
            else global_prototypes(model, cache.classnames)))            # caches from before they were stored

    def features(self, cache, split, device, where: str) -> TrainFeatures:
        key = ("feats", str(cache.root), split.name, str(device), where)
        return self._once(key, lambda: TrainFeatures(split, device, where, progress=self.progress))
