"""The straightforward full-length path of the prompts (77 tokens each, open_clip's own transformer):
what the packed encoder is tested and benchmarked against."""
from __future__ import annotations

import torch

from .prompts import id_prompt, model_name, model_tokenizer, neg_prompt
from .tower import float32_at_least, project


def encode_prompts_reference(model, classnames, ctx: torch.Tensor, neg_ctx: torch.Tensor | None = None):
    """The straightforward full-length path, for tests and benchmarks: every prompt tokenized to the
    model's 77 tokens, context rows substituted into the token embeddings, then open_clip's own
    ``transformer(x, attn_mask)``, ``ln_final``, EOT (argmax) pooling and ``text_projection``.

    ``ctx``: ``[n_ctx, W]`` shared or ``[C, n_ctx, W]`` class-specific; ``neg_ctx``: ``[n_neg, n_ctx, W]``.
    Returns ``(id_features [C, D], neg_features [n_neg, D])`` like :class:`PromptEncoder`.
    """
    n_ctx = ctx.shape[-2]
    tokenizer = model_tokenizer(model_name(model))
    device = model.positional_embedding.device

    def encode(texts, context):                     # context: [N, n_ctx, W]
        tokens = tokenizer(texts).to(device)
        emb = model.token_embedding(tokens)
        x = torch.cat([emb[:, :1], context.to(emb.dtype), emb[:, 1 + n_ctx:]], dim=1)
        x = x + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        x = x[torch.arange(len(texts), device=device), tokens.argmax(dim=-1)]
        return float32_at_least(project(model, x))

    C = len(classnames)
    ctx = ctx if ctx.dim() == 3 else ctx.expand(C, -1, -1)
    id_feats = encode([id_prompt(c, n_ctx) for c in classnames], ctx)
    if neg_ctx is None or len(neg_ctx) == 0:
        return id_feats, id_feats.new_zeros(0, id_feats.shape[1])
    return id_feats, encode([neg_prompt(n_ctx)] * len(neg_ctx), neg_ctx)
