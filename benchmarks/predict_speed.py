"""Prediction speed: `iim predict` (iim.Detector.predict) vs `iim extract` on the same images, in images/s.

    python benchmarks/predict_speed.py                               # tiny on CPU, then ViT-B-16
    python benchmarks/predict_speed.py --models ViT-B-16 --n 2048 --device cuda --workers 12

Both are one encoder pass over a folder of ``--n`` generated JPEGs (``--width`` x ``--height``) through
the same DataLoader and :func:`iim.extract.run.encode_batch`; extract then writes float16 features to
Zarr on a writer thread, predict scores them on the device with S-MCM against ``--classes`` ID and
``--n-neg`` negative prototypes (ImageNet's 1000 and the paper's 300 by default). Random weights
(``--pretrained none``) have the speed of real ones. Prints images/s of each and predict / extract
(the issue's bar: predict no more than 10 % slower, i.e. a ratio >= 0.9).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iim.cache import create_cache, manifest_key
from iim.data.splits import SplitPlan
from iim.extract.run import extract_split
from iim.models import create_model, image_size, resolve_device
from iim.predict import Detector

from extract_speed import make_images   # same generated images as the extraction benchmark


def bench_cache(root: Path, model, name: str, classes: int, amp: str):
    """A cache of the model's shapes with random global prototypes and a small complete test split."""
    grid = image_size(model) // model.visual.patch_size[0]
    dim = int(model.visual.output_dim)
    cache = create_cache(root, dict(model=name, pretrained="none", weights="none", image_size=image_size(model),
                                    feature_version="maskclip-value-v1", benchmark="bench",
                                    classnames=[f"c{i}" for i in range(classes)], embed_dim=dim,
                                    num_patches=grid * grid))
    rng = np.random.default_rng(0)
    cache.write_global_prototypes(rng.normal(size=(classes, dim)).astype(np.float32))
    w = cache.writer("test", n=4, views=1, hw=grid * grid, dim=dim, labels=[0] * 4, paths=["x"] * 4,
                     attrs={"amp": amp})
    w.append(rng.normal(size=(4, 1, dim)), rng.normal(size=(4, 1, grid * grid, dim)))
    w.finish()
    return cache


def bench_run(run_dir: Path, cache, n_neg: int) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    glob = cache.global_prototypes()
    torch.save({"config": {"cache": str(cache.root), "model": cache.manifest["model"], "weights": "none",
                           "classnames": cache.classnames, "split": None},
                "cache_fingerprint": manifest_key(cache.manifest), "epoch": 1, "complete": True,
                "prototypes": {"global": glob, "local": glob + 0.1 * torch.randn(glob.shape),
                               "neg": torch.randn(n_neg, glob.shape[1])}}, run_dir / "checkpoint.pt")
    return run_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="iim-test-tiny,ViT-B-16", help="comma list of open_clip names")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--n", type=int, default=None,
                    help="images (default: tiny 512; ViT-B-16 2048 on CUDA, 32 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128 on CUDA, 16 on CPU)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--amp", default="fp16", choices=["fp16", "bf16", "off"], help="autocast dtype on CUDA")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--n-neg", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes of each; the best is reported")
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--height", type=int, default=350)
    args = ap.parse_args()
    device = resolve_device(args.device)
    amp = args.amp if device.type == "cuda" else "off"
    from iim.extract.run import AMP_DTYPES
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"device: {device} ({where}); torch {torch.__version__}; torch threads {torch.get_num_threads()}; "
          f"workers {args.workers}; amp {amp}; {args.classes} classes + {args.n_neg} negatives; "
          f"images {args.width}x{args.height} JPEG")
    for name in args.models.split(","):
        big = name != "iim-test-tiny"
        n = args.n or (512 if not big else 2048 if device.type == "cuda" else 32)
        batch = args.batch or (128 if device.type == "cuda" else 16)
        model, preprocess = create_model(name, "none", device=device)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            files = make_images(tmp / "img", n, args.width, args.height)
            cache = bench_cache(tmp / "cache", model, name, args.classes, amp)
            det = Detector.from_run(bench_run(tmp / "run", cache, args.n_neg), device=str(device), k=50,
                                    threshold=0.0)
            det.__dict__["encoder"] = (model, preprocess)      # the same model object as extract's
            paths = [str(tmp / "img" / f) for f in files]

            def do_extract(i, files=files):
                c = create_cache(tmp / f"x{i}", cache.manifest)
                plan = SplitPlan("test", "test", tmp / "img", files, [0] * len(files))
                extract_split(c, plan, model, preprocess, device=device, amp_dtype=AMP_DTYPES[amp],
                              batch_size=batch, workers=args.workers, progress=False, log=lambda m: None)

            def do_predict(paths=paths):
                det.predict(paths, batch_size=batch, workers=args.workers)

            do_extract("warm", files[:batch])                   # first-call kernels, page cache
            do_predict(paths[:batch])
            t_ex, t_pr = [], []
            for r in range(args.repeats):                       # interleaved: a busy machine hits both
                t0 = time.perf_counter()
                do_extract(r)
                t_ex.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                do_predict()
                t_pr.append(time.perf_counter() - t0)
        ex, pr = n / min(t_ex), n / min(t_pr)
        print(f"{name:14s} n={n:5d} batch={batch:3d}  extract {ex:8.1f} img/s   predict {pr:8.1f} img/s   "
              f"predict/extract {pr / ex:5.2f}")


if __name__ == "__main__":
    main()
