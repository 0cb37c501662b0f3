"""Sweeps over training options (``iim grid --cache C --grid NAME=VALUES ... --out DIR``): every grid
point an ordinary run folder, trained, scored, and collected into one CSV and a report.

    from iim.sweep import run_grid, parse_specs
    summary = run_grid("cache/demo", parse_specs(["n_neg=0,10"], seeds=[1, 2]), "sweeps/nneg")
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import atomic_write_text
from ..cache.location import redact
from ..dist import torchrun_env
from . import parallel
from .collect import collect
from .grid import expand, parse_specs, point_name, sweepable  # noqa: F401  (the package's API)
from .run import Point, Scoring, group_points, plan, run_group, run_point, summary_line  # noqa: F401


def run_grid(cache, grid: dict, out, *, scoring: Scoring | None = None, device: str = "auto",
             progress: bool = True, log=tqdm.write, pack: int | None = None, jobs: int | None = None) -> dict | None:
    """Check every point, then train the unfinished ones group by group (:func:`group_points`: points
    that share the split, epochs and batch size train together, at most ``pack`` at a time), score
    them, and collect the results; returns ``collect``'s summary plus ``points`` (the :class:`Point` list).
    ``jobs`` N > 1, or torchrun: the groups are shared out over N processes (:mod:`iim.sweep.parallel`)
    and only the parent / rank 0 collects; the other ranks return None."""
    env = torchrun_env()
    n_workers = parallel.workers(jobs, env)                            # --jobs refused before any work
    scoring = scoring or Scoring(device=device)
    points = plan(cache, grid, out, device=device, scoring=scoring)     # every refusal before training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lead = env is None or env.rank == 0
    if lead:
        atomic_write_text(out / "sweep.json", json.dumps(dict(cache=redact(cache), grid=grid, scoring=scoring.key(),
                                                              points=[p.name for p in points]), indent=2) + "\n")
    groups = group_points(points, max_pack=pack)
    if n_workers > 1:
        parallel.run_parallel(points, groups, scoring, jobs=jobs, progress=progress, log=log)
        if not lead:
            return None
    else:
        show = parallel.Progress(len(points), progress=progress, log=log)
        for group in groups:
            show.bar.set_postfix_str(group[0].name + (f" +{len(group) - 1}" if len(group) > 1 else ""),
                                     refresh=True)
            for p, state in zip(group, run_group(group, scoring)):
                show(p, state)
        show.close()
    return dict(collect(out, points, scoring, grid), points=points)
