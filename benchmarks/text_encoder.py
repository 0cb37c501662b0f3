"""Prompt encoder speed: shared-prefix + EOT-cut encoder against the full-length 77-token path.

Times forward + backward (gradients to the contexts) of the text tower for the first C ImageNet class
names plus n_neg negative prompts, both paths in this process on the same inputs, and prints both
times and the ratio. The full-length path is the peers' (CoOp's): prompts tokenised and embedded once,
contexts spliced in each step (``peers.FullLengthPrompts``); its features are first checked against
``iim.text.encode_prompts_reference``. Random weights are fine: the cost does not depend on them.

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
from peers import FullLengthPrompts, cuda_graphed
from variants import add_variant_options, allow_many_compiles, variant_label, variants


def step(fn, params, grads, device, bf16):  # noqa: D401
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


def measure(fns, grads, device, bf16, warmup, repeats):
    """Seconds per step of each ``(function, params)``, ``repeats`` times; the functions alternate, so
    that load from other processes hits all of them alike. Also returns each one's peak CUDA memory (GiB)
    and the seconds of its warm-up steps (compiling, for compiled variants)."""
    warm = []
    for fn, params in fns:
        t0 = time.perf_counter()
        for _ in range(warmup):
            step(fn, params, grads, device, bf16)
        warm.append(time.perf_counter() - t0)
    times, peaks = [[] for _ in fns], [float("nan")] * len(fns)
    for _ in range(repeats):
        for i, (fn, params) in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[i].append(step(fn, params, grads, device, bf16))
            if device.type == "cuda":
                peaks[i] = torch.cuda.max_memory_allocated(device) / 2**30
    return times, peaks, warm


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
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's; 1 gives steadier figures on a shared machine)")
    p.add_argument("--skip-reference", action="store_true", help="time only the encoder")
    add_variant_options(p, " to time the encoder with")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time the encoder replayed from CUDA graphs (CUDA only)")
    args = p.parse_args()
    allow_many_compiles()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.repeats = args.repeats or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
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

    full = FullLengthPrompts(model, classnames, args.n_ctx, args.n_neg)
    ref = lambda: full(enc.ctx, enc.neg_ctx)  # noqa: E731
    want = None
    if not args.skip_reference:   # same features as the full-length path (bf16: to bf16 precision)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            want = encode_prompts_reference(model, classnames, enc.ctx, enc.neg_ctx)
            diff = max((a - b).abs().max().item() for a, b in zip(enc(), want) if a.numel())
            diff_full = max((a - b).abs().max().item() for a, b in zip(ref(), want) if a.numel())
        print(f"max |encoder - reference| over the features: {diff:.2e} "
              f"(peers' full-length path: {diff_full:.2e})")
    fns, labels = [(enc, params)], ["encoder"]
    if not args.skip_reference:
        fns.append((ref, params))
        labels.append("reference")
    for backend, mode in variants(args.attention, args.compile):
        if (backend, mode) == ("auto", None):
            continue                                   # the "encoder" row
        name = variant_label(backend, mode)
        try:                      # a first call with gradients (compiles if compiled), checked
            other = PromptEncoder(model, classnames, n_ctx=args.n_ctx, n_neg=args.n_neg,
                                  class_specific=args.class_specific, attention=backend)
            other.load_state_dict(enc.state_dict())
            fn = other if mode is None else torch.compile(other, mode=mode, dynamic=False)
            other_params = [other.ctx] + ([other.neg_ctx] if args.n_neg else [])
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                feats = fn()
            torch.autograd.grad(sum(f.float().sum() for f in feats), other_params)   # as a step does
        except Exception as e:    # one broken variant must not cost the others' figures
            print(f"{name}: FAILED ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]})")
            continue
        if want is not None:
            diff = max((a - b).abs().max().item() for a, b in zip(feats, want) if a.numel())
            print(f"max |{name} - reference| over the features: {diff:.2e} "
                  f"(first call {time.perf_counter() - t0:.1f} s)")
        fns.append((fn, other_params))
        labels.append(name)
    if args.cuda_graph and cuda:
        genc = PromptEncoder(model, classnames, n_ctx=args.n_ctx, n_neg=args.n_neg,
                             class_specific=args.class_specific)
        genc.load_state_dict(enc.state_dict())
        gparams = [genc.ctx] + ([genc.neg_ctx] if args.n_neg else [])
        fns.append((cuda_graphed(genc, bf16=args.bf16), gparams))
        labels.append("cuda-graph")
    times, peaks, warm = measure(fns, grads, device, args.bf16, args.warmup, args.repeats)
    for label, t, peak, w in zip(labels, times, peaks, warm):
        print(f"{label:26s} {statistics.median(t) * 1e3:9.1f} ms/step median, {min(t) * 1e3:9.1f} min "
              f"of {args.repeats}" + (f", peak {peak:.2f} GiB" if device.type == "cuda" else "")
              + f", warm-up {w:.1f} s")
    if not args.skip_reference:
        median, best = (statistics.median(times[1]) / statistics.median(times[0]),
                        min(times[1]) / min(times[0]))
        print(f"speed-up   {median:9.2f}x (medians), {best:.2f}x (minima)")
    if not args.skip_reference:
        for label, t in zip(labels[2:], times[2:]):
            print(f"speed-up, {label:28s} {statistics.median(times[1]) / statistics.median(t):.2f}x (medians)")


if __name__ == "__main__":
    main()
