"""The cache's split names, formatted and parsed in one place.

    train_k{K}_s{S}        K-shot support set drawn with seed S (one view per image)
    train_k{K}_s{S}_v{V}   the same with V > 1 augmented views per image
    test                   the ID test set
    ood_{name}             one OOD set
"""
from __future__ import annotations

import re
from typing import NamedTuple

TEST = "test"
OOD_PREFIX = "ood_"
_TRAIN = re.compile(r"train_k(\d+)_s(\d+)(?:_v(\d+))?$")


class TrainSplit(NamedTuple):
    name: str
    shots: int
    seed: int
    views: int


def train_split_name(shots: int, seed: int, views: int = 1) -> str:
    """``train_k{K}_s{S}``; a split of V > 1 augmented views is ``train_k{K}_s{S}_v{V}``."""
    return f"train_k{shots}_s{seed}" + (f"_v{views}" if views != 1 else "")


def parse_train_split(name: str) -> TrainSplit | None:
    """``"train_k16_s2_v4"`` -> ``TrainSplit(name, 16, 2, 4)``; None when ``name`` is not a train split."""
    m = _TRAIN.match(str(name))
    return TrainSplit(name, int(m[1]), int(m[2]), int(m[3] or 1)) if m else None


def without_seed(name: str) -> str:
    """``train_k16_s2_v16`` -> ``train_k16_v16``: what runs of different seeds share."""
    t = parse_train_split(name)
    return str(name) if t is None else f"train_k{t.shots}" + (f"_v{t.views}" if t.views != 1 else "")


def ood_split_name(name: str) -> str:
    """``"inaturalist"`` (or already ``"ood_inaturalist"``) -> ``"ood_inaturalist"``."""
    return name if is_ood(name) else OOD_PREFIX + name


def is_ood(split: str) -> bool:
    return str(split).startswith(OOD_PREFIX)


def ood_set_name(split: str) -> str:
    """``ood_inaturalist`` -> ``inaturalist`` (other names unchanged)."""
    return split[len(OOD_PREFIX):] if is_ood(split) else split
