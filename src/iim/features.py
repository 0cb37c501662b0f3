"""Frozen image features (SPEC §1): the global CLIP embedding and MaskCLIP value-path patch features.

With ``x`` the input of the last vision block, the local (patch) features are

    h0  = ln_1(x)
    v   = out_proj(value_proj(h0))     # value slice of in_proj: no attention mixing between tokens
    v   = x + ls_1(v)
    v   = v + ls_2(mlp(ln_2(v)))
    v_l = proj(ln_post(v))[patch tokens]

The global feature is the ordinary CLIP embedding (CLS token after the last block, ln_post, proj). For a
tower whose class token joins late (``iim.models.LateClassTokenViT``, the demo CLIP), ``x`` is that tower's
input of the last block; the formulas are the same.
:func:`encode_image` computes both with ONE pass through the last block: the attention output is only
needed for the CLS query (global), the value path for the patch tokens (local), and both share ln_1,
the value projection and one MLP call.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import IIMError

FEATURE_VERSION = "maskclip-value-v1"   # recorded in the cache manifest; bump if the definition changes


def check_supported(model) -> None:
    """Refuse vision towers whose last block is not a standard open_clip ViT block."""
    v = getattr(model, "visual", None)
    ok = (v is not None and hasattr(v, "transformer") and hasattr(v, "_embeds")
          and getattr(v, "attn_pool", None) is None and getattr(v, "pool_type", "tok") == "tok"
          and not getattr(v, "final_ln_after_pool", False))
    if ok:
        blk = v.transformer.resblocks[-1]
        ok = isinstance(getattr(blk, "attn", None), nn.MultiheadAttention) and blk.attn._qkv_same_embed_dim
    if not ok:
        raise IIMError("unsupported image tower: iim needs an open_clip ViT with CLS-token pooling "
                       "and standard attention blocks (e.g. ViT-B-16, ViT-L-14)")


def _run_to_last_block(visual, images):
    if getattr(visual, "late_class_token", False):   # iim.models.LateClassTokenViT (the demo CLIP)
        return visual.run_to_last_block(images)
    x = visual._embeds(images)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    return x


def _project(visual, x):
    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x


@torch.no_grad()
def encode_image(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(global [B, D], local [B, HW, D])`` for preprocessed ``images`` [B, 3, H, W], unnormalised."""
    visual = model.visual
    if not visual.transformer.batch_first:
        raise IIMError("unsupported image tower: expected a batch-first open_clip transformer")
    x = _run_to_last_block(visual, images)                     # [B, 1 + HW, W]
    blk = visual.transformer.resblocks[-1]
    attn: nn.MultiheadAttention = blk.attn
    width, heads = x.shape[-1], attn.num_heads

    h0 = blk.ln_1(x)
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3)
    q = F.linear(h0[:, :1], w_q, b_q)                          # CLS query only
    k = F.linear(h0, w_k, b_k)
    v = F.linear(h0, w_v, b_v)

    def split(t):                                               # [B, L, W] -> [B, heads, L, W / heads]
        return t.unflatten(-1, (heads, width // heads)).transpose(1, 2)

    cls_mix = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)
    mixed = torch.cat([cls_mix, v[:, 1:]], dim=1)               # CLS: attention; patches: value path
    y = x + blk.ls_1(attn.out_proj(mixed))
    y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
    out = _project(visual, y)
    return out[:, 0], out[:, 1:]
