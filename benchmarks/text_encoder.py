"""Prompt encoder speed: shared-prefix + EOT-cut encoder against the full-length 77-token path.

Times forward + backward (gradients to the contexts) of the text tower for the first C ImageNet class
names plus n_neg negative prompts, both paths in this process on the same inputs, and prints both
times and the ratio. Random weights are fine: the cost does not depend on them.

    python benchmarks/text_encoder.py                                   # CPU: C=100, n_neg=30, fp32
    python benchmarks/text_encoder.py --device cuda --bf16 --C 1000 --n-neg 300
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from iim.models import create_model
from iim.text import PromptEncoder, encode_prompts_reference


def step(fn, params, grads, device, bf16):
    """One forward + backward; returns seconds (CUDA-synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        id_feats, neg_feats = fn()
    loss = (id_feats.float() * grads[0]).sum() + (neg_feats.float() * grads[1]).sum()
    torch.autograd.grad(loss, params)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(fn, params, grads, device, bf16, warmup, repeats):
    for _ in range(warmup):
        step(fn, params, grads, device, bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [step(fn, params, grads, device, bf16) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--C", type=int, default=100, help="first C ImageNet class names (1..1000)")
    p.add_argument("--n-neg", type=int, default=30)
    p.add_argument("--n-ctx", type=int, default=16)
    p.add_argument("--class-specific", action="store_true")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing in the encoder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (both paths)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip-reference", action="store_true", help="time only the encoder")
    args = p.parse_args()

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                              platform.machine())
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")
    model, _ = create_model(args.model, "none", device=device)
    classnames = IMAGENET_CLASSNAMES[:args.C]
    torch.manual_seed(0)
    enc = PromptEncoder(model, classnames, n_ctx=args.n_ctx, n_neg=args.n_neg,
                        class_specific=args.class_specific, checkpoint=args.checkpoint)
    params = [enc.ctx] + ([enc.neg_ctx] if args.n_neg else [])
    D = enc()[0].shape[1]
    grads = (torch.randn(args.C, D, device=device), torch.randn(args.n_neg, D, device=device))
    ref_tokens = model.context_length * (args.C + args.n_neg)
    print(f"{args.model}, C={args.C}, n_neg={args.n_neg}, n_ctx={args.n_ctx}, "
          f"class_specific={args.class_specific}: tokens per step {enc.n_tokens} (encoder) vs "
          f"{ref_tokens} (full length), limit {ref_tokens / enc.n_tokens:.1f}x")

    t_enc, mem_enc = measure(enc, params, grads, device, args.bf16, args.warmup, args.repeats)
    print(f"encoder    {t_enc * 1e3:9.1f} ms/step (median of {args.repeats})"
          + (f", peak {mem_enc:.2f} GiB" if device.type == "cuda" else ""))
    if args.skip_reference:
        return
    ref = lambda: encode_prompts_reference(model, classnames, enc.ctx, enc.neg_ctx)  # noqa: E731
    t_ref, mem_ref = measure(ref, params, grads, device, args.bf16, args.warmup, args.repeats)
    print(f"reference  {t_ref * 1e3:9.1f} ms/step (median of {args.repeats})"
          + (f", peak {mem_ref:.2f} GiB" if device.type == "cuda" else ""))
    print(f"speed-up   {t_ref / t_enc:9.2f}x")


if __name__ == "__main__":
    main()
