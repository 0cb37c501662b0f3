"""The frozen CLIP text tower: the check that it is open_clip's standard causal one, its output
projection, and the frozen global prototypes ``T("a photo of a {c}.")``."""
from __future__ import annotations

import open_clip
import torch
from torch import nn

from ..errors import IIMError
from .prompts import GLOBAL_TEMPLATE, tokenize


def check_text_tower(model) -> None:
    """Refuse models whose text side is not open_clip's standard causal CLIP text tower."""
    name = type(model).__name__
    needed = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection",
              "attn_mask")
    missing = [a for a in needed if not hasattr(model, a)]
    if missing:
        raise IIMError(f"{name} has no standard open_clip CLIP text tower (missing {', '.join(missing)}); "
                       f"the prompt encoder needs a CLIP model such as ViT-B-16")
    blocks = getattr(model.transformer, "resblocks", None)
    ok = blocks is not None and len(blocks) > 0 and all(
        type(b) is open_clip.transformer.ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
        and isinstance(b.attn, nn.MultiheadAttention) and b.attn._qkv_same_embed_dim for b in blocks)
    if not ok:
        raise IIMError(f"{name}'s text transformer is not a stack of standard open_clip "
                       f"ResidualAttentionBlocks; the prompt encoder supports CLIP models such as ViT-B-16")
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        raise IIMError(f"{name} pools text at {model.text_pool_type!r}, not at the EOT token (argmax); "
                       f"the prompt encoder supports CLIP models such as ViT-B-16")
    mask = model.attn_mask
    n = model.positional_embedding.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    if mask is None or mask.shape != (n, n) or not torch.equal(torch.isinf(mask).cpu(), causal):
        raise IIMError(f"{name}'s text attention mask is not causal; the prompt encoder needs CLIP's "
                       f"causal text transformer")


@torch.no_grad()
def global_prototypes(model, classnames, *, template: str = GLOBAL_TEMPLATE, batch_size: int = 256,
                      device=None) -> torch.Tensor:
    """Frozen hand-written prototypes ``T("a photo of a {c}.")`` -> float32 ``[C, D]``, unnormalised."""
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(classnames), batch_size):
        names = list(classnames[i:i + batch_size])
        tokens = tokenize(model, [template.format(c) for c in names], names=names).to(device)
        out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, _out_dim(model))


def project(model, x: torch.Tensor) -> torch.Tensor:
    """The text tower's output projection of ``x`` (its ``text_projection``: a matrix, a module or none)."""
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


def _out_dim(model) -> int:
    proj = model.text_projection
    if proj is None:
        return model.transformer.width
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


def float32_at_least(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 if it is half or bfloat16 (features come out float32, or float64 for a float64 model)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
