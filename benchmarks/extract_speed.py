"""Extraction speed: `iim extract`'s pipeline vs a plain loop, in images/s (a script, not a test).

    python benchmarks/extract_speed.py                                # tiny on CPU, then ViT-B-16
    python benchmarks/extract_speed.py --models ViT-B-16 --n 4096 --device cuda --workers 12

A folder of ``--n`` generated JPEGs (``--width`` x ``--height``, ImageNet-like decode cost) is encoded
three ways, all writing float16 global + local features:

* ``encoder``: ``model.encode_image`` alone on already-decoded tensors (global only, no I/O): the
  compute ceiling for reference;
* ``plain``: the straightforward loop: decode + preprocess in the main process, ``encode_image`` for
  the global feature plus a second pass for the value-path patch features, synchronous Zarr writes;
* ``iim``: :func:`iim.extract.run.extract_split`: DataLoader workers (pinned memory on CUDA), one pass
  for both features, autocast on CUDA, Zarr writes on a writer thread.

Prints images/s for each and the iim / plain ratio. Random weights (``--pretrained none``) have the
speed of real ones. CUDA runs use ``--amp`` (default bf16) for both the plain loop and iim.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from PIL import Image

from iim.cache import create_cache
from iim.data.splits import SplitPlan
from iim.extract.run import AMP_DTYPES, extract_split
from iim.models import resolve_device
from iim.models import create_model, image_size


def make_images(root: Path, n: int, width: int, height: int) -> list[str]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    files = []
    for i in range(n):
        img = np.roll(base, shift=(i * 7) % height, axis=0) // 2 + rng.integers(0, 128, size=(1, 1, 3)).astype(
            np.uint8)
        rel = f"c/{i:05d}.jpg"
        (root / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel, quality=90)
        files.append(rel)
    return files


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def value_path(model, images):
    """SPEC §1 local features, the plain way: a second pass up to the last block, then its value path."""
    visual = model.visual
    x = visual._embeds(images)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    last = visual.transformer.resblocks[-1]
    width = x.shape[-1]
    v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
    v = x + last.ls_1(last.attn.out_proj(v))
    v = v + last.ls_2(last.mlp(last.ln_2(v)))
    return (visual.ln_post(v) @ visual.proj)[:, 1:]


@torch.no_grad()
def plain_loop(model, preprocess, root, files, out, batch, device, amp_dtype):
    n, hw, dim = len(files), None, None
    arrays = None
    autocast = torch.autocast("cuda", dtype=amp_dtype) if device.type == "cuda" and amp_dtype else None
    for i in range(0, n, batch):
        x = torch.stack([preprocess(Image.open(root / f).convert("RGB")) for f in files[i:i + batch]]).to(device)
        if autocast:
            with autocast:
                g, loc = model.encode_image(x), value_path(model, x)
        else:
            g, loc = model.encode_image(x), value_path(model, x)
        g, loc = g.half().cpu().numpy(), loc.half().cpu().numpy()
        if arrays is None:
            hw, dim = loc.shape[1:]
            grp = zarr.open_group(str(out), mode="w")
            arrays = (grp.create_array("global", shape=(n, dim), chunks=(batch, dim), dtype="float16"),
                      grp.create_array("local", shape=(n, hw, dim), chunks=(batch, hw, dim), dtype="float16"))
        arrays[0][i:i + len(g)] = g
        arrays[1][i:i + len(g)] = loc


@torch.no_grad()
def encoder_only(model, preprocess, root, files, batch, device, amp_dtype):
    x_all = torch.stack([preprocess(Image.open(root / f).convert("RGB")) for f in files[:batch]])
    autocast = torch.autocast("cuda", dtype=amp_dtype) if device.type == "cuda" and amp_dtype else None
    x = x_all.to(device)
    model.encode_image(x)                     # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(0, len(files), batch):
        if autocast:
            with autocast:
                model.encode_image(x)
        else:
            model.encode_image(x)
    sync(device)
    return len(range(0, len(files), batch)) * batch / (time.perf_counter() - t0)


def iim_pipeline(model, preprocess, root, files, out, batch, workers, device, amp_dtype):
    grid = image_size(model) // model.visual.patch_size[0]
    cache = create_cache(out, dict(model="bench", weights="none", image_size=image_size(model),
                                   feature_version="bench", benchmark="bench", classnames=["c"],
                                   embed_dim=int(model.visual.output_dim), num_patches=grid * grid))
    plan = SplitPlan("test", "test", root, files, [0] * len(files))
    extract_split(cache, plan, model, preprocess, device=device, amp_dtype=amp_dtype, batch_size=batch,
                  workers=workers, progress=False, log=lambda m: None)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="iim-test-tiny,ViT-B-16", help="comma list of open_clip names")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--n", type=int, default=None,
                    help="images (default: tiny 512; ViT-B-16 4096 on CUDA, 32 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128 on CUDA, 16 on CPU)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--amp", default="bf16", choices=list(AMP_DTYPES), help="autocast dtype on CUDA")
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--height", type=int, default=350)
    args = ap.parse_args()
    device = resolve_device(args.device)
    amp_dtype = AMP_DTYPES[args.amp]
    cpu_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo") else "?"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name}, {os.cpu_count()} CPUs"
    print(f"device: {device} ({where}); torch {torch.__version__}; workers {args.workers}; "
          f"images {args.width}x{args.height} JPEG")
    for name in args.models.split(","):
        big = name != "iim-test-tiny"
        n = args.n or (512 if not big else 4096 if device.type == "cuda" else 32)
        batch = args.batch or (128 if device.type == "cuda" else 16)
        model, preprocess = create_model(name, "none", device=device)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            files = make_images(tmp / "img", n, args.width, args.height)
            # warm-up (first-call kernels, allocator, page cache)
            plain_loop(model, preprocess, tmp / "img", files[:batch], tmp / "w0", batch, device, amp_dtype)
            iim_pipeline(model, preprocess, tmp / "img", files[:batch], tmp / "w1", batch, 0, device, amp_dtype)
            enc = encoder_only(model, preprocess, tmp / "img", files, batch, device, amp_dtype)
            t_plain = timed(lambda: plain_loop(model, preprocess, tmp / "img", files, tmp / "plain", batch,
                                               device, amp_dtype))
            t_iim = timed(lambda: iim_pipeline(model, preprocess, tmp / "img", files, tmp / "iim", batch,
                                               args.workers, device, amp_dtype))
        print(f"{name:14s} n={n:5d} batch={batch:3d}  encoder-only {enc:8.1f} img/s   "
              f"plain {n / t_plain:8.1f} img/s   iim {n / t_iim:8.1f} img/s   iim/plain {t_plain / t_iim:5.2f}x")


if __name__ == "__main__":
    main()
