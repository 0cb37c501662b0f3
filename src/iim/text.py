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

Every distinct token is stored once, packed back to back (the shared prefix, each class suffix, each
negative prompt), and all token-wise work (ln_1, the qkv projection, out_proj, ln_2, the MLP: ~95% of
the FLOPs) runs on exactly those tokens, whatever the class-name lengths. Attention (the rest) gathers
each prompt's own tokens by index into a batch right-padded to the segment's longest prompt; causal
masking hides a row's pads from all of its real queries, so no pad reaches a real output. Class rows
put the shared prefix's keys/values in front of their own by ``expand``, whose backward sums the
prefix's gradient over the classes as one reduction (a gather's backward would funnel 1,000 classes'
gradients into the same 17 rows through atomic adds, slow on a GPU). In the last layer only
the EOT rows go through out_proj and the MLP. With ``attention="flex"`` the attention is instead ONE
FlexAttention call per layer on the packed rows themselves, masked by :meth:`PromptEncoder.visible`
(block-sparse: no padding, no gathers but the last layer's EOT rows); ``attention="blocks"`` does the
same in plain PyTorch, each block of 64 rows gathering the few key blocks it sees.
:func:`encode_prompts_reference` is the straightforward full-length path, for tests and benchmarks.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .errors import IIMError

try:   # causal mask aligned to the last key: lets CUDA use flash attention (torch >= 2.3)
    from torch.nn.attention.bias import causal_lower_right
except ImportError:  # pragma: no cover
    causal_lower_right = None

SDPA_BACKENDS = ("auto", "math", "efficient", "flash", "bmm", "flex", "blocks")
GLOBAL_TEMPLATE = "a photo of a {}."
CTX_TOKEN = "X"       # placeholder word whose embeddings the learnable context replaces (CoOp)
CTX_INIT_STD = 0.02   # SPEC §2: contexts init N(0, 0.02)
FLEX_BLOCK = 128      # FlexAttention's block size (queries and keys)
ROW_BLOCK = 64        # attention="blocks": packed rows per query / key block (divides FLEX_BLOCK)


def id_prompt(classname: str, n_ctx: int) -> str:
    """SPEC §2 ID local prompt: ``"X X ... X {classname}."`` with ``n_ctx`` X's."""
    return " ".join([CTX_TOKEN] * n_ctx + [classname]) + "."


def neg_prompt(n_ctx: int) -> str:
    """SPEC §2 negative prompt: ``"X X ... X ."`` (no class name)."""
    return " ".join([CTX_TOKEN] * n_ctx) + " ."


@functools.lru_cache(maxsize=8)
def model_tokenizer(name: str):
    """open_clip's tokenizer of model ``name``, built once per process (reading its BPE vocabulary takes
    ~0.1 s: paid once, not per prompt encoder)."""
    return open_clip.get_tokenizer(name)


def tokenize(model, texts, *, names=None) -> torch.Tensor:
    """Tokenize with the model's own open_clip tokenizer -> ``[N, context_length]`` int64.

    Unlike the tokenizer, never truncates silently: a text longer than the text encoder's context is
    an :class:`IIMError` naming the text (or ``names[i]``, e.g. the class name that made it long).
    """
    tokenizer = model_tokenizer(_model_name(model))
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
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    if mask is None or mask.shape != (n, n) or not torch.equal(torch.isinf(mask).cpu(), causal):
        raise IIMError(f"{name}'s text attention mask is not causal; the prompt encoder needs CLIP's "
                       f"causal text transformer")


@dataclass
class PackingPlan:
    """Where every token of every prompt lies in the packed forward pass (see :func:`packing_plan`)."""
    prompts: list            # per prompt (classes, then negatives): its packed rows, in token order
    n_tokens: int            # packed rows in all
    embed_order: list | None # class-specific: the permutation that makes each prompt's rows contiguous
    full_rows: list          # attention segment 1: rows attending causally over their own tokens
    shared_rows: list        # segment 2: class suffix rows, which also see the shared prefix
    out_index: list          # packed row -> its attention output in the segments' flattened outputs
    eot: list                # per prompt: the packed row of its EOT token
    row_doc: list            # attention="flex": each (padded) row's prompt id (-1: pad, C + n_neg: shared prefix)
    row_pos: list            # ... its position in that prompt
    row_reads_prefix: list   # ... whether it also reads the shared prefix


def packing_plan(id_len, neg_len: int, *, n_ctx: int, n_neg: int, class_specific: bool,
                 flex_block: int = FLEX_BLOCK) -> PackingPlan:
    """The packing of C class prompts (suffix lengths ``id_len[c]``: class name, ".", EOT) and ``n_neg``
    negative prompts (suffix length ``neg_len``) after a head of SOT + ``n_ctx`` context tokens.

    Packed rows: the heads (once if the context is shared, per class otherwise), every class suffix in
    class order, then the negative prompts, each whole (class-specific: reordered prompt by prompt,
    ``embed_order``). A pure function of the lengths: no model, no tensors.
    """
    C, prefix = len(id_len), 1 + n_ctx
    n_heads = C if class_specific else 1
    heads = [list(range(h * prefix, (h + 1) * prefix)) for h in range(n_heads)]
    start, prompts = n_heads * prefix, []
    for c in range(C):
        prompts.append((heads[c] if class_specific else heads[0]) + list(range(start, start + id_len[c])))
        start += id_len[c]
    for _ in range(n_neg):
        prompts.append(list(range(start, start + prefix + neg_len)))
        start += prefix + neg_len
    order = None
    if class_specific:      # no row is shared: reorder so that each prompt's rows are contiguous
        order = [t for row in prompts for t in row]              # (block-sparse attention reads
        new_row = {t: i for i, t in enumerate(order)}            # fewer key blocks)
        prompts = [[new_row[t] for t in row] for row in prompts]
    # Attention segments: "full" rows attend causally over their own tokens (the shared prefix,
    # class-specific prompts, negatives); shared-context class rows query their suffix only, with the
    # prefix's keys in front.
    if class_specific:
        full_rows, shared_rows = prompts, []
    else:
        full_rows, shared_rows = heads + prompts[C:], [p[prefix:] for p in prompts[:C]]
    out_index, base = [0] * start, 0
    for rows in (full_rows, shared_rows):
        if not rows:
            continue
        n_queries = max(len(r) for r in rows)        # each segment pads its rows to its longest
        for i, row in enumerate(rows):
            for j, t in enumerate(row):
                out_index[t] = base + i * n_queries + j
        base += len(rows) * n_queries
    # attention="flex": each row's prompt and position. A row of the shared prefix belongs to the
    # prefix's own prompt (id C + n_neg) and is read by every class suffix row. Padded to whole attention
    # blocks: a pad row (prompt -1) sees only pads, a real row never a pad.
    padded = -(-start // flex_block) * flex_block
    doc, pos, reads_prefix = [-1] * padded, [0] * padded, [False] * padded
    for i, row in enumerate(prompts):
        for j, t in enumerate(row):
            pos[t] = j
            doc[t] = C + n_neg if (not class_specific and i < C and j < prefix) else i
            reads_prefix[t] = not class_specific and i < C and j >= prefix
    return PackingPlan(prompts, start, order, full_rows, shared_rows, out_index, [row[-1] for row in prompts],
                       doc, pos, reads_prefix)


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
        if attention == "flex" and not _has_flex_attention():
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
        self.segments = [_Segment(plan.full_rows, 0, device)]
        if plan.shared_rows:
            self.segments.append(_Segment(plan.shared_rows, prefix, device))
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
            return _Rows.apply(o, self.eot_index) if last else o
        return self._attend_segments(qkv, heads, last, copies)

    def visible(self, query_rows: torch.Tensor, key_rows: torch.Tensor) -> torch.Tensor:
        """Whether packed row ``key_rows`` is visible to ``query_rows`` (broadcast): same prompt and not
        later in it, or a shared-prefix row for a class-suffix query. The mask of attention="flex"."""
        doc, pos, prefix_doc = self.row_doc, self.row_pos, len(self.classnames) + self.n_neg
        same = doc[query_rows] == doc[key_rows]
        shared = self.row_reads_prefix[query_rows] & (doc[key_rows] == prefix_doc)
        return (same | shared) & (pos[key_rows] <= pos[query_rows])

    def block_mask(self):
        """The FlexAttention block mask of :meth:`visible` over the packed rows, built once, one block
        row at a time (torch's ``create_block_mask`` would hold T x T int64 temporaries: ~6 GB per
        array at ImageNet-1k with class-specific contexts)."""
        if self._block_mask is not None and self._block_mask.kv_indices.device == self.row_doc.device:
            return self._block_mask
        from torch.nn.attention.flex_attention import BlockMask
        some, every = self._block_visibility(FLEX_BLOCK)

        def listed(blocks):   # per query block: how many key blocks, and which (listed first)
            order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
            return blocks.sum(-1).int()[None, None], order.int()[None, None]

        self._block_mask = BlockMask.from_kv_blocks(
            *listed(some & ~every), *listed(every), BLOCK_SIZE=FLEX_BLOCK,
            mask_mod=lambda b, h, q, kv: self.visible(q, kv), seq_lengths=(self.n_tokens, self.n_tokens))
        return self._block_mask

    def _block_visibility(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(some, every)`` ``[n, n]`` bool over blocks of ``block`` packed rows (padded): whether query
        block i sees some / every row of key block j. Computed one query block at a time."""
        rows = torch.arange(len(self.row_doc), device=self.row_doc.device)
        n = len(rows) // block
        some = torch.zeros(n, n, dtype=torch.bool, device=rows.device)
        every = torch.zeros_like(some)
        for b, queries in enumerate(rows.view(n, block)):
            seen = self.visible(queries[:, None], rows[None]).view(block, n, block)
            some[b], every[b] = seen.any(-1).any(0), seen.all(-1).all(0)
        return some, every

    def _block_plan(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """attention="blocks": ``(kv_blocks [n, K], bias [n, block, keys])``. Query block i reads key
        blocks ``kv_blocks[i]`` (gathered; a block that reads fewer repeats one, masked out). With a
        shared context, block 0 (the shared prefix, read by every class suffix) comes first for every
        query block, by ``expand``: its backward is one sum, not hundreds of atomic adds into the same
        rows. ``bias`` is 0 where a query row sees a key row, -inf elsewhere; every row sees itself."""
        some, _ = self._block_visibility(block)
        first = not self.class_specific
        if first:
            some = some.clone()
            some[:, 0] = False
        n, dev = len(some), some.device
        counts = some.sum(-1)
        K = max(int(counts.max()), 1)
        order = torch.argsort(some.to(torch.int8), dim=-1, descending=True, stable=True)[:, :K]
        used = torch.arange(K, device=dev)[None] < counts[:, None]                        # [n, K]
        kv_blocks = torch.where(used, order, order[:, :1])
        keys = (kv_blocks[:, :, None] * block + torch.arange(block, device=dev)).view(n, K * block)
        used = used.repeat_interleave(block, 1)
        if first:
            keys = torch.cat([torch.arange(block, device=dev).expand(n, block), keys], dim=1)
            used = torch.cat([torch.ones(n, block, dtype=torch.bool, device=dev), used], dim=1)
        queries = torch.arange(n * block, device=dev).view(n, block)
        seen = self.visible(queries[:, :, None], keys[:, None, :]) & used[:, None]
        return kv_blocks, torch.zeros(seen.shape, device=dev).masked_fill_(~seen, float("-inf"))

    def _attend_blocks(self, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention of every packed row by blocks -> ``[T, W]``: each block of query rows reads only
        the key blocks it sees (see :meth:`_block_plan`), all blocks in one batched SDPA call."""
        T = qkv.shape[0]
        (n, K), B = self.kv_blocks.shape, ROW_BLOCK
        blocks = F.pad(qkv, (0, 0, 0, n * B - T)).view(n, B, 3, heads, -1)
        kv = _Rows.apply(blocks.view(n, -1), self.kv_blocks.flatten()).view(n, K * B, 3, heads, -1)
        if not self.class_specific:                  # block 0 (the shared prefix) first, by expand
            kv = torch.cat([blocks[:1].expand(n, -1, -1, -1, -1), kv], dim=1)
        q, (_, k, v) = blocks.unbind(2)[0], kv.unbind(2)                 # [n, rows, heads, dim]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=self.block_attn_bias.to(q.dtype)[:, None])
        return o.transpose(1, 2).reshape(n * B, -1)[:T]

    def _attend_flex(self, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention of every packed row in one FlexAttention call -> ``[T, W]``."""
        T = qkv.shape[0]
        q, k, v = qkv.view(T, 3, heads, -1).permute(1, 2, 0, 3).unsqueeze(1)   # each [1, heads, T, dim]
        o = _flex_attention(q.device)(q, k, v, block_mask=self.block_mask())
        return o[0].transpose(0, 1).reshape(T, -1)

    def _attend_segments(self, qkv: torch.Tensor, heads: int, last: bool, copies: int = 1) -> torch.Tensor:
        """Attention per right-padded segment, outputs back in packed order (EOT rows only if ``last``);
        ``copies`` encoders' rows (same plan, back to back) attend as one batch."""
        outs = []
        seg_index, out_index, eot_out_index = self._copies_index(copies)
        for seg, index in zip(self.segments, seg_index):
            n = seg.n * copies
            qkv_seg = _Rows.apply(qkv, index).view(n, seg.n_queries, 3, heads, -1)
            q, k, v = qkv_seg.permute(2, 0, 3, 1, 4)                           # [n, heads, rows, dim]
            if seg.n_prefix:   # every row's keys/values start with its copy's shared prefix; expand's
                # backward sums the prefix gradient over the classes (a reduction, no atomics)
                pre = qkv.view(copies, -1, qkv.shape[-1])[:, :seg.n_prefix]
                pre = pre.reshape(copies, 1, seg.n_prefix, 3, heads, -1).permute(3, 0, 1, 4, 2, 5)
                pre = pre.expand(-1, -1, seg.n, -1, -1, -1).reshape(3, n, heads, seg.n_prefix, -1)
                k = torch.cat([pre[1], k], dim=2)
                v = torch.cat([pre[2], v], dim=2)
            if self.attention == "bmm":
                o = _bmm_attention(q, k, v, seg.bias.to(q.dtype))
            else:
                with _sdpa_backend(self.attention):
                    o = F.scaled_dot_product_attention(q, k, v, attn_mask=seg.mask, is_causal=seg.mask is None)
            outs.append(o.transpose(1, 2).reshape(n * seg.n_queries, -1))
        o = torch.cat(outs) if len(outs) > 1 else outs[0]
        # in the last layer only the EOT rows feed out_proj, the MLP, ln_final and the projection
        return _Rows.apply(o, eot_out_index if last else out_index)

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


def encoder_layer(block, x: torch.Tensor, attend, eot_index: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock on packed rows ``x [T, W]``: ln_1, the qkv projection,
    ``attend(qkv) -> [T', W]`` (T' = T, or the EOT rows ``eot_index`` only in the last layer), out_proj,
    ln_2 and the MLP, every token-wise part as one call on all rows."""
    attn = block.attn
    o = attend(F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias))        # qkv: [T, 3W]
    if eot_index is not None:
        x = _Rows.apply(x, eot_index)
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
        parts = _project(model, x).split(sizes)
    else:
        parts = [_project(model, r) if e.projection is None else r @ e.projection for e, r in zip(encs, x.split(sizes))]
    feats = [_float32_at_least(f) for f in parts]
    out = [None] * len(encs)
    for i, e, f in zip(order, encs, feats):
        out[i] = (f[:len(e.classnames)], f[len(e.classnames):])
    return out


def _cat(xs: list) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)


_FLEX = {}


def _has_flex_attention() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:
        return False
    return "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters


def _flex_attention(device: torch.device):
    """torch's flex_attention: compiled on CUDA (fused block-sparse kernels, compiled once per shape)
    or inside an already compiled encoder; eager elsewhere (an unfused reference that materialises
    the scores: for checks only)."""
    from torch.nn.attention.flex_attention import flex_attention
    if device.type != "cuda" and torch.is_grad_enabled():
        raise IIMError(f"attention='flex' trains on CUDA only (torch's FlexAttention has no {device.type} "
                       f"backward); use attention='auto' on this device")
    if torch.compiler.is_compiling():
        return flex_attention
    if device.type not in _FLEX:
        if device.type == "cuda":   # one compile per token count (an encoder has one: fine in training;
            # a process building encoders of many sizes passes torch's recompile limit: see test_cuda.py)
            _FLEX["cuda"] = torch.compile(flex_attention, dynamic=False)
        else:
            def eager(*args, **kwargs):
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
                    return flex_attention(*args, **kwargs)
            _FLEX[device.type] = eager
    return _FLEX[device.type]


def _bmm_attention(q, k, v, bias):
    """softmax(q k^T / sqrt(d) + bias) v with plain batched matmuls; ``bias`` [queries, keys] is 0 / -inf."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


def _sdpa_backend(name: str):
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "flash": SDPBackend.FLASH_ATTENTION}[name])


class _Segment:
    """Prompts batched for attention: row i gathers the packed rows ``rows[i]`` (right-padded with its
    last row) as queries, keys and values; with ``n_prefix``, the shared prefix (packed rows
    ``0..n_prefix-1``) comes before every row's keys and values, and the queries see it whole, then
    their own tokens causally."""

    def __init__(self, rows, n_prefix: int, device):
        self.n, self.n_prefix = len(rows), n_prefix
        self.n_queries = max(len(r) for r in rows)
        self.n_keys = n_prefix + self.n_queries
        self.index = torch.tensor([r + r[-1:] * (self.n_queries - len(r)) for r in rows], device=device).flatten()
        self.mask = None                          # None: causal attention over the row
        # the same visibility as an additive bias, for attention="bmm": query i sees keys 0..n_prefix+i
        visible = torch.ones(self.n_queries, self.n_keys, dtype=torch.bool, device=device).tril(n_prefix)
        self.bias = torch.zeros(visible.shape, device=device).masked_fill_(~visible, float("-inf"))
        if n_prefix:
            self.mask = (causal_lower_right(self.n_queries, self.n_keys) if causal_lower_right else
                         torch.ones(self.n_queries, self.n_keys, dtype=torch.bool, device=device).tril(n_prefix))


class _Rows(torch.autograd.Function):
    """``x[index]`` along dim 0. The backward sums the gradients of repeated rows (the shared prefix is
    read by every class) with ``index_add_``, several times faster than advanced indexing's
    ``index_put_`` on CPU, and in float32 under half/bf16 autocast, as a reduction would."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        low = grad.dtype in (torch.float16, torch.bfloat16)
        acc = grad.new_zeros((ctx.n_rows,) + grad.shape[1:], dtype=torch.float32 if low else grad.dtype)
        return acc.index_add_(0, index, grad.to(acc.dtype)).to(grad.dtype), None


def encode_prompts_reference(model, classnames, ctx: torch.Tensor, neg_ctx: torch.Tensor | None = None):
    """The straightforward full-length path, for tests and benchmarks: every prompt tokenized to the
    model's 77 tokens, context rows substituted into the token embeddings, then open_clip's own
    ``transformer(x, attn_mask)``, ``ln_final``, EOT (argmax) pooling and ``text_projection``.

    ``ctx``: ``[n_ctx, W]`` shared or ``[C, n_ctx, W]`` class-specific; ``neg_ctx``: ``[n_neg, n_ctx, W]``.
    Returns ``(id_features [C, D], neg_features [n_neg, D])`` like :class:`PromptEncoder`.
    """
    n_ctx = ctx.shape[-2]
    tokenizer = model_tokenizer(_model_name(model))
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
