"""Options as data: each option is declared ONCE, as a dataclass field, with its default, help text,
validation and whether it changes the result; the click options, the resume check and the report's
grouping are derived from that declaration.

    @dataclass
    class TrainConfig:
        k: int = option(50, "Top-k positive patches.", type=click.IntRange(min=1))
        device: str = option("auto", "Where to train.", result=False)

    @click_options(TrainConfig)      # --k, --device, ... (one click option per field with cli=True)
    def train(**kw): ...
    result_keys(TrainConfig)         # ("k",): options a resumed or averaged run must share
    check(cfg)                       # the same validation for Python callers (IIMError)

A bool field becomes ``--name/--no-name`` when it defaults to True and a plain ``--name`` flag otherwise;
a ``bool | None`` field defaulting to None becomes ``--name/--no-name`` left None when neither is given
(e.g. "the recipe's value").
"""
from __future__ import annotations

import dataclasses

import click
import numpy as np

from .errors import IIMError

SEED = click.IntRange(0, 2**32 - 1)      # every --seed: numpy's SeedSequence and torch accept this range
MAX_GRID = 10_000                        # values one list or range option may name


MAX_BATCH = 2**20                        # --batch-size / --chunk: more images per step is a typo
MAX_EPOCHS = 100_000                     # --epochs: the paper trains 50; more would run for ever
MAX_VIEWS = 1024                         # iim extract --views: each view is one forward pass per image


class AtLeast(click.IntRange):
    """An integer of at least ``n`` (and at most ``most``, when given); anything else says so
    ("--k 0: k must be at least 1", "--epochs 10**12: epochs must be at most 100000")."""

    def __init__(self, n: int, most: int | None = None):
        super().__init__(min=n, max=most)

    def convert(self, value, param, ctx):
        value = click.INT.convert(value, param, ctx)
        name = param.name if param is not None else "the value"
        if value < self.min:
            self.fail(f"{value} given; {name} must be at least {self.min}", param, ctx)
        if self.max is not None and value > self.max:
            self.fail(f"{value} given; {name} must be at most {self.max}", param, ctx)
        return value


BATCH = AtLeast(1, most=MAX_BATCH)       # images (or features) per step or chunk
EPOCHS = AtLeast(1, most=MAX_EPOCHS)
VIEWS = AtLeast(1, most=MAX_VIEWS)


class Finite(click.FloatRange):
    """A finite float (``inf`` and ``nan`` refused, and magnitudes beyond float32's 3.4e38, which the
    training and scoring tensors would turn into inf), optionally within ``click.FloatRange`` bounds."""
    name = "finite float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not np.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        if abs(value) > float(np.finfo(np.float32).max):
            self.fail(f"{value} is beyond float32's range (at most 3.4e38 in size)", param, ctx)
        return value


def option(default=dataclasses.MISSING, help: str = "", *, type: click.ParamType | None = None,
           result: bool = True, cli: bool = True, flag: str | None = None, **click_kw):
    """A dataclass field declaring one option. ``result``: changing it changes what the stage
    produces (resume and report refuse to mix values); ``cli=False``: no click option of its own
    (set by the command from other flags, e.g. the split from --shots/--seed/--views); ``flag``: the
    option's name when it is not ``--field-name``; ``click_kw``: anything else for ``click.option``."""
    return dataclasses.field(default=default, metadata=dict(help=help, type=type, result=result, cli=cli,
                                                            flag=flag, click=click_kw))


def declared(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option`."""
    return [f for f in dataclasses.fields(cls) if "result" in f.metadata]


def result_keys(cls) -> tuple[str, ...]:
    """Names of the options that change the result."""
    return tuple(f.name for f in declared(cls) if f.metadata["result"])


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def click_options(cls, *, skip=(), defaults: dict | None = None, helps: dict | None = None):
    """Decorator adding one click option per declared field of ``cls`` (except ``cli=False`` fields and
    ``skip``); the command receives each as a keyword argument named like the field. ``defaults`` and
    ``helps``: a command's own default or help text of a field, by name."""
    defaults, helps = defaults or {}, helps or {}
    decorators = []
    for f in declared(cls):
        m = f.metadata
        if not m["cli"] or f.name in skip:
            continue
        default = defaults.get(f.name, f.default)
        name = flag_name(f)
        kw = dict(default=default, help=helps.get(f.name, m["help"]), show_default=True, **m["click"])
        if isinstance(default, bool) and f.type in (bool, "bool"):
            decl = f"{name}/--no-{name[2:]}" if default else name
            if not default:
                kw["is_flag"] = True
        elif default is None and f.type in ("bool | None", "Optional[bool]"):
            decl = f"{name}/--no-{name[2:]}"          # tri-state: None = not given
        else:
            decl = name
            if m["type"] is not None:
                kw["type"] = m["type"]
        decorators.append(click.option(decl, f.name, **kw))

    def deco(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return deco


def check(obj) -> None:
    """Validate a config built in Python with the same types click applies on the command line; a bad
    value is a one-line :class:`IIMError` naming the flag."""
    for f in declared(type(obj)):
        t, value = f.metadata["type"], getattr(obj, f.name)
        if t is None or (value is None and f.default is None):
            continue
        try:
            t.convert(value, None, None)
        except click.BadParameter as e:
            raise IIMError(f"{flag_name(f)} {value!r}: {e.message}") from None


def parse_grid(text, *, integer: bool = False, name: str = "value") -> list:
    """``"1,5,10"`` or ``"start:stop:step"`` (stop included) or a mix: ``"0:1:0.5,2"`` -> sorted unique values."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(v) for v in text)
    values = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                start, stop, step = (float(x) for x in part.split(":"))
                if not np.isfinite([start, stop, step]).all() or step <= 0 or stop < start:
                    raise ValueError
                n = int(np.floor((stop - start) / step + 1e-9)) + 1
                if n > MAX_GRID:
                    raise IIMError(f"{name} {part!r} names {n:,} values; at most {MAX_GRID:,} (use a larger step)")
                values += [start + i * step for i in range(n)]
            else:
                values.append(float(part))
    except ValueError:
        what = "integers separated by commas" if integer else "a list '1,5,10'"
        raise IIMError(f"cannot read {name} {text!r}: {name} takes {what} or a range 'start:stop:step'") from None
    if not values:
        raise IIMError(f"{name} {text!r} names no values")
    if integer:
        if any(v != int(v) for v in values):
            raise IIMError(f"{name} must be whole numbers, got {text!r}")
        return sorted({int(v) for v in values})
    return sorted({round(v, 10) for v in values})


class Grid(click.ParamType):
    """A click type for ``"1,5,10"`` / ``"0:2:0.25"`` (see :func:`parse_grid`) -> a sorted list. With
    ``element`` (a click type) every value is also checked by it."""
    name = "list"

    def __init__(self, *, integer: bool = False, element: click.ParamType | None = None):
        self.integer, self.element = integer, element

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        name = param.opts[0] if param is not None else "value"
        try:
            values = parse_grid(value, integer=self.integer, name=name)
        except IIMError as e:
            self.fail(str(e), param, ctx)
        if self.element is not None:
            values = [self.element.convert(v, param, ctx) for v in values]
        return values
