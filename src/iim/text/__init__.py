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

One job per file:

    prompts.py       the prompt texts, the model's tokenizer, tokenisation that never truncates
    tower.py         the frozen text tower: its check, its projection, the global prototypes
    plan.py          where every token of every prompt lies in the packed pass (PackingPlan)
    attention.py     attention backends, padded segments, the summing row gather, FlexAttention
    encoder.py       PromptEncoder: the contexts, packed embeddings, padded-segment attention
    block_sparse.py  its attention="flex" / "blocks" layouts (visibility rule, block mask, block plan)
    packed.py        the packed forward pass of one or several encoders (encode_packed)
    reference.py     the full-length reference path (encode_prompts_reference)
"""
from .attention import ROW_BLOCK, SDPA_BACKENDS
from .encoder import CTX_INIT_STD, PromptEncoder
from .packed import encode_packed, encoder_layer
from .plan import FLEX_BLOCK, PackingPlan, packing_plan
from .prompts import CTX_TOKEN, GLOBAL_TEMPLATE, id_prompt, model_tokenizer, neg_prompt, tokenize
from .reference import encode_prompts_reference
from .tower import check_text_tower, global_prototypes

__all__ = ["ROW_BLOCK", "SDPA_BACKENDS", "CTX_INIT_STD", "PromptEncoder", "encode_packed", "encoder_layer",
           "FLEX_BLOCK", "PackingPlan", "packing_plan", "CTX_TOKEN", "GLOBAL_TEMPLATE", "id_prompt",
           "model_tokenizer", "neg_prompt", "tokenize", "encode_prompts_reference", "check_text_tower",
           "global_prototypes"]
