"""What the peers' code does each step, shared by the benchmark scripts (not part of the package).

:class:`FullLengthPrompts` is CoOp's PromptLearner + TextEncoder, the text path of LoCoOp and
Local-Prompt: every prompt padded to the 77-token context, the SOT / class-name / pad embeddings
computed ONCE, the contexts spliced in each step, then open_clip's own transformer, ln_final, EOT
pooling and projection. Tokenising happens at construction, never inside a timed step.

:func:`cuda_graphed` captures a :class:`~iim.text.PromptEncoder`'s forward and backward as CUDA graphs
(an experiment: replays skip Python dispatch and kernel-launch overhead).
"""
from __future__ import annotations

import torch

from iim.text import id_prompt, neg_prompt, tokenize


class FullLengthPrompts:
    def __init__(self, model, classnames, n_ctx: int, n_neg: int):
        self.model, self.n_ctx, self.C = model, n_ctx, len(classnames)
        texts = [id_prompt(c, n_ctx) for c in classnames] + [neg_prompt(n_ctx)] * n_neg
        device = model.positional_embedding.device
        self.tokens = tokenize(model, texts).to(device)
        with torch.no_grad():
            emb = model.token_embedding(self.tokens)
        self.sot, self.suffix = emb[:, :1], emb[:, 1 + n_ctx:]
        self.eot = self.tokens.argmax(-1)

    def __call__(self, ctx, neg_ctx):
        m = self.model
        context = torch.cat([ctx.expand(self.C, -1, -1) if ctx.dim() == 2 else ctx, neg_ctx])
        x = torch.cat([self.sot, context, self.suffix], dim=1) + m.positional_embedding
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        x = x[torch.arange(len(x), device=x.device), self.eot] @ m.text_projection
        return x[:self.C].float(), x[self.C:].float()


def cuda_graphed(encoder, *, bf16: bool):
    """``encoder`` (a PromptEncoder on CUDA) with forward and backward replayed from CUDA graphs."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        return torch.cuda.make_graphed_callables(encoder, (), num_warmup_iters=3)
