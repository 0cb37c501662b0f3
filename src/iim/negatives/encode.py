"""Fixed prompt texts -> exact CLIP text features, packed: every text cut at its EOT token and the prefix
its batch shares (SOT + ``"a photo of a"``) run once per layer, instead of 77 padded tokens per text.

    feats = encode_texts(model, [noun_prompt(w) for w in nouns])      # [N, D] float32, unnormalised

The same two facts as :class:`iim.text.PromptEncoder` make it exact: CLIP's text transformer is causal,
so nothing after a text's EOT changes its EOT output, and the first ``P`` positions that every text of a
batch shares have the same activations in each of them. Texts are sorted by length and taken in
batches (pass the texts of one template per call: their template's prefix is then shared); within a batch the token-wise work (ln_1, qkv, out_proj, the MLP:
:func:`iim.text.encoder_layer`) runs on the packed real tokens only (the shared prefix once); attention
gathers each text's own tokens into a batch right-padded to the batch's longest suffix, behind the
prefix's keys and values (a causal mask hides pads from every real query).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text import check_text_tower, encoder_layer, tokenize
from ..text.tower import project

NOUN_PROMPT = "a photo of a {}."       # SPEC §10 (the ID prompt of SPEC §2)
ADJ_PROMPT = "This is a {} photo"      # SPEC §10


def noun_prompt(word: str) -> str:
    return NOUN_PROMPT.format(word)


def adj_prompt(word: str) -> str:
    return ADJ_PROMPT.format(word)


@torch.no_grad()
def encode_texts(model, texts, *, batch_size: int = 2048) -> torch.Tensor:
    """CLIP text features of ``texts`` (``model.encode_text`` of their tokens, to float rounding) ->
    float32 ``[N, D]``, unnormalised, in the order of ``texts``. Exact for any texts; fastest for texts of
    one template (a call per template), whose common prefix then runs once per batch. A text longer than the model's context is
    a one-line :class:`~iim.errors.IIMError`."""
    check_text_tower(model)
    device = model.positional_embedding.device
    tokens = tokenize(model, list(texts))
    lengths = tokens.argmax(-1) + 1                                   # up to and including EOT
    order = torch.sort(lengths, stable=True).indices                 # little padding within a batch
    dim = project(model, model.positional_embedding[:1]).shape[-1]
    out = torch.empty(len(texts), dim)
    for i in range(0, len(texts), batch_size):
        idx = order[i:i + batch_size]
        out[idx] = _encode_batch(model, tokens[idx].to(device), lengths[idx].to(device)).float().cpu()
    return out


def shared_prefix(tokens: torch.Tensor, lengths: torch.Tensor) -> int:
    """How many leading tokens all rows share, leaving every row at least its EOT of its own."""
    same = (tokens == tokens[:1]).all(0).long()
    return int(min(same.cumprod(0).sum(), lengths.min() - 1))


def _encode_batch(model, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    B, P = len(tokens), shared_prefix(tokens, lengths)
    suffix = lengths - P                                              # [B], each >= 1
    L = int(suffix.max())
    valid = torch.arange(L, device=tokens.device) < suffix[:, None]   # [B, L] real suffix tokens
    packed = valid.flatten().nonzero().squeeze(1)                     # their slots in the [B * L] layout
    emb = model.token_embedding(tokens[:, :P + L]) + model.positional_embedding[:P + L]
    x = torch.cat([emb[0, :P], emb[:, P:].reshape(B * L, -1)[packed]])   # [P + sum suffix, W]
    x = x.to(model.transformer.get_cast_dtype())
    last_slot = torch.arange(B, device=tokens.device) * L + suffix - 1    # each text's EOT slot
    keep = torch.ones(L, P + L, dtype=torch.bool, device=tokens.device).tril(P)   # prefix + causal

    def attend(qkv, heads, last):
        W = qkv.shape[-1] // 3
        split = lambda t, n: t.reshape(n, -1, heads, W // heads).transpose(1, 2)  # noqa: E731 -> [n, H, len, hd]
        pre, suf = qkv[:P], qkv.new_zeros(B * L, 3 * W)
        suf[packed] = qkv[P:]
        pq, pk, pv = (split(t, 1) for t in pre.chunk(3, -1))
        sq, sk, sv = (split(t, B) for t in suf.chunk(3, -1))
        k = torch.cat([pk.expand(B, -1, -1, -1), sk], 2)
        v = torch.cat([pv.expand(B, -1, -1, -1), sv], 2)
        o = F.scaled_dot_product_attention(sq, k, v, attn_mask=keep).transpose(1, 2).reshape(B * L, W)
        if last:                                                      # only the EOT rows go on
            return o[last_slot]
        po = F.scaled_dot_product_attention(pq, pk, pv, is_causal=True).transpose(1, 2).reshape(P, W)
        return torch.cat([po, o[packed]])

    blocks = model.transformer.resblocks
    eot_rows = P + torch.cumsum(suffix, 0) - 1                        # packed row of each EOT token
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        x = encoder_layer(block, x, lambda qkv, last=last, h=block.attn.num_heads: attend(qkv, h, last),
                          eot_rows if last else None)
    return project(model, model.ln_final(x))
