"""The packed forward pass of one or several prompt encoders on one frozen model: every layer's
token-wise work as one call on all packed rows, attention per encoder on its own rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import IIMError
from .attention import Rows
from .tower import float32_at_least, project


def encoder_layer(block, x: torch.Tensor, attend, eot_index: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock on packed rows ``x [T, W]``: ln_1, the qkv projection,
    ``attend(qkv) -> [T', W]`` (T' = T, or the EOT rows ``eot_index`` only in the last layer), out_proj,
    ln_2 and the MLP, every token-wise part as one call on all rows."""
    attn = block.attn
    o = attend(F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias))        # qkv: [T, 3W]
    if eot_index is not None:
        x = Rows.apply(x, eot_index)
    x = x + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_packed(encoders: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The forward of one or several :class:`PromptEncoder` on the same frozen model as ONE packed pass:
    their packed rows back to back, the token-wise work of each layer (:func:`encoder_layer`) as one call
    on all of them, attention per encoder on its own rows (one batch for encoders sharing a packing plan,
    :meth:`PromptEncoder.plan_key`) -> each encoder's ``(id_features [C, D], neg_features [n_neg, D])``.
    Every operation is row-wise or within one encoder's rows, so each output depends on its own encoder's
    contexts only (and its gradient reaches only them)."""
    model = encoders[0].model
    if any(e.model is not model for e in encoders):
        raise IIMError("encode_packed packs encoders of one and the same model")
    order = [0] if len(encoders) == 1 else \
        sorted(range(len(encoders)), key=lambda i: encoders[i].plan_key())     # stable: same plans adjacent
    encs = [encoders[i] for i in order]
    runs, start, eot = [], 0, []        # runs: (encoder, first row, copies) of consecutive same-plan encoders
    for e in encs:
        if runs and runs[-1][0].plan_key() == e.plan_key() and e.attention not in ("flex", "blocks"):
            runs[-1][2] += 1
        else:
            runs.append([e, start, 1])
        eot.append(e.eot_index + start if start else e.eot_index)
        start += e.n_tokens
    eot = eot[0] if len(eot) == 1 else torch.cat(eot)
    x = _cat([e._embed() for e in encs]).to(model.transformer.get_cast_dtype())      # [T, W] packed
    blocks = model.transformer.resblocks
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1

        def attend(qkv, last=last, heads=block.attn.num_heads):
            return _cat([e._attend(qkv[a:a + n * e.n_tokens], heads, last, n) for e, a, n in runs])
        if encs[0].checkpoint and torch.is_grad_enabled():
            x = _checkpoint(encoder_layer, block, x, attend, eot if last else None, use_reentrant=False)
        else:
            x = encoder_layer(block, x, attend, eot if last else None)
    x = model.ln_final(x)                                                # x: EOT rows only
    sizes = [len(e.classnames) + e.n_neg for e in encs]
    if all(e.projection is None for e in encs):
        parts = project(model, x).split(sizes)
    else:
        parts = [project(model, r) if e.projection is None else r @ e.projection for e, r in zip(encs, x.split(sizes))]
    feats = [float32_at_least(f) for f in parts]
    out = [None] * len(encs)
    for i, e, f in zip(order, encs, feats):
        out[i] = (f[:len(e.classnames)], f[len(e.classnames):])
    return out


def _cat(xs: list) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)
