"""The learnable contexts: the prompt encoder built with its initial contexts (seeded, optional
``--ctx-init`` words and ``--train-projection``), what training updates, and the prototypes of the
current contexts."""
from __future__ import annotations

import torch
from torch import nn

from ...errors import IIMError
from ...text import CTX_INIT_STD, PromptEncoder, encode_packed, model_tokenizer
from ..config import TrainConfig, resolve_recipe


def build_encoder(model, classnames, cfg: TrainConfig) -> PromptEncoder:
    """The prompt encoder with contexts drawn from N(0, 0.02) by a CPU generator seeded with the run's
    seed, so that the initial contexts are the same on every device; with ``train_projection`` (SPEC §9)
    it gets a trainable copy of the model's ``text_projection`` (the model's own stays frozen)."""
    cfg = resolve_recipe(cfg)
    enc = PromptEncoder(model, classnames, n_ctx=cfg.n_ctx, n_neg=cfg.n_neg,
                        class_specific=cfg.class_specific, attention=cfg.attention)
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for p in (enc.ctx, enc.neg_ctx):
            p.copy_(torch.randn(p.shape, generator=g) * CTX_INIT_STD)
    if cfg.ctx_init:
        words = init_context_embeddings(model, cfg.ctx_init, cfg.n_ctx)          # [t, W]
        with torch.no_grad():
            enc.ctx[..., cfg.n_ctx - len(words):, :] = words.to(enc.ctx.dtype)
    if cfg.train_projection:
        enc.projection = nn.Parameter(trainable_projection(model))
    return enc


def ctx_init_tokens(model_name: str, words: str) -> torch.Tensor:
    """The token ids of ``--ctx-init`` words (no SOT/EOT), with the model's tokenizer."""
    tokens = model_tokenizer(model_name)([words])[0]
    return tokens[1:int(tokens.argmax())]


def check_ctx_init(words: str, n_ctx: int, model_name: str) -> None:
    """``--ctx-init`` must fit in the ``--n-ctx`` context tokens."""
    n = len(ctx_init_tokens(model_name, words)) if words else 0
    if n > n_ctx:
        raise IIMError(f"--ctx-init {words!r} is {n} tokens, longer than --n-ctx {n_ctx}; shorten it or raise "
                       f"--n-ctx")
    if words and n == 0:
        raise IIMError(f"--ctx-init {words!r} holds no tokens")


@torch.no_grad()
def init_context_embeddings(model, words: str, n_ctx: int) -> torch.Tensor:
    """CoOp's context init: the frozen token embeddings of ``words`` -> ``[t, W]``, t <= n_ctx."""
    name = getattr(model, "iim_model_name", "ViT-B-16")
    check_ctx_init(words, n_ctx, name)
    ids = ctx_init_tokens(name, words).to(model.token_embedding.weight.device)
    return model.token_embedding(ids).float().cpu()


def trainable_projection(model) -> torch.Tensor:
    """A copy of the text tower's ``text_projection`` matrix ``[W, D]`` (the official recipe trains it)."""
    proj = model.text_projection
    if not isinstance(proj, torch.Tensor):
        raise IIMError(f"--train-projection needs a text_projection matrix; {type(model).__name__} has "
                       f"{type(proj).__name__}")
    return proj.detach().clone()


def trained_parameters(encoder: PromptEncoder) -> dict[str, torch.Tensor]:
    """What training updates (and the checkpoint's ``contexts`` holds): ``ctx``, ``neg_ctx`` (if any
    negatives), ``projection`` (with --train-projection)."""
    out = {"ctx": encoder.ctx}
    if encoder.n_neg:
        out["neg_ctx"] = encoder.neg_ctx
    if encoder.projection is not None:
        out["projection"] = encoder.projection
    return out


def learned_prototypes(encoder: PromptEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """ID local and negative prototypes of the current contexts, float32 on the CPU (no autocast)."""
    return prototypes_of([encoder])[0]


@torch.no_grad()
def prototypes_of(encoders: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`learned_prototypes` of several encoders of one model in one packed pass."""
    with torch.autocast(encoders[0].ctx.device.type, enabled=False):
        feats = encode_packed(encoders)
    return [(i.float().cpu(), n.float().cpu()) for i, n in feats]
