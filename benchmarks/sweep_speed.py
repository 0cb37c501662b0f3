"""A training grid as one ``iim grid`` (its points packed and trained jointly in one process) against the
same points as one ``iim train`` + ``iim score`` process each, in the same run on the same machine; and
the ms per step of 1, 4, 8, 16, 24 packed points.

    python benchmarks/sweep_speed.py --cache cache/demo          # the README figure: 24 points, 50 epochs
    python benchmarks/sweep_speed.py --cache cache/demo --quick  # smoke run: 4 points, 2 epochs, 1 and 4 packed
    python benchmarks/sweep_speed.py --device cuda --synthetic --C 1000 --n-neg 300 --packed 1,8 --no-grid

Grid (default): n_neg {0, 10, 20} x lambda_neg {0, 5} x lambda_div {0, 0.5} x seeds {1, 2} with the demo's
settings (k 8, batch 8, 50 epochs, iim.demo.run.DemoSettings), scored at test k 8. The demo cache is
``make splits DATASET=demo`` (or ``iim demo --seeds 1,2``): train splits train_shots4_seed1_views4 and _seed2_views4.
Both sides do the same work (train, then score every point) with the same code; the script checks that
each point's prototypes agree (joint training ends where a separate run ends) and prints both wall times
and their ratio, also against the separate trainings alone.

The packed-step table: ``iim.train.joint.train_jointly`` on N copies of the grid's full-method point
(n_neg 20, lambda_neg 5, lambda_div 0.5; each its own split / training seed, so every point costs the same)
for 2 epochs, ms per step in the second epoch.
``--synthetic``: a random cache of ``--C`` classes for ``--model`` (random weights; the cost does not
depend on them), ``--n-neg`` negatives each, batch 32, k 50 — the GPU figure (latency-bound at C=1000,
Cn=300: target 8 packed points for at most 2x the time of one).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from iim.sweep import parse_specs, plan
from iim.train.checkpoint import load_checkpoint
from iim.train.config import TrainConfig

IIM = [sys.executable, "-m", "iim.cli"]


def grid_specs(args) -> list[str]:
    """The ``--grid`` specs of the benchmark's grid (swept and fixed options)."""
    return [f"n_neg={args.n_neg_grid}", f"lambda_neg={args.lambda_neg}", f"lambda_div={args.lambda_div}",
            f"k={args.k}", f"batch_size={args.batch}", f"epochs={args.epochs}"]


def run(cmd: list) -> float:
    """Wall seconds of one command (its output kept only when it fails)."""
    t0 = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def separate_commands(p, cache, out: Path, args) -> tuple[list, list]:
    """``iim train`` and ``iim score`` for one grid point, with the same options as the sweep's."""
    o = p.options
    train = [*IIM, "train", "--cache", cache, "--shots", o["shots"], "--seed", o["seed"], "--views", o["views"],
             "--k", args.k, "--n-neg", o["n_neg"], "--lambda-neg", o["lambda_neg"],
             "--lambda-div", o["lambda_div"], "--batch-size", args.batch, "--epochs", args.epochs,
             "--device", args.device, "--out", out, "--no-progress"]
    score = [*IIM, "score", "--run", out, "--k", args.k, "--device", args.device, "--no-plots", "--no-progress"]
    return train, score


def grid_comparison(args, tmp: Path) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = parse_specs(grid_specs(args), seeds=seeds)
    points = plan(args.cache, grid, tmp / "sweep", device=args.device)     # the sweep's own points
    sweep = [*IIM, "grid", "--cache", args.cache, *itertools.chain(*(("--grid", g) for g in grid_specs(args))),
             "--seed", args.seeds, "--k", args.k, "--device", args.device, "--out", tmp / "sweep", "--no-progress",
             *(("--pack", args.pack) if args.pack else ())]
    t_train = t_score = 0.0
    for p in points:
        train, score = separate_commands(p, args.cache, tmp / "separate" / p.name, args)
        t_train += run(train)
        t_score += run(score)
    t_sweep = run(sweep)
    diff = max(float((load_checkpoint(p.dir, need=("prototypes",))["prototypes"]["local"]
                      - load_checkpoint(tmp / "separate" / p.name, need=("prototypes",))["prototypes"]["local"])
                     .abs().max()) for p in points)
    print(f"{len(points)} grid points (n_neg {args.n_neg_grid} x lambda_neg {args.lambda_neg} x lambda_div "
          f"{args.lambda_div} x seeds {args.seeds}; k {args.k}, batch {args.batch}, {args.epochs} epochs) on "
          f"{args.cache}")
    print(f"separate: {len(points)} iim train processes {t_train:8.1f} s + {len(points)} iim score processes "
          f"{t_score:6.1f} s = {t_train + t_score:8.1f} s")
    print(f"iim grid (one process, points packed{f' by {args.pack}' if args.pack else ''}): {t_sweep:8.1f} s "
          f"(train + score)")
    print(f"speed-up: {(t_train + t_score) / t_sweep:.2f}x (train + score); {t_train / t_sweep:.2f}x against "
          f"the separate trainings alone")
    print(f"joint = separate: max |learned prototype difference| over the points {diff:.2e}")


def packed_configs(args, tmp: Path, n: int) -> list[TrainConfig]:
    """``n`` configurations of one shape: the grid's full-method point (its last n_neg, lambda_neg and
    lambda_div: C_n 20, 5, 0.5) for 2 epochs, on each split seed and then with other training seeds."""
    if args.synthetic:
        return [TrainConfig(cache=str(tmp / "cache"), split="train_shots1_seed1", out=str(tmp / "runs" / str(i)), seed=i + 1,
                            k=50, n_neg=args.n_neg, lambda_neg=(5.0, 0.0)[i % 2], batch_size=32, epochs=2,
                            device=args.device, bf16=args.device.startswith("cuda")) for i in range(n)]
    seeds = [int(s) for s in args.seeds.split(",")]
    last = {"n_neg": args.n_neg_grid, "lambda_neg": args.lambda_neg, "lambda_div": args.lambda_div}
    full = [f"{n}={v.split(',')[-1]}" if n in last else spec
            for spec in grid_specs(args) for n, _, v in [spec.partition("=")]]    # the full method's point
    base = plan(args.cache, parse_specs(full, seeds=seeds), tmp / "plan", device=args.device)
    cfgs = [dataclasses.replace(p.config, seed=p.config.seed + 100 * j, epochs=2, out=str(tmp / "runs" / f"{j}-{i}"))
            for j in range(-(-n // len(base))) for i, p in enumerate(base)]
    return cfgs[:n]


def ms_per_step(states, wall: float) -> float:
    """ms per step of the second epoch, from the run's history (else the whole call's wall time)."""
    state = next((s for s in states if isinstance(s, dict)), None)     # a run that failed: its exception
    if state is None:
        raise SystemExit(f"every packed run failed: {states[0]}")
    h = state.get("history") or []
    if h and h[-1].get("steps"):
        return 1e3 * h[-1]["seconds"] / h[-1]["steps"]
    return float("nan") if not wall else 1e3 * wall


def packed_steps(args, tmp: Path) -> None:
    from iim.train.joint import train_jointly

    if args.synthetic:
        from iim.models import create_model, image_size
        from train_step import synthetic_cache

        model, _ = create_model(args.model, "none")
        size = image_size(model)
        hw, dim = (size // model.visual.patch_size[0]) ** 2, model.text_projection.shape[1]
        del model
        synthetic_cache(tmp / "cache", model=args.model, size=size, classnames=[f"class {i}" for i in range(args.C)],
                        n_images=256, hw=hw, dim=dim)
    ns = [int(n) for n in args.packed.split(",")]
    rows = {}
    for n in ns:
        cfgs = packed_configs(args, tmp / f"packed{n}", n)
        t0 = time.perf_counter()
        states = train_jointly(cfgs, progress=False, log=lambda *a: None)
        rows[n] = ms_per_step(states, time.perf_counter() - t0)
    what = (f"synthetic cache, {args.model} (random weights), C={args.C} Cn={args.n_neg}, batch 32, k 50"
            if args.synthetic else f"{args.cache}, the full-method point, batch {args.batch}, k {args.k}")
    print(f"packed points: ms per step (second of 2 epochs; {what})")
    print(f"{'points':>6} {'ms/step':>10} {'per point':>10} {f'vs {ns[0]} point(s)':>14}")
    for n, ms in rows.items():
        print(f"{n:>6} {ms:>10.1f} {ms / n:>10.1f} {ms / rows[ns[0]]:>13.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/demo", help="the demo cache (train splits for --seeds)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-neg-grid", default="0,10,20")
    ap.add_argument("--lambda-neg", default="0,5")
    ap.add_argument("--lambda-div", default="0,0.5")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--pack", type=int, default=None, help="iim grid --pack N (default: automatic)")
    ap.add_argument("--packed", default="1,4,8,16,24", help="packed-point counts of the per-step table")
    ap.add_argument("--no-grid", dest="grid", action="store_false", help="only the packed-step table")
    ap.add_argument("--no-packed", dest="packed_table", action="store_false", help="only the grid comparison")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: n_neg 0,20 x seeds 1,2 (lambdas fixed), 2 epochs, 1 and 4 packed points")
    ap.add_argument("--synthetic", action="store_true", help="packed steps on a random cache (--C, --n-neg)")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--C", type=int, default=1000)
    ap.add_argument("--n-neg", type=int, default=300)
    args = ap.parse_args()
    if args.quick:
        args.n_neg_grid, args.lambda_neg, args.lambda_div, args.epochs, args.packed = "0,20", "5", "0.5", 2, "1,4"
    if args.synthetic:
        args.grid = False
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    print(f"{args.device} ({where}), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.grid:
            grid_comparison(args, Path(tmp))
        if args.packed_table:
            packed_steps(args, Path(tmp))


if __name__ == "__main__":
    main()
