"""Milliseconds per training batch of every method from the cache, next to each peer's own step (the
analogue of the paper's Table 4), side by side in one process on the same model.

    python benchmarks/baselines_step.py                                  # GPU: C=1000, Cn=300, ViT-B-16
    python benchmarks/baselines_step.py --device cpu                     # CPU: small C, batch and views

pipeline (iim train --method M): cached float16 features -> the loop's own step_function + train_step
          (shared-prefix PromptEncoder, EOT-cut tokens); Local-Prompt: view selection among the V cached
          views by the frozen global prototypes, then pos_views optimiser steps per batch.
peer:     what the peer's code does per batch: the image encoder forward (no grad; global + MaskCLIP
          local features) on the batch (Local-Prompt: on all V crops of each image, plus the frozen global
          prompts through the text encoder to choose the views), then per optimiser step every prompt
          encoded at 77 tokens (CoOp's PromptLearner + TextEncoder), the same losses, backward, SGD.

Random weights are fine: the cost does not depend on them. Prints ms per batch (median) and per epoch
of a 16-shot split (16 C images; Local-Prompt's batch and step count per batch as given).
"""
from __future__ import annotations

import argparse
import platform

import open_clip
import torch

from iim.features import encode_image
from iim.models import create_model, image_size, model_logit_scale
from iim.text import GLOBAL_TEMPLATE, global_prototypes, tokenize
from iim.train import baselines as bl
from iim.train.config import TrainConfig, resolve_method, resolve_recipe
from iim.train.loop import build_encoder, step_function, train_step
from iim.train.methods import method_losses
from iim.train.losses import diversity_loss, iim_losses, total_loss
from peers import FullLengthPrompts
from timing import timings

METHODS = ("iim", "coop", "locoop", "localprompt")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--C", type=int, default=None, help="ID classes (default 1000 GPU, 20 CPU)")
    ap.add_argument("--n-neg", type=int, default=None, help="negatives of IIM and Local-Prompt (300 GPU, 10 CPU)")
    ap.add_argument("--batch", type=int, default=None, help="IIM / CoOp / LoCoOp batch (32 GPU, 8 CPU)")
    ap.add_argument("--lp-batch", type=int, default=None, help="Local-Prompt batch (256 GPU, 4 CPU)")
    ap.add_argument("--views", type=int, default=None, help="Local-Prompt views per image (16 GPU, 4 CPU)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed batches (default 10 GPU, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 3 GPU, 1 CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    C = args.C or (1000 if gpu else 20)
    n_neg = args.n_neg if args.n_neg is not None else (300 if gpu else 10)
    batch, lp_batch = args.batch or (32 if gpu else 8), args.lp_batch or (256 if gpu else 4)
    views = args.views or (16 if gpu else 4)
    iters, warmup = args.iters or (10 if gpu else 2), args.warmup or (3 if gpu else 1)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16 and gpu)

    model, _ = create_model(args.model, "none", device=device)
    names = list(open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES)
    classnames = [names[i % len(names)] + ("" if i < len(names) else f" {i}") for i in range(C)]
    size = image_size(model)
    hw = (size // model.visual.patch_size[0]) ** 2
    dim = model.text_projection.shape[1]
    g = torch.Generator().manual_seed(0)
    global_protos = global_prototypes(model, classnames).to(device)     # stored in the cache

    rows = []
    for method in args.methods.split(","):
        b = lp_batch if method == "localprompt" else batch
        kw = dict(k=min(50, hw // 2), n_neg=n_neg) if method in ("iim", "localprompt") else {}
        cfg = resolve_recipe(resolve_method(TrainConfig(
            cache="-", split="-", out="-", method=method, batch_size=b, logit_scale=model_logit_scale(model),
            pos_views=min(8, views // 2) if method == "localprompt" else None, **kw)))
        labels = torch.randint(C, (b,), generator=g).to(device)
        v = views if method == "localprompt" else 1
        local = torch.randn(b, v, hw, dim, generator=g).half().to(device)         # cached features
        glob = torch.randn(b, v, dim, generator=g).half().to(device)
        images = torch.randn(b * v, 3, size, size, generator=g).to(device)         # the peer's crops

        enc = build_encoder(model, classnames, cfg).to(device)
        params = [enc.ctx] + ([enc.neg_ctx] if cfg.n_neg else [])
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
        forward = step_function(enc, cfg, amp)

        def pipeline_batch():
            if method == "localprompt":
                pos, neg = bl.select_views(glob, labels, global_protos, cfg.pos_views)
                r = torch.arange(b, device=device)
                for j in range(pos.shape[1]):
                    train_step(forward, opt, local[r, pos[:, j]], labels, local[r, neg])
            elif method == "iim":
                train_step(forward, opt, local[:, 0], labels)
            else:
                train_step(forward, opt, local[:, 0], labels, glob[:, 0])

        ctx = torch.nn.Parameter(enc.ctx.detach().clone())
        neg_ctx = torch.nn.Parameter(enc.neg_ctx.detach().clone())
        ref_opt = torch.optim.SGD([ctx, neg_ctx], lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
        full = FullLengthPrompts(model, classnames, cfg.n_ctx, cfg.n_neg)
        global_tokens = tokenize(model, [GLOBAL_TEMPLATE.format(c) for c in classnames]).to(device)

        def peer_step(loss_of):
            with torch.autocast(**amp):
                id_f, neg_f = full(ctx, neg_ctx)
            loss = loss_of(id_f, neg_f)
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()

        def peer_batch():
            with torch.no_grad(), torch.autocast(**amp):
                g_img, l_img = encode_image(model, images)
            if method == "localprompt":
                g_img, l_img = g_img.view(b, v, -1), l_img.view(b, v, hw, -1)
                with torch.no_grad(), torch.autocast(**amp):
                    frozen = model.encode_text(global_tokens)        # the peer re-encodes them per batch
                pos, neg = bl.select_views(g_img, labels, frozen, cfg.pos_views)
                r = torch.arange(b, device=device)
                for j in range(pos.shape[1]):
                    peer_step(lambda i, n: method_losses(cfg, i, n, l_img[r, pos[:, j]], labels, l_img[r, neg])[0])
            elif method == "iim":
                peer_step(lambda i, n: total_loss(*iim_losses(l_img, labels, i, n, k=cfg.k,
                                                              logit_scale=cfg.logit_scale).values(),
                                                  diversity_loss(i, n)))
            else:
                peer_step(lambda i, n: method_losses(cfg, i, n, l_img, labels, g_img)[0])

        ms, ms_med = timings(pipeline_batch, iters=iters, warmup=warmup, device=device)
        ms_peer, ms_peer_med = timings(peer_batch, iters=iters, warmup=warmup, device=device)
        per_epoch = max(1, 16 * C // b)
        rows.append((method, b, v, cfg.pos_views if method == "localprompt" else 1, ms, ms_peer, per_epoch,
                     ms_med, ms_peer_med))
        del local, glob, images, enc, full

    where = (torch.cuda.get_device_name(device) if gpu else
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{args.model} (random weights) on {device} ({where}), torch {torch.__version__}, "
          f"{'bf16 autocast' if amp['enabled'] else 'fp32'}; C={C}, Cn={n_neg} (IIM, Local-Prompt), 16 context tokens")
    print(f"ms per batch, best of {iters} (median in brackets); steps = optimiser steps per batch")
    print(f"{'method':<12} {'batch':>5} {'views':>5} {'steps':>5} {'pipeline ms':>20} {'peer ms':>20} "
          f"{'speed-up':>8}   per 16-shot epoch: pipeline / peer (s)")
    for method, b, v, steps, ms, ms_peer, n, med, peer_med in rows:
        print(f"{method:<12} {b:>5} {v:>5} {steps:>5} {ms:>10.1f} ({med:>7.1f}) {ms_peer:>10.1f} ({peer_med:>7.1f})"
              f" {ms_peer / ms:>7.1f}x   {n} batches: {ms * n / 1e3:.1f} / {ms_peer * n / 1e3:.1f}")


if __name__ == "__main__":
    main()
