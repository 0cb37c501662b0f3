"""Text side: frozen global prototypes and the learnable prompt encoder (SPEC §2).

    protos = global_prototypes(model, classnames)          # frozen "a photo of a {c}.", [C, D]
    enc = PromptEncoder(model, classnames, n_ctx=16, n_neg=300)
    id_feats, neg_feats = enc()                              # [C, D], [n_neg, D]; grads reach enc.ctx, enc.neg_ctx

How :class:`PromptEncoder` stays exact while running ~10x fewer tokens than the usual 77 per prompt.
CLIP's text transformer is causal, so

* nothing after a prompt's EOT token changes its EOT output: every sequence is cut at its EOT;
* with one context shared by all classes, the first ``1 + n_ctx`` positions (SOT + context) are the
  same in every class prompt: that prefix runs through each layer ONCE and every class suffix attends
  to the prefix's keys/values.

All token-wise work (ln_1, the qkv projection, out_proj, ln_2, the MLP: ~97% of the FLOPs) runs on
the real tokens only, packed back to back. Attention is one call per kind of segment (the shared
prefix, the class suffixes, the negative prompts), with the rows of a segment right-padded to its
longest row: causal masking hides a row's pads from each of its real queries, so the padding never
reaches a real output. In the last layer only the EOT rows go through out_proj and the MLP.
:func:`encode_prompts_reference` is the straightforward full-length path, for tests and benchmarks.
"""
from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .errors import IIMError

GLOBAL_TEMPLATE = "a photo of a {}."
CTX_TOKEN = "X"       # placeholder word whose embeddings the learnable context replaces (CoOp)
CTX_INIT_STD = 0.02   # SPEC §2: contexts init N(0, 0.02)


def id_prompt(classname: str, n_ctx: int) -> str:
    """SPEC §2 ID local prompt: ``"X X ... X {classname}."`` with ``n_ctx`` X's."""
    return " ".join([CTX_TOKEN] * n_ctx + [classname]) + "."


def neg_prompt(n_ctx: int) -> str:
    """SPEC §2 negative prompt: ``"X X ... X ."`` (no class name)."""
    return " ".join([CTX_TOKEN] * n_ctx) + " ."


def tokenize(model, texts, *, names=None) -> torch.Tensor:
    """Tokenize with the model's own open_clip tokenizer -> ``[N, context_length]`` int64.

    Unlike the tokenizer, never truncates silently: a text longer than the text encoder's context is
    an :class:`IIMError` naming the text (or ``names[i]``, e.g. the class name that made it long).
    """
    tokenizer = open_clip.get_tokenizer(_model_name(model))
    length = getattr(model, "context_length", 77)
    if not texts:
        return torch.zeros(0, length, dtype=torch.long)
    tokens = tokenizer(list(texts), context_length=4 * length)   # room to measure over-long texts
    eot = tokens.argmax(dim=-1)
    for i in torch.nonzero(eot >= length).flatten().tolist():
        what = f"class name {names[i]!r}" if names is not None else f"text {texts[i]!r}"
        n = "more than " + str(4 * length) if eot[i] == 4 * length - 1 else str(int(eot[i]) + 1)
        raise IIMError(f"{what} makes the prompt {texts[i]!r} {n} tokens long; the text encoder "
                       f"takes at most {length} (shorten the name or use fewer context tokens)")
    return tokens[:, :length]


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
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    if mask is None or mask.shape != (n, n) or not torch.equal(torch.isinf(mask), causal):
        raise IIMError(f"{name}'s text attention mask is not causal; the prompt encoder needs CLIP's "
                       f"causal text transformer")


class PromptEncoder(nn.Module):
    """Learnable SPEC §2 prompts -> exact CLIP text features, with a shared prefix and EOT cut.

    Args:
        model: a frozen open_clip CLIP model (standard causal text tower). It is NOT registered as a
            submodule: ``.parameters()`` / ``state_dict()`` hold only ``ctx`` and ``neg_ctx``. Build the
            encoder with the model already on its device.
        classnames: the C ID class names, in label order.
        n_ctx: context tokens per prompt (16).
        n_neg: negative prompts, each with its own ``n_ctx`` context vectors (300; 0 allowed).
        class_specific: one context per class (``ctx`` is ``[C, n_ctx, W]``) instead of one shared.
        checkpoint: recompute each layer's activations in the backward pass (memory for very large C).

    ``forward()`` returns ``(id_features [C, D], neg_features [n_neg, D])``, unnormalised, float32
    (float64 for a float64 model).
    """

    def __init__(self, model, classnames, n_ctx: int = 16, n_neg: int = 300, class_specific: bool = False,
                 *, checkpoint: bool = False):
        super().__init__()
        check_text_tower(model)
        if n_ctx < 1 or n_neg < 0 or len(classnames) == 0:
            raise IIMError(f"need n_ctx >= 1, n_neg >= 0 and at least one class "
                           f"(got n_ctx={n_ctx}, n_neg={n_neg}, {len(classnames)} classes)")
        self.__dict__["model"] = model           # plain attribute: frozen, not a submodule
        self.classnames = list(classnames)
        self.n_ctx, self.n_neg = n_ctx, n_neg
        self.class_specific, self.checkpoint = class_specific, checkpoint
        self.prefix_len = prefix = 1 + n_ctx      # SOT + context
        width = model.transformer.width
        device = model.positional_embedding.device
        C = len(self.classnames)

        shape = (C, n_ctx, width) if class_specific else (n_ctx, width)
        self.ctx = nn.Parameter(torch.empty(shape, device=device).normal_(std=CTX_INIT_STD))
        self.neg_ctx = nn.Parameter(torch.empty(n_neg, n_ctx, width, device=device).normal_(std=CTX_INIT_STD))

        # Fixed token rows (frozen embeddings + positions), cut at each prompt's EOT.
        id_tokens = tokenize(model, [id_prompt(c, n_ctx) for c in self.classnames], names=self.classnames)
        neg_tokens = tokenize(model, [neg_prompt(n_ctx)])
        x_id = tokenize(model, [CTX_TOKEN])[0, 1]
        for tokens in (id_tokens, neg_tokens):
            if not (tokens[:, 1:prefix] == x_id).all():
                raise IIMError(f"the tokenizer does not map {n_ctx} x {CTX_TOKEN!r} to {n_ctx} context tokens")
        id_len = (id_tokens.argmax(-1) + 1 - prefix).tolist()     # suffix: class name, ".", EOT
        neg_len = int(neg_tokens.argmax()) + 1 - prefix             # ".", EOT

        # Length groups, in packing order: each is a dense [rows, length] batch of one kind:
        # "prefix" (the shared SOT + context, once), "suffix" (class suffixes that attend to the shared
        # prefix), "full" (whole prompts with their own context: class-specific and negative prompts).
        lengths = sorted(set(id_len))
        by_len = [[c for c in range(C) if id_len[c] == n] for n in lengths]
        if class_specific:
            self.groups = [_Group("full", rows, prefix + n, device) for n, rows in zip(lengths, by_len)]
        else:
            self.groups = [_Group("prefix", [None], prefix, device)]
            self.groups += [_Group("suffix", rows, n, device, prefix) for n, rows in zip(lengths, by_len)]
        if n_neg:
            self.groups.append(_Group("full", list(range(C, C + n_neg)), prefix + neg_len, device))
        order = [c for rows in by_len for c in rows]                 # classes in packing order

        with torch.no_grad():   # frozen token embeddings + positions of the fixed tokens
            pos = model.positional_embedding
            emb = model.token_embedding(id_tokens.to(device)) + pos
            suffix = torch.cat([emb[c, prefix:prefix + id_len[c]] for c in order])
            neg_suffix = (model.token_embedding(neg_tokens.to(device)) + pos)[0, prefix:prefix + neg_len]
        self.register_buffer("sot", emb[0, 0].clone(), persistent=False)            # [W]
        self.register_buffer("ctx_pos", pos[1:prefix].detach().clone(), persistent=False)  # [n_ctx, W]
        self.register_buffer("suffix", suffix, persistent=False)       # [sum_c L_c, W], packing order
        self.register_buffer("neg_suffix", neg_suffix, persistent=False)   # [2, W]
        if class_specific:   # packing order of the rows of [C x (SOT, ctx_c); suffixes] for _embed
            index, start = [], C * prefix
            for c in order:
                index += list(range(c * prefix, (c + 1) * prefix)) + list(range(start, start + id_len[c]))
                start += id_len[c]
            self.register_buffer("class_index", torch.tensor(index, device=device), persistent=False)
        # packed position of every output row's EOT (its last token), in output order (classes, negatives)
        eot, start = [0] * (C + n_neg), 0
        for g in self.groups:
            for i, row in enumerate(g.rows):
                if row is not None:
                    eot[row] = start + (i + 1) * g.length - 1
            start += g.n_tokens
        self.register_buffer("eot_index", torch.tensor(eot, device=device), persistent=False)

    @property
    def n_tokens(self) -> int:
        """Tokens one forward pass runs through the transformer (the reference runs 77 per prompt)."""
        return sum(g.n_tokens for g in self.groups)

    def extra_repr(self) -> str:
        return (f"classes={len(self.classnames)}, n_ctx={self.n_ctx}, n_neg={self.n_neg}, "
                f"class_specific={self.class_specific}, tokens={self.n_tokens}")

    def forward(self):
        model = self.model
        dtype = model.transformer.get_cast_dtype()
        x = self._embed().to(dtype)                                      # [T, W] packed
        blocks = model.transformer.resblocks
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            if self.checkpoint and torch.is_grad_enabled():
                x = _checkpoint(self._layer, block, x, last, use_reentrant=False)
            else:
                x = self._layer(block, x, last)
        feats = _float32_at_least(_project(model, model.ln_final(x)))   # x: EOT rows only
        C = len(self.classnames)
        return feats[:C], feats[C:]

    def _embed(self) -> torch.Tensor:
        """Pack the prompt embeddings (context rows substituted, positions added) -> ``[T, W]``."""
        width = self.sot.shape[0]
        if self.class_specific:                     # [SOT, ctx_c, suffix_c] for every class c
            C = self.ctx.shape[0]
            heads = torch.cat([self.sot.expand(C, 1, width), self.ctx + self.ctx_pos], dim=1)
            parts = [torch.cat([heads.reshape(-1, width), self.suffix])[self.class_index]]
        else:                                       # the shared prefix once, then every class suffix
            parts = [self.sot[None], self.ctx + self.ctx_pos, self.suffix]
        if self.n_neg:
            neg = torch.cat([self.sot.expand(self.n_neg, 1, width), self.neg_ctx + self.ctx_pos,
                             self.neg_suffix.expand(self.n_neg, -1, -1)], dim=1)
            parts.append(neg.reshape(-1, width))
        return torch.cat(parts)

    def _layer(self, block, x: torch.Tensor, last: bool) -> torch.Tensor:
        """One ResidualAttentionBlock on the packed tokens; in the last layer keep only EOT rows."""
        attn = block.attn
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)   # [T, 3W]
        outs, prefix_kv = [], None
        for g, t in zip(self.groups, qkv.split([g.n_tokens for g in self.groups])):
            q, k, v = t.view(len(g.rows), g.length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            if g.kind == "prefix":                # [1, heads, P, head_dim]
                prefix_kv = (k, v)
            elif g.kind == "suffix":              # keys/values: the shared prefix's, then the row's own
                k = torch.cat([prefix_kv[0].expand(len(g.rows), -1, -1, -1), k], dim=2)
                v = torch.cat([prefix_kv[1].expand(len(g.rows), -1, -1, -1), v], dim=2)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, is_causal=g.mask is None)
            outs.append(o.transpose(1, 2).reshape(g.n_tokens, -1))
        o = torch.cat(outs)
        if last:                                  # only the EOT rows feed ln_final and the projection
            x, o = x[self.eot_index], o[self.eot_index]
        x = x + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
        return x + block.ls_2(block.mlp(block.ln_2(x)))


class _Group:
    """A dense batch of equally long rows, packed back to back: ``rows`` are output row indices."""

    def __init__(self, kind: str, rows, length: int, device, prefix: int = 0):
        self.kind, self.rows, self.length = kind, rows, length
        self.n_tokens = len(rows) * length
        self.mask = None                          # None: plain causal attention within the row
        if kind == "suffix":                      # the whole prefix, then causal within the row
            self.mask = torch.ones(length, prefix + length, dtype=torch.bool, device=device).tril(prefix)


def encode_prompts_reference(model, classnames, ctx: torch.Tensor, neg_ctx: torch.Tensor | None = None):
    """The straightforward full-length path, for tests and benchmarks: every prompt tokenized to the
    model's 77 tokens, context rows substituted into the token embeddings, then open_clip's own
    ``transformer(x, attn_mask)``, ``ln_final``, EOT (argmax) pooling and ``text_projection``.

    ``ctx``: ``[n_ctx, W]`` shared or ``[C, n_ctx, W]`` class-specific; ``neg_ctx``: ``[n_neg, n_ctx, W]``.
    Returns ``(id_features [C, D], neg_features [n_neg, D])`` like :class:`PromptEncoder`.
    """
    n_ctx = ctx.shape[-2]
    tokenizer = open_clip.get_tokenizer(_model_name(model))
    device = model.positional_embedding.device

    def encode(texts, context):                     # context: [N, n_ctx, W]
        tokens = tokenizer(texts).to(device)
        emb = model.token_embedding(tokens)
        x = torch.cat([emb[:, :1], context.to(emb.dtype), emb[:, 1 + n_ctx:]], dim=1)
        x = x + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        x = x[torch.arange(len(texts), device=device), tokens.argmax(dim=-1)]
        return _float32_at_least(_project(model, x))

    C = len(classnames)
    ctx = ctx if ctx.dim() == 3 else ctx.expand(C, -1, -1)
    id_feats = encode([id_prompt(c, n_ctx) for c in classnames], ctx)
    if neg_ctx is None or len(neg_ctx) == 0:
        return id_feats, id_feats.new_zeros(0, id_feats.shape[1])
    return id_feats, encode([neg_prompt(n_ctx)] * len(neg_ctx), neg_ctx)


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _project(model, x: torch.Tensor) -> torch.Tensor:
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


def _out_dim(model) -> int:
    proj = model.text_projection
    if proj is None:
        return model.transformer.width
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


def _model_name(model) -> str:
    # every open_clip CLIP uses the OpenAI BPE tokenizer unless its config says otherwise
    return getattr(model, "iim_model_name", "ViT-B-16")
