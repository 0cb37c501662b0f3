"""Milliseconds per IIM training step: this pipeline vs the straightforward peer step, same process.

    python benchmarks/train_step.py                                   # GPU if available: C=1000, Cn=300
    python benchmarks/train_step.py --device cpu --C 100 --n-neg 30   # the CPU configuration

iim step:       cached patch features [B, HW, D] (float16) -> shared-prefix PromptEncoder (EOT-cut
                tokens) -> Eq. 5-11 -> backward -> SGD step: the training loop's own
                ``iim.train.loop.step_function`` + ``train_step``. ``--attention`` and ``--compile`` time
                more variants of it (every attention kernel x every torch.compile mode).
reference step: what the peers do each step: the image encoder forward on the B-image batch at full
                resolution (no grad; global + MaskCLIP local features) + full-length (77-token)
                encoding of all C + Cn prompts, CoOp-style (token embeddings built once, context
                spliced in each step; checked against iim.text.encode_prompts_reference) -> the same
                losses -> backward -> SGD step.

Both use the same model (random weights are fine: the cost does not depend on them), bf16 autocast
on CUDA unless --no-bf16, and print the median step time and the ratio.

--loop N (default 512 on GPU, 0 on CPU) also runs the real loop, ``iim.train.loop.train``, for 2 epochs
on a synthetic cache of N images with the same shapes, once per feature storage (device / host /
stream), and prints its ms per step in the second epoch (data gather, sync and bookkeeping included);
``--loop-variants`` adds runs with other ``--attention`` / ``--compile`` settings (features on device).
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import open_clip
import torch

from iim.cache import create_cache
from iim.features import FEATURE_VERSION, encode_image
from iim.models import create_model, image_size
from iim.text import PromptEncoder, encode_prompts_reference
from iim.train import diversity_loss, iim_losses, total_loss
from iim.train.loop import TrainConfig, step_function, train, train_step
from peers import FullLengthPrompts, cuda_graphed
from timing import timings
from variants import add_variant_options, allow_many_compiles, variant_label, variants


def timed(step, *, iters: int, warmup: int, device) -> float:
    """Median wall time of ``step()`` in ms."""
    return timings(step, iters=iters, warmup=warmup, device=device)[1]


def synthetic_cache(root, *, model: str, size: int, classnames, n_images: int, hw: int, dim: int,
                    split: str = "train_shots1_seed1") -> Path:
    """A cache holding one train split of ``n_images`` random features (2 views) for ``model``'s shapes."""
    manifest = {"model": model, "pretrained": "none", "weights": "none", "image_size": size,
                "feature_version": FEATURE_VERSION, "benchmark": "bench", "classnames": list(classnames)}
    cache = create_cache(Path(root), manifest)
    rng = np.random.default_rng(0)
    labels = rng.integers(len(classnames), size=n_images)
    w = cache.writer(split, n=n_images, views=2, hw=hw, dim=dim, labels=labels,
                     paths=[f"{i}.png" for i in range(n_images)])
    for i in range(0, n_images, 64):
        b = min(64, n_images - i)
        w.append(rng.standard_normal((b, 2, dim), dtype=np.float32),
                 rng.standard_normal((b, 2, hw, dim), dtype=np.float32))
    w.finish()
    return Path(root)


def loop_ms_per_step(args, classnames, n_neg, size, hw, dim, n_images: int, device, runs) -> dict:
    """ms per step of the real training loop (second epoch) for each ``label -> TrainConfig overrides``."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_cache(Path(tmp) / "cache", model=args.model, size=size, classnames=classnames,
                        n_images=n_images, hw=hw, dim=dim)
        for i, (label, overrides) in enumerate(runs.items()):
            cfg = TrainConfig(cache=str(Path(tmp) / "cache"), split="train_shots1_seed1", out=str(Path(tmp) / str(i)),
                              k=args.k, n_neg=n_neg, n_ctx=args.n_ctx, epochs=2, batch_size=args.batch,
                              device=str(device), bf16=args.bf16, **overrides)
            try:
                h = train(cfg, progress=False, log=lambda *a: None)["history"][-1]
            except Exception as e:            # reported, and the other runs go on
                print(f"training loop, {label}: FAILED ({type(e).__name__}: {str(e).strip()[:300]})")
                continue
            out[label] = 1e3 * h["seconds"] / h["steps"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--C", type=int, default=None, help="ID classes (default 1000 on GPU, 100 on CPU)")
    ap.add_argument("--n-neg", type=int, default=None, help="negative prompts (default 300 GPU, 30 CPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast (CUDA only)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps (default 20 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 1 CPU)")
    add_variant_options(ap, "; the first is the main iim step")
    ap.add_argument("--loop-variants", default="", help="extra loop runs, comma list of KERNEL[+MODE] "
                    "(e.g. flex, flex+default, flex+reduce-overhead: iim train --attention KERNEL "
                    "--compile MODE), features on device")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time the iim step with the prompt encoder replayed from CUDA graphs")
    ap.add_argument("--loop", type=int, default=None,
                    help="images of a synthetic cache to time the real loop on (default 512 GPU, 0 CPU)")
    args = ap.parse_args()
    allow_many_compiles()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    C = args.C or (1000 if gpu else 100)
    n_neg = args.n_neg if args.n_neg is not None else (300 if gpu else 30)
    iters, warmup = args.iters or (20 if gpu else 3), args.warmup or (5 if gpu else 1)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16 and gpu)

    model, _ = create_model(args.model, "none", device=device)
    names = list(open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES)
    classnames = [names[i % len(names)] + ("" if i < len(names) else f" {i}") for i in range(C)]
    size = image_size(model)
    hw = (size // model.visual.patch_size[0]) ** 2
    dim = model.text_projection.shape[1]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(C, (args.batch,), generator=g).to(device)
    feats = torch.randn(args.batch, hw, dim, generator=g).half().to(device)
    images = torch.randn(args.batch, 3, size, size, generator=g).to(device)

    def losses(id_f, neg_f, local):
        t = iim_losses(local, labels, id_f, neg_f, k=args.k, check_labels=False)   # no mid-step GPU sync
        return total_loss(t["pos"], t["neg"], diversity_loss(id_f, neg_f))

    cfg = TrainConfig(cache="-", split="-", out="-", k=args.k, n_neg=n_neg, n_ctx=args.n_ctx)
    backends = args.attention.split(",")

    def iim_step_for(attention, mode=None, state=None):
        """The loop's step (step_function + train_step) with its own encoder and optimizer."""
        e = PromptEncoder(model, classnames, n_ctx=args.n_ctx, n_neg=n_neg, attention=attention)
        if state is not None:
            e.load_state_dict(state)
        o = torch.optim.SGD([e.ctx, e.neg_ctx], lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
        forward = step_function(e, cfg, amp)
        if mode is not None:
            forward = torch.compile(forward, mode=mode, dynamic=False)
        return e, lambda: train_step(forward, o, feats, labels)

    enc, iim_step = iim_step_for(backends[0])

    ctx = torch.nn.Parameter(enc.ctx.detach().clone())
    neg_ctx = torch.nn.Parameter(enc.neg_ctx.detach().clone())
    ref_opt = torch.optim.SGD([ctx, neg_ctx], lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    full = FullLengthPrompts(model, classnames, args.n_ctx, n_neg)
    with torch.no_grad():                     # the two text paths compute the same features
        want = encode_prompts_reference(model, classnames[:8], ctx, neg_ctx[:4])
        got = FullLengthPrompts(model, classnames[:8], args.n_ctx, len(neg_ctx[:4]))(ctx, neg_ctx[:4])
        fast = enc()
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast[0][:8], want[0], rtol=1e-4, atol=1e-4)

    def reference_step():
        with torch.autocast(**amp):
            with torch.no_grad():
                _, local = encode_image(model, images)
            id_f, neg_f = full(ctx, neg_ctx)
        loss = losses(id_f, neg_f, local)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    ms_iim = timed(iim_step, iters=iters, warmup=warmup, device=device)
    others = {}
    for backend, mode in variants(args.attention, args.compile)[1:]:
        t0 = time.perf_counter()
        try:                                  # one broken variant must not cost the others' figures
            _, fn = iim_step_for(backend, mode, enc.state_dict())
            fn()
        except Exception as e:
            print(f"iim step, {variant_label(backend, mode)}: FAILED ({type(e).__name__}: "
                  f"{(str(e).strip().splitlines() or [''])[0][:300]})")
            continue
        first = time.perf_counter() - t0
        others[variant_label(backend, mode)] = (timed(fn, iters=iters, warmup=warmup, device=device), first)
    ms_graph = None
    if args.cuda_graph and gpu:
        genc = PromptEncoder(model, classnames, n_ctx=args.n_ctx, n_neg=n_neg, attention=backends[0])
        genc.load_state_dict(enc.state_dict())
        genc = cuda_graphed(genc, bf16=amp["enabled"])
        gopt = torch.optim.SGD([genc.ctx, genc.neg_ctx], lr=2.5e-4, momentum=0.9, weight_decay=5e-4)

        def graphed_step():
            id_f, neg_f = genc()
            loss = losses(id_f, neg_f, feats)
            gopt.zero_grad(set_to_none=True)
            loss.backward()
            gopt.step()
        ms_graph = timed(graphed_step, iters=iters, warmup=warmup, device=device)
    ms_ref = timed(reference_step, iters=iters, warmup=warmup, device=device)
    where = (torch.cuda.get_device_name(device) if gpu else
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    ref_tokens = 77 * (C + n_neg)
    print(f"{args.model} on {device} ({where}), torch {torch.__version__}, "
          f"{'bf16 autocast' if amp['enabled'] else 'fp32'}")
    print(f"C={C} Cn={n_neg} B={args.batch} k={args.k} n_ctx={args.n_ctx}; text tokens per step: "
          f"{enc.n_tokens} (iim) vs {ref_tokens} (reference, {ref_tokens / enc.n_tokens:.1f}x)")
    print(f"iim step        {ms_iim:10.1f} ms   (attention {backends[0]}, eager)")
    print(f"reference step  {ms_ref:10.1f} ms   (image encoder forward + 77-token prompts)")
    print(f"speed-up        {ms_ref / ms_iim:10.1f}x")
    for name, (ms, first) in others.items():
        print(f"iim step, {name:32s} {ms:8.1f} ms   speed-up {ms_ref / ms:6.1f}x   (first step {first:.1f} s)")
    if ms_graph is not None:
        print(f"iim step, CUDA-graphed prompt encoder {ms_graph:8.1f} ms   speed-up {ms_ref / ms_graph:6.1f}x")
    n_loop = args.loop if args.loop is not None else (512 if gpu else 0)
    if n_loop:
        runs = {f"features {w}": dict(features_in=w, attention=backends[0]) for w in ("device", "host", "stream")}
        for v in filter(None, args.loop_variants.split(",")):
            kernel, _, mode = v.partition("+")
            runs[f"features device, {v}"] = dict(features_in="device", attention=kernel, compile=mode or "off")
        for label, ms in loop_ms_per_step(args, classnames, n_neg, size, hw, dim, n_loop, device, runs).items():
            print(f"training loop, {label:32s} {ms:8.1f} ms/step  ({n_loop} images, epoch 2)")


if __name__ == "__main__":
    main()
