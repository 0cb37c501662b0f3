"""What the runs trained in one process share, each made once: caches, text models, global
prototypes, train features."""
from __future__ import annotations

from pathlib import Path

import torch

from ...cache import open_cache
from ...errors import IIMError
from ...models import create_model, is_local_checkpoint, weights_id
from ...text import global_prototypes
from .feed import TrainFeatures


def load_text_model(manifest: dict, device, pretrained: str | None = None):
    """The cache's CLIP model (for its text tower), with its weights verified against the manifest."""
    name = manifest.get("model")
    recorded = manifest.get("weights")
    source = pretrained or manifest.get("pretrained") or recorded
    if not name or not source:
        raise IIMError("the cache manifest does not name its model and weights; re-extract with iim extract")
    if str(recorded).startswith("sha256:"):
        if not is_local_checkpoint(source):
            raise IIMError(f"the cache was extracted with the checkpoint file {source}, which is not there; "
                           f"pass --pretrained /path/to/that/file")
        if weights_id(source) != recorded:
            raise IIMError(f"{source} is not the checkpoint the cache was extracted with (sha256 differs "
                           f"from {recorded[:19]}...); pass the right file with --pretrained")
    elif pretrained and weights_id(pretrained) != recorded:
        raise IIMError(f"--pretrained {pretrained} differs from the weights the cache was extracted with "
                       f"({recorded!r})")
    model, _ = create_model(name, source, device=device)
    return model


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

    def model(self, cache, device, pretrained):
        return self._once(("model", str(cache.root), str(device), pretrained),
                          lambda: load_text_model(cache.manifest, device, pretrained))

    def global_prototypes(self, cache, model) -> torch.Tensor:
        return self._once(("global", str(cache.root), id(model)), lambda: (
            cache.global_prototypes() if cache.has_global_prototypes()      # damaged: refused
            else global_prototypes(model, cache.classnames)))            # caches from before they were stored

    def features(self, cache, split, device, where: str) -> TrainFeatures:
        key = ("feats", str(cache.root), split.name, str(device), where)
        return self._once(key, lambda: TrainFeatures(split, device, where, progress=self.progress))
