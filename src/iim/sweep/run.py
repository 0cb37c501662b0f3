"""Running a training grid: every point is an ordinary run folder ``<out>/points/<name>/`` trained with
:func:`iim.train.loop.train`, or together with the points it groups with (:func:`group_points`) by
:func:`iim.train.joint.train_jointly` (the same run folder, the same result), and scored with :func:`iim.score.run.run_score` (and
:func:`~iim.score.run.run_sweep` over the test k / alpha lists); ``point.json`` records its state.

    points = plan("cache/demo", {"n_neg": [0, 10], "seed": [1, 2]}, "sweeps/nneg")   # checks everything
    for group in group_points(points):    # points that train together in one process
        states = run_group(group, scoring)   # skips finished points; a failure is recorded, not raised

A rerun skips finished points, continues a killed point from its last checkpoint (``train(resume=True)``)
and retries failed ones; a larger grid in the same folder reuses the points it shares. "Finished" means
done with the same scoring settings on the same features (:attr:`Point.data`); a point folder trained
on other features (another cache) is refused by :func:`plan`, never reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..cache import manifest_key, open_cache
from ..cache.fingerprint import content_digest
from ..cache.location import record
from ..cache.names import old_grid_tag, parse_train_split, train_split_name
from ..errors import IIMError
from ..score.options import Scoring  # noqa: F401  (iim.sweep.Scoring: how every point is scored)
from ..score.pipeline import ood_split_names, prepare_run
from ..score.run import run_score, run_sweep
from ..score.scores import check_k
from ..train.config import TrainConfig
from ..models import resolve_device
from ..train.joint import auto_pack, joint_key, run_bytes, train_jointly
from ..train.loop import train, validate
from ..train.methods import resolve
from .grid import SPLIT_KEYS, expand, point_name

POINTS, STATE = "points", "point.json"


@dataclass
class Point:
    name: str
    options: dict            # the swept options, with the split's shots / seed / views filled in
    config: TrainConfig
    data: dict = field(default_factory=dict)   # what it trains and is scored on (:func:`data_key`)

    @property
    def dir(self) -> Path:
        return Path(self.config.out)


def resolve_split(cache, shots, seed, views):
    """The complete train split for ``(shots, seed, views)`` (None: any); a missing one names the
    ``iim extract`` command that adds it."""
    found = [t for n in cache.train_splits() if (t := parse_train_split(n))]
    match = [t for t in found if all(w is None or w == g for w, g in zip((shots, seed, views), t[1:]))]
    if len(match) == 1:
        return match[0]
    want = ", ".join(f"{n}={v}" for n, v in (("shots", shots), ("seed", seed), ("views", views)) if v is not None)
    if match:
        names = ", ".join(t.name for t in match)
        raise IIMError(f"cache {cache.root} has several train splits for {want or 'this grid'} ({names}); "
                       f"pick with --seed S, --grid shots=K or --grid views=V")
    have = ", ".join(t.name for t in found) or "none"
    k = shots if shots is not None else (found[0].shots if len({t.shots for t in found}) == 1 else "K")
    s = seed if seed is not None else 1
    bench = cache.manifest.get("benchmark") or "NAME"
    cmd = (f"iim extract --benchmark {bench} --shots {k} --seed {s}" + (f" --views {views}" if views else "")
           + f" --out {cache.root}")
    name = train_split_name(k, s, views or 1) if isinstance(k, int) else f"for {want}"
    raise IIMError(f"cache {cache.root} has no train split {name} (train splits: {have}); add it first "
                   f"with '{cmd}'")


def _folder_name(points_dir: Path, opts: dict) -> str:
    """The point's folder name; the one an older version gave it when only that folder exists (so a
    rerun continues it)."""
    name, old = point_name(opts), point_name(opts, tag=old_grid_tag)
    return old if old != name and (points_dir / old).is_dir() and not (points_dir / name).exists() else name


def plan(cache_dir, grid: dict, out, *, device: str = "auto", scoring: Scoring | None = None) -> list[Point]:
    """The grid's points, every one checked (split present, options accepted as ``iim train`` accepts
    them, test k possible) before anything is trained."""
    cache = open_cache(cache_dir)
    combos = expand(grid) or [{}]
    splits = [resolve_split(cache, *(o.get(n) for n in ("shots", "seed", "views"))) for o in combos]
    points = []
    for opts, split in zip(combos, splits):       # every split first: a missing one is named first
        opts = dict(opts, shots=split.shots, seed=split.seed, views=split.views)
        name = _folder_name(Path(out) / POINTS, opts)
        train_opts = {n: v for n, v in opts.items() if n not in SPLIT_KEYS and n != "seed"}
        cfg = TrainConfig(cache=str(cache_dir), split=split.name, out=str(Path(out) / POINTS / name),
                          seed=split.seed, device=device, **train_opts)
        sp = cache.split(split.name)
        validate(resolve(cfg, sp), sp)           # with the method's defaults, as iim train checks
        points.append(Point(name, opts, cfg))
    if len({p.name for p in points}) < len(points):
        raise IIMError("two grid points share a folder name; report this grid as a bug")
    test = cache.split("test")
    scored = ["test", *ood_split_names(cache, scoring.ood if scoring else ())]
    if scoring is not None:
        check_k(scoring.ks, test.hw, len(cache.classnames))
    keys = data_key(cache, [p.config.split for p in points], scored)
    for p in points:
        p.data = dict(keys, train=keys["train"][p.config.split])
        check_same_data(p)
    return points


def data_key(cache, train_splits: list[str], scored: list[str]) -> dict:
    """What a point's results depend on besides its options: the cache's fingerprint (a digest of
    :func:`iim.cache.manifest_key`) and the :func:`~iim.cache.fingerprint.content_digest` of every train
    split named and of every scored split (test + OOD)."""
    fp = json.dumps(manifest_key(cache.manifest), sort_keys=True, default=str).encode()
    return dict(fingerprint=hashlib.sha256(fp).hexdigest(),
                train={n: content_digest(cache.split(n)) for n in dict.fromkeys(train_splits)},
                scored={n: content_digest(cache.split(n)) for n in scored})


def check_same_data(p: Point) -> None:
    """Refuse a point folder that was trained on other features than ``p`` would be (another cache in
    the same ``--out``, or its train split extracted again from other images): its checkpoint and results
    must not be reused. Point folders of an older iim (no ``data`` recorded) are compared by their
    ``config.json``'s cache location. Other scored splits (an OOD set added) only re-score the point."""
    old = (read_state(p) or {}).get("data")
    if old:
        diff = [k for k in ("fingerprint", "train") if old.get(k) != p.data[k]]
        why = {"fingerprint": "another model, weights or class list",
               "train": f"other features in split {p.config.split}"}[diff[0]] if diff else None
    else:
        try:
            was = json.loads((p.dir / "config.json").read_text()).get("cache")
        except (OSError, ValueError, AttributeError):
            was = None
        now = record(p.config.cache)
        why = f"cache {was}, not {now}" if was is not None and was != now else None
    if why:
        raise IIMError(f"{p.dir} was trained on another cache ({why}); a sweep folder holds the points of "
                       f"one cache: use another --out folder (or delete {p.dir})")


def read_state(p: Point) -> dict | None:
    path = p.dir / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def is_done(p: Point, scoring: Scoring) -> bool:
    st = read_state(p)
    return bool(st) and st["status"] == "done" and st.get("scoring") == scoring.key() and st.get("data") == p.data


def _write_state(p: Point, **state) -> None:
    p.dir.mkdir(parents=True, exist_ok=True)
    body = dict(name=p.name, options=p.options, data=p.data, **state)
    atomic_write_text(p.dir / STATE, json.dumps(body, indent=2, default=str) + "\n")


def group_points(points: list[Point], *, max_pack: int | None = None) -> list[list[Point]]:
    """The points in groups that train together (:func:`~iim.train.joint.joint_key`), each of at most ``max_pack`` points (None: as many
    as memory allows, :func:`iim.train.joint.auto_pack`; 1: every point on its own), in grid order of
    each group's first point."""
    groups: dict = {}
    for i, p in enumerate(points):
        key = joint_key(p.config)
        groups.setdefault(("solo", i) if key is None else key, []).append(p)
    out = []
    for members in groups.values():
        size = max_pack or _memory_pack(members)
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def _memory_pack(members: list[Point]) -> int:
    """How many of these points fit in one process (:func:`iim.train.joint.auto_pack`)."""
    if len(members) == 1:
        return 1
    cache = open_cache(members[0].config.cache)
    per_point = max(run_bytes(p.config, cache) for p in members)
    return auto_pack(per_point, resolve_device(members[0].config.device))


def run_group(group: list[Point], scoring: Scoring) -> list[dict]:
    """Train the group's unfinished points together (:func:`~iim.train.joint.train_jointly`), then
    score each; returns each point's ``point.json`` state (as :func:`run_point`; ``seconds``: its share
    of the joint training plus its scoring): a failing point is recorded and the others go on."""
    todo = [p for p in group if not is_done(p, scoring)]
    if len(todo) < 2:
        return [run_point(p, scoring) for p in group]
    t0 = time.perf_counter()
    with contextlib.ExitStack() as files:        # each point's lines in its own train.log
        logs = []
        for p in todo:
            p.dir.mkdir(parents=True, exist_ok=True)
            f = files.enter_context(open(p.dir / "train.log", "a"))
            logs.append(lambda s, f=f: print(s, file=f, flush=True))
        trained = dict(zip((p.name for p in todo),
                           train_jointly([p.config for p in todo], resume=True, progress=False, log=logs)))
    share = (time.perf_counter() - t0) / len(todo)
    return [run_point(p, scoring, trained=trained.get(p.name), train_seconds=share) for p in group]


def run_point(p: Point, scoring: Scoring, *, trained=None, train_seconds: float = 0.0) -> dict:
    """Train (or continue) and score one point unless it is finished; returns its ``point.json``. An
    error (non-finite loss, out of memory, ...) is recorded as ``status: failed`` with its message.
    ``trained``: the point's checkpoint dict or exception from a joint training (:func:`run_group`),
    which took ``train_seconds`` per point; None: train it here on its own."""
    if is_done(p, scoring):
        return dict(read_state(p), skipped=True)
    t0 = time.perf_counter() - train_seconds
    p.dir.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(trained, Exception):
            raise trained
        if trained is None:
            with open(p.dir / "train.log", "a") as f:
                train(p.config, resume=True, progress=False, log=lambda s: print(s, file=f, flush=True))
        job = prepare_run(p.dir, cache_path=p.config.cache, out=p.dir)
        kw = dict(T=scoring.T, ood=scoring.ood, chunk=scoring.chunk, device=scoring.device, progress=False,
                  recipe=scoring.recipe)
        res = run_score(job, k=scoring.k_for(p.config.k), alpha=scoring.alpha, knn=dict(k=1, all_views=False),
                        plot=False, **kw)
        if scoring.sweeps:
            run_sweep(job, scoring.ks, scoring.alphas, **kw)
    except Exception as e:                     # noqa: BLE001  (one failing point must not stop the grid)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, IIMError):
            msg = f"{type(e).__name__}: {msg}"
        _write_state(p, status="failed", error=msg, seconds=time.perf_counter() - t0)
        return read_state(p)
    head = next(m for m in ("s_mcm", "s_mcm_star") if m in res["metrics"])
    avg = res["metrics"][head]["average"]
    _write_state(p, status="done", scoring=scoring.key(), seconds=time.perf_counter() - t0,
                 headline={"method": head, "fpr95": avg["fpr95"], "auroc": avg["auroc"]})
    return read_state(p)


def summary_line(i: int, n: int, p: Point, st: dict) -> str:
    """One line per finished point."""
    where = f"[{i}/{n}] {p.name}"
    if st["status"] == "failed":
        return f"{where}: FAILED: {st['error']}"
    h = st["headline"]
    from ..score.report import LABELS
    done = "done earlier" if st.get("skipped") else f"{st['seconds']:.1f} s"
    return f"{where}: {LABELS[h['method']]} average FPR95 {h['fpr95']:.2f}  AUROC {h['auroc']:.2f}  ({done})"
