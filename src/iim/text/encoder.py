"""Learnable SPEC §2 prompts -> exact CLIP text features: the prompt encoder, its packed prompt
embeddings and its padded-segment attention (the block-sparse layouts: :mod:`.block_sparse`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IIMError
from .attention import (ROW_BLOCK, SDPA_BACKENDS, Rows, Segment, bmm_attention, has_flex_attention,
                        sdpa_backend)
from .block_sparse import BlockSparseAttention
from .packed import encode_packed
from .plan import packing_plan
from .prompts import CTX_TOKEN, id_prompt, neg_prompt, tokenize
from .tower import check_text_tower

CTX_INIT_STD = 0.02   # SPEC §2: contexts init N(0, 0.02)


class PromptEncoder(BlockSparseAttention, nn.Module):
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
        attention: the scaled-dot-product-attention backend: ``"auto"`` (torch picks), ``"math"``,
            ``"efficient"``, ``"flash"``, or ``"bmm"``: two batched matmuls and a softmax with a precomputed
            additive mask (the prompts' sequences are short: 2-30 tokens, below fused kernels' tiles), or
            ``"flex"``: ONE FlexAttention call per layer on the packed rows themselves, with a block-sparse
            mask (own prompt, causal; class suffixes also see the shared prefix): no padding, no gathers.
            Compiled on CUDA; on CPU torch offers it without gradients only (for checks). ``"blocks"``:
            the same mask in plain PyTorch on any device: blocks of 64 packed rows each gather the few
            key blocks they see, and all attend in one batched SDPA call per layer.

    ``forward()`` returns ``(id_features [C, D], neg_features [n_neg, D])``, unnormalised, float32
    (float64 for a float64 model).
    """

    def __init__(self, model, classnames, n_ctx: int = 16, n_neg: int = 300, class_specific: bool = False,
                 *, checkpoint: bool = False, attention: str = "auto"):
        super().__init__()
        check_text_tower(model)
        if n_ctx < 1 or n_neg < 0 or len(classnames) == 0:
            raise IIMError(f"need n_ctx >= 1, n_neg >= 0 and at least one class "
                           f"(got n_ctx={n_ctx}, n_neg={n_neg}, {len(classnames)} classes)")
        self.__dict__["model"] = model           # plain attribute: frozen, not a submodule
        self.classnames = list(classnames)
        self.n_ctx, self.n_neg = n_ctx, n_neg
        self.class_specific, self.checkpoint = class_specific, checkpoint
        if attention not in SDPA_BACKENDS:
            raise IIMError(f"attention must be one of {', '.join(SDPA_BACKENDS)}, not {attention!r}")
        if attention == "flex" and not has_flex_attention():
            raise IIMError(f"attention='flex' needs a torch whose FlexAttention takes explicit sequence "
                           f"lengths (2.6 or newer; this is {torch.__version__}); use attention='auto'")
        self.attention = attention
        self.projection = None    # set to an nn.Parameter [W, D] to use it instead of the model's (SPEC §9)
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

        with torch.no_grad():   # frozen token embeddings + positions of the fixed tokens
            pos = model.positional_embedding
            emb = model.token_embedding(id_tokens.to(device)) + pos
            suffix = torch.cat([emb[c, prefix:prefix + id_len[c]] for c in range(C)])
            neg_suffix = (model.token_embedding(neg_tokens.to(device)) + pos)[0, prefix:prefix + neg_len]
        self.register_buffer("sot", emb[0, 0].clone(), persistent=False)                   # [W]
        self.register_buffer("ctx_pos", pos[1:prefix].detach().clone(), persistent=False)  # [n_ctx, W]
        self.register_buffer("suffix", suffix, persistent=False)                            # [sum L_c, W]
        self.register_buffer("neg_suffix", neg_suffix, persistent=False)                    # [2, W]

        plan = packing_plan(id_len, neg_len, n_ctx=n_ctx, n_neg=n_neg, class_specific=class_specific)
        self.n_tokens = plan.n_tokens   # tokens one forward pass runs (the full-length path runs 77 per prompt)
        order = None if plan.embed_order is None else torch.tensor(plan.embed_order, device=device)
        self.register_buffer("embed_order", order, persistent=False)
        self.segments = [Segment(plan.full_rows, 0, device)]
        if plan.shared_rows:
            self.segments.append(Segment(plan.shared_rows, prefix, device))
        self.register_buffer("out_index", torch.tensor(plan.out_index, device=device), persistent=False)
        self.register_buffer("eot_index", torch.tensor(plan.eot, device=device), persistent=False)
        self.register_buffer("eot_out_index", self.out_index[self.eot_index], persistent=False)
        self.register_buffer("row_doc", torch.tensor(plan.row_doc, device=device), persistent=False)
        self.register_buffer("row_pos", torch.tensor(plan.row_pos, device=device), persistent=False)
        self.register_buffer("row_reads_prefix", torch.tensor(plan.row_reads_prefix, device=device),
                             persistent=False)
        self._block_mask = None
        self._copies = {}                # _copies_index of several encoders with this plan
        if attention == "flex":   # built now, outside any torch.compile'd forward that calls the encoder
            self.block_mask()
        if attention == "blocks":
            kv_blocks, bias = self._block_plan(ROW_BLOCK)
            self.register_buffer("kv_blocks", kv_blocks, persistent=False)
            self.register_buffer("block_attn_bias", bias, persistent=False)

    def extra_repr(self) -> str:
        return (f"classes={len(self.classnames)}, n_ctx={self.n_ctx}, n_neg={self.n_neg}, "
                f"class_specific={self.class_specific}, tokens={self.n_tokens}")

    def forward(self):
        return encode_packed([self])[0]

    def plan_key(self) -> tuple:
        """Encoders with equal keys pack their prompts alike (same :class:`PackingPlan`): their attention
        runs as one batch in :func:`encode_packed`."""
        return (tuple(self.classnames), self.n_ctx, self.n_neg, self.class_specific, self.attention)

    def _embed(self) -> torch.Tensor:
        """Pack the prompt embeddings (context rows substituted, positions added) -> ``[T, W]``."""
        width = self.sot.shape[0]
        ctx = self.ctx if self.class_specific else self.ctx[None]
        heads = torch.cat([self.sot.expand(len(ctx), 1, width), ctx + self.ctx_pos], dim=1)
        parts = [heads.reshape(-1, width), self.suffix]
        if self.n_neg:
            neg = torch.cat([self.sot.expand(self.n_neg, 1, width), self.neg_ctx + self.ctx_pos,
                             self.neg_suffix.expand(self.n_neg, -1, -1)], dim=1)
            parts.append(neg.reshape(-1, width))
        x = torch.cat(parts)
        return x if self.embed_order is None else x.index_select(0, self.embed_order)

    def _attend(self, qkv: torch.Tensor, heads: int, last: bool, copies: int = 1) -> torch.Tensor:
        """Attention of the packed rows of ``copies`` encoders with this packing plan, back to back in
        ``qkv`` -> outputs in packed-row order (the EOT rows only if ``last``)."""
        if self.attention in ("flex", "blocks"):   # outputs in packed-row order
            if copies != 1:
                raise IIMError(f"attention={self.attention!r} attends one encoder at a time")
            o = (self._attend_flex if self.attention == "flex" else self._attend_blocks)(qkv, heads)
            return Rows.apply(o, self.eot_index) if last else o
        return self._attend_segments(qkv, heads, last, copies)

    def _attend_segments(self, qkv: torch.Tensor, heads: int, last: bool, copies: int = 1) -> torch.Tensor:
        """Attention per right-padded segment, outputs back in packed order (EOT rows only if ``last``);
        ``copies`` encoders' rows (same plan, back to back) attend as one batch."""
        outs = []
        seg_index, out_index, eot_out_index = self._copies_index(copies)
        for seg, index in zip(self.segments, seg_index):
            n = seg.n * copies
            qkv_seg = Rows.apply(qkv, index).view(n, seg.n_queries, 3, heads, -1)
            q, k, v = qkv_seg.permute(2, 0, 3, 1, 4)                           # [n, heads, rows, dim]
            if seg.n_prefix:   # every row's keys/values start with its copy's shared prefix; expand's
                # backward sums the prefix gradient over the classes (a reduction, no atomics)
                pre = qkv.view(copies, -1, qkv.shape[-1])[:, :seg.n_prefix]
                pre = pre.reshape(copies, 1, seg.n_prefix, 3, heads, -1).permute(3, 0, 1, 4, 2, 5)
                pre = pre.expand(-1, -1, seg.n, -1, -1, -1).reshape(3, n, heads, seg.n_prefix, -1)
                k = torch.cat([pre[1], k], dim=2)
                v = torch.cat([pre[2], v], dim=2)
            if self.attention == "bmm":
                o = bmm_attention(q, k, v, seg.bias.to(q.dtype))
            else:
                with sdpa_backend(self.attention):
                    o = F.scaled_dot_product_attention(q, k, v, attn_mask=seg.mask, is_causal=seg.mask is None)
            outs.append(o.transpose(1, 2).reshape(n * seg.n_queries, -1))
        o = torch.cat(outs) if len(outs) > 1 else outs[0]
        # in the last layer only the EOT rows feed out_proj, the MLP, ln_final and the projection
        return Rows.apply(o, eot_out_index if last else out_index)

    def _copies_index(self, copies: int) -> tuple[list, torch.Tensor, torch.Tensor]:
        """The gathers of :meth:`_attend_segments` for ``copies`` encoders' rows back to back: each
        segment's rows (copy c's shifted by c x T), and each packed row's place in the segments' outputs
        (segment s holds every copy's rows, copy by copy) -> ``(segment indices, out_index, eot_out_index)``."""
        if copies == 1:
            return [seg.index for seg in self.segments], self.out_index, self.eot_out_index
        key = (copies, str(self.out_index.device))
        if key not in self._copies:
            dev = self.out_index.device
            shift = torch.arange(copies, device=dev)[:, None]
            index = [(seg.index[None] + shift * self.n_tokens).flatten() for seg in self.segments]
            size = torch.tensor([seg.n * seg.n_queries for seg in self.segments], device=dev)
            base = torch.cumsum(size, 0) - size                 # segment starts in one copy's outputs

            def place(rows):    # one copy's output positions -> every copy's
                s = torch.searchsorted(base, rows, right=True) - 1
                return (copies * base[s] + shift * size[s] + rows - base[s]).flatten()
            self._copies[key] = index, place(self.out_index), place(self.eot_out_index)
        return self._copies[key]
