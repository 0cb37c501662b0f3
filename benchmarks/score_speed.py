"""Scoring speed: one (k, alpha) evaluation vs the whole k x alpha sweep grid, in images/s.

    python benchmarks/score_speed.py                     # CPU: N=256; CUDA when available: N=8192
    python benchmarks/score_speed.py --device cpu --n 512 --chunk 64

Random ViT-B-16-sized features (HW=196, D=512, C=1000 ID classes, Cn=300 negatives), stored float16 on
the host as the cache returns them and moved chunk by chunk to the device, exactly as ``iim score``
streams a split. Both passes compute every evaluator (MCM, GL-MCM, R-MCM(*), S-MCM(*)); the grid pass
gets every (k, alpha) of ``--ks`` x ``--alphas`` from one sorted top-k_max per quantity. Scoring runs in
float32 on every device (as ``iim score`` does: top-k ranks are sensitive to bf16 rounding), so there
is no autocast. Prints the images/s of both passes (best of --repeats, run alternately) and their time
ratio (target <= 1.5x).
"""
from __future__ import annotations

import argparse
import time

import torch

from iim.score import evaluate, similarities
from iim.score.pipeline import auto_chunk_rows
from iim.options import parse_grid
from iim.score.options import ALPHA_GRID, K_GRID


def one_pass(feats, protos, device, chunk, k, alpha):
    g_all, l_all = feats
    for start in range(0, len(g_all), chunk):
        g = g_all[start:start + chunk].to(device, non_blocking=True)
        loc = l_all[start:start + chunk].to(device, non_blocking=True)
        scores, _ = evaluate(similarities(g, loc, *protos), k=k, alpha=alpha)
        for v in scores.values():      # what iim score keeps: per-image score vectors on the host
            v.float().cpu()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(fa, fb, device, repeats):
    """Best-of-``repeats`` seconds of ``fa`` and ``fb``, run alternately so both see the same load."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return min(ta), min(tb)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--n", type=int, default=None, help="images (default 256 on CPU, 8192 on CUDA)")
    ap.add_argument("--chunk", type=int, default=None, help="images per chunk (default: as iim score)")
    ap.add_argument("--hw", type=int, default=196)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--neg", type=int, default=300)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--ks", default=K_GRID)
    ap.add_argument("--alphas", default=ALPHA_GRID)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    n = args.n or (8192 if device.type == "cuda" else 256)
    chunk = args.chunk or auto_chunk_rows(args.hw, args.classes, args.neg, device)
    ks, alphas = parse_grid(args.ks, integer=True), parse_grid(args.alphas)
    gen = torch.Generator().manual_seed(0)
    feats = (torch.randn(n, args.dim, generator=gen).half(), torch.randn(n, args.hw, args.dim, generator=gen).half())
    if device.type == "cuda":
        feats = tuple(f.pin_memory() for f in feats)
    protos = [torch.randn(c, args.dim, generator=gen).to(device) for c in (args.classes, args.classes, args.neg)]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; N={n}, chunk={chunk}; HW={args.hw} D={args.dim} C={args.classes} Cn={args.neg}; "
          f"float32 scoring")
    warm = (feats[0][:chunk], feats[1][:chunk])
    one_pass(warm, protos, device, chunk, args.k, args.alpha)
    one_pass(warm, protos, device, chunk, ks, alphas)
    t_single, t_grid = timed_pair(lambda: one_pass(feats, protos, device, chunk, args.k, args.alpha),
                                  lambda: one_pass(feats, protos, device, chunk, ks, alphas), device, args.repeats)
    n_set = len(ks) * len(alphas)
    print(f"single (k={args.k}, alpha={args.alpha:g}):  {n / t_single:10.1f} images/s  ({t_single:.3f} s)")
    print(f"grid {len(ks)} k x {len(alphas)} alpha = {n_set} settings: {n / t_grid:10.1f} images/s  ({t_grid:.3f} s)")
    print(f"grid / single time: {t_grid / t_single:.2f}x (target <= 1.5x); point-by-point would be "
          f"~{n_set}x, so the one-pass grid is {n_set * t_single / t_grid:.0f}x faster than that")


if __name__ == "__main__":
    main()
