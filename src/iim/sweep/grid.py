"""The training grid of ``iim grid``: ``--grid NAME=VALUES`` specs read against the option table
(:class:`~iim.train.config.TrainConfig`), expanded into points, each point named after its options.

    specs = parse_specs(["n_neg=0,10,20", "lambda_neg=0:5:2.5"], seeds=[1, 2])
    points = expand(specs)        # [{"n_neg": 0, "lambda_neg": 0.0, "seed": 1}, ...] (6 x 2)
    point_name(dict(points[0], shots=16))   # "shots16-seed1-n_neg0-lambda_neg0"

Sweepable: every option that changes the result (``result=True``) plus ``shots`` and ``views``, which
pick the train split with ``seed``. Each value is checked by the option's own click type, as
``iim train`` checks its flag; numbers take lists and ranges (:func:`iim.options.parse_grid`), bools
on/off/true/false, choices a list of names.
"""
from __future__ import annotations

import dataclasses
import itertools

import click

from ..cache.names import split_tag
from ..errors import IIMError
from ..options import SEED, declared, flag_name, parse_grid
from ..train.config import TrainConfig

SPLIT_KEYS = {"shots": click.IntRange(min=1), "views": click.IntRange(min=1)}   # with seed: the split
NOT_SWEPT = ("split",)          # set from shots / seed / views


def sweepable() -> dict[str, dataclasses.Field | None]:
    """Option name -> its TrainConfig field (None for the split selectors shots / views)."""
    fields = {f.name: f for f in declared(TrainConfig) if f.metadata["result"] and f.name not in NOT_SWEPT}
    return {**{k: None for k in SPLIT_KEYS}, **fields}


def _kind(f) -> str:
    t = str(f.type) if f is not None else "int"
    return next((k for k in ("bool", "int", "float") if t.startswith(k)), "str")


def parse_values(name: str, text: str) -> list:
    """The values of one option, each validated as ``iim train`` validates the flag."""
    f = sweepable()[name]
    ptype = SPLIT_KEYS[name] if f is None else (f.metadata["type"] or
                                                 (click.BOOL if _kind(f) == "bool" else click.STRING))
    if name == "seed":
        ptype = SEED
    flag = f"--grid {name}"
    kind = _kind(f)
    if kind in ("int", "float"):
        values = parse_grid(text, integer=kind == "int", name=flag)
    else:
        values = list(dict.fromkeys(v.strip() for v in str(text).split(",") if v.strip()))
        if not values:
            raise IIMError(f"{flag} {text!r} names no values")
    out = []
    for v in values:
        try:
            out.append(ptype.convert(v, None, None))
        except click.BadParameter as e:
            what = flag_name(f) if f is not None else f"--{name}"
            raise IIMError(f"{flag}: {v!r} is refused by {what} ({e.message})") from None
    return list(dict.fromkeys(out))


def parse_specs(specs, *, seeds=None) -> dict[str, list]:
    """``["n_neg=0,10", "hard_negative_mining=on,off"]`` (+ ``--seed`` values) -> ``{name: values}``
    in the order given. Unknown names, bad values and empty grids are one-line errors."""
    known = sweepable()
    grid: dict[str, list] = {}
    for spec in specs:
        name, eq, text = str(spec).partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not eq or not name:
            raise IIMError(f"--grid {spec!r}: write NAME=VALUES, e.g. --grid n_neg=0,10,20")
        if name not in known:
            hint = " (test-time k and alpha: --k / --alpha)" if name in ("alpha", "T") else ""
            raise IIMError(f"--grid {name}: not a training option that changes the result{hint}; "
                           f"sweepable: {', '.join(known)}")
        if name in grid:
            raise IIMError(f"--grid {name} is given twice; list all its values in one --grid")
        grid[name] = parse_values(name, text)
    if seeds:
        if "seed" in grid:
            raise IIMError("give the seeds once: --seed S,S or --grid seed=S,S")
        grid["seed"] = [SEED.convert(s, None, None) for s in seeds]
    return grid


def expand(grid: dict[str, list]) -> list[dict]:
    """Every combination of the values (the last option varies fastest)."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def point_name(point: dict, *, tag=split_tag) -> str:
    """A stable folder name: the split's :func:`~iim.cache.names.split_tag` (``shots4-seed1``), then
    every option that differs from its default, in the option table's order (so overlapping grids name
    a shared point alike). ``tag``: :func:`~iim.cache.names.old_grid_tag` names the folder an older
    version gave the point."""
    defaults = {f.name: f.default for f in declared(TrainConfig)}
    parts = [tag(point["shots"], point["seed"], point.get("views", 1))]
    parts += [f"{n}{_fmt(point[n])}" for n in sweepable()
              if n in point and n not in ("shots", "seed", "views") and point[n] != defaults.get(n)]
    return "-".join(parts)
