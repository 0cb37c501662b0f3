"""The recipes as data: ``paper``, ``official`` (SPEC §9) and ``demo``, one TOML file each in this
folder, the only copy of their values. The training options (:mod:`iim.train.config`), the demo
(:class:`iim.demo.run.DemoSettings`), the Makefile (``python -m iim.recipes get demo k``) and the README's
tables read them (tests/test_recipes.py checks the last two). Ground floor: stdlib only.

    load_recipe("paper")["train"]["k"]      # 50
    get("demo", "batch_size")               # 8
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

from ..errors import IIMError

FOLDER = Path(__file__).parent
SCORED = ("paper", "official")   # the recipes of `iim train --recipe` / `iim score --recipe` (SPEC §9)
NAMES = (*SCORED, "demo")          # demo: `iim demo`'s settings, which train both of them


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10: the tomli dependency
        import tomli as tomllib
    return tomllib.loads((FOLDER / f"{name}.toml").read_text())


def load_recipe(name: str) -> dict:
    """The recipe ``name`` as a dict (a fresh copy; sections are nested dicts)."""
    if name not in NAMES:
        raise IIMError(f"unknown recipe {name!r}: choose one of {', '.join(NAMES)}")
    return copy.deepcopy(_read(name))


def get(name: str, key: str):
    """One value of a recipe; ``key`` may name a section's entry as ``section.key`` (``train.k``)."""
    value = load_recipe(name)
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise IIMError(f"recipe {name!r} has no {key!r}")
        value = value[part]
    return value


def as_text(value) -> str:
    """A value as the command line writes it: lists comma-joined, booleans on/off (``--grid`` syntax)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(as_text(v) for v in value)
    return str(value)
