"""The block-sparse layouts of the prompt encoder (``attention="flex"`` and ``"blocks"``): attention
over the packed rows themselves under one visibility rule (own prompt, causal; class suffixes also see
the shared prefix), no padding, no gathers but the last layer's EOT rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import ROW_BLOCK, Rows, flex_attention_for
from .plan import FLEX_BLOCK


class BlockSparseAttention:
    """The :class:`~iim.text.encoder.PromptEncoder` methods of its block-sparse layouts. They read the
    encoder's packing buffers (``row_doc``, ``row_pos``, ``row_reads_prefix``; ``kv_blocks`` and
    ``block_attn_bias`` for ``"blocks"``), set in its ``__init__``."""

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
        kv = Rows.apply(blocks.view(n, -1), self.kv_blocks.flatten()).view(n, K * B, 3, heads, -1)
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
        o = flex_attention_for(q.device)(q, k, v, block_mask=self.block_mask())
        return o[0].transpose(0, 1).reshape(T, -1)
