"""Every name made of a split's shots / seed / views, built and parsed in one place.

Shots are written as shots, never as ``k`` (``k`` is always a top-k). Each part is an option's flag
name followed by its value, ``--shots 16 --seed 1 --views 4`` -> ``shots16``, ``seed1``, ``views4``,
the form training-grid points give every option (``k8``, ``n_neg10``); views appear only for V > 1:

    train_shots{K}_seed{S}               cache split: the K-shot support set drawn with seed S
    train_shots{K}_seed{S}_views{V}      the same with V > 1 augmented views per image
    test, ood_{name}                     the ID test set, one OOD set
    <benchmark>-shots{K}-seed{S}[-views{V}]-<method>   run folder of ``iim train`` (under runs/)
    <recipe or method>-shots{K}-seed{S}[-views{V}]     run folder of ``iim demo``
    shots{K}-seed{S}[-views{V}]-<option><value>...     training-grid point folder

Names written by older versions still load: train splits ``train_k{K}_s{S}[_v{V}]`` parse alike
(:func:`parse_train_split`), and :func:`stored_name` finds a split under whichever spelling the cache
holds, so a split extracted into an older cache keeps the name already on disk (no second copy).
Run folders are never parsed (a run is read from its checkpoint), so older ones load by their path.
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple

TEST = "test"
OOD_PREFIX = "ood_"
_TRAIN = re.compile(r"train_shots(\d+)_seed(\d+)(?:_views(\d+))?$")
_TRAIN_OLD = re.compile(r"train_k(\d+)_s(\d+)(?:_v(\d+))?$")     # before shots were written as shots


class TrainSplit(NamedTuple):
    name: str
    shots: int
    seed: int
    views: int


def split_tag(shots: int, seed: int, views: int = 1, sep: str = "-") -> str:
    """``shots16-seed1`` (``-views4`` appended for V > 1): the part of every name that says which
    support set; ``sep="_"`` for split names."""
    return sep.join([f"shots{shots}", f"seed{seed}"] + ([f"views{views}"] if views != 1 else []))


def old_grid_tag(shots: int, seed: int, views: int = 1) -> str:
    """The :func:`split_tag` of a training-grid point folder written by an older version, which left
    out ``shots1``: ``seed2`` for 1 shot, else the same tag."""
    tag = split_tag(shots, seed, views)
    return tag[len("shots1-"):] if shots == 1 else tag


def train_split_name(shots: int, seed: int, views: int = 1) -> str:
    """``train_shots{K}_seed{S}``; a split of V > 1 augmented views is ``train_shots{K}_seed{S}_views{V}``."""
    return "train_" + split_tag(shots, seed, views, sep="_")


def parse_train_split(name: str) -> TrainSplit | None:
    """``"train_shots16_seed2_views4"`` (or the older ``"train_k16_s2_v4"``) -> ``TrainSplit(name, 16,
    2, 4)``; None when ``name`` is not a train split."""
    m = _TRAIN.match(str(name)) or _TRAIN_OLD.match(str(name))
    return TrainSplit(str(name), int(m[1]), int(m[2]), int(m[3] or 1)) if m else None


def without_seed(name: str) -> str:
    """``train_shots16_seed2_views16`` (or ``train_k16_s2_v16``) -> ``train_shots16_views16``: what
    runs of different seeds share."""
    t = parse_train_split(name)
    return str(name) if t is None else f"train_shots{t.shots}" + (f"_views{t.views}" if t.views != 1 else "")


def same_split(a: str, b: str) -> bool:
    """Whether two names are the same split: equal, or two spellings of one train split."""
    ta, tb = parse_train_split(a), parse_train_split(b)
    return str(a) == str(b) or (ta is not None and tb is not None and ta[1:] == tb[1:])


def stored_name(name: str, stored: Iterable[str]) -> str:
    """The name among ``stored`` (the splits a cache holds) of split ``name``: ``name`` itself when
    held or held by no spelling, else the other spelling of the same train split."""
    stored = list(stored)
    if name in stored:
        return name
    return next((s for s in stored if same_split(s, name)), name)


def run_name(prefix: str, shots: int, seed: int, views: int = 1, method: str | None = None) -> str:
    """A run folder's name: ``in1k-shots16-seed1-iim`` (``prefix``, :func:`split_tag`, ``method``)."""
    return "-".join([prefix, split_tag(shots, seed, views)] + ([method] if method else []))


def ood_split_name(name: str) -> str:
    """``"inaturalist"`` (or already ``"ood_inaturalist"``) -> ``"ood_inaturalist"``."""
    return name if is_ood(name) else OOD_PREFIX + name


def is_ood(split: str) -> bool:
    return str(split).startswith(OOD_PREFIX)


def ood_set_name(split: str) -> str:
    """``ood_inaturalist`` -> ``inaturalist`` (other names unchanged)."""
    return split[len(OOD_PREFIX):] if is_ood(split) else split
