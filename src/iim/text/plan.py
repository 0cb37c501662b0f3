"""Where every token of every prompt lies in the packed forward pass: a pure function of the prompts'
lengths (no model, no tensors)."""
from __future__ import annotations

from dataclasses import dataclass

FLEX_BLOCK = 128      # FlexAttention's block size (queries and keys)


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
