"""The prompt encoder gives open_clip's full-length text features, forward and gradients (SPEC §2)."""
import open_clip
import pytest
import torch

from iim.errors import IIMError
from iim.models import create_model
from iim.text import PromptEncoder, encode_prompts_reference, global_prototypes, id_prompt, neg_prompt

# varied token counts: 1-token names up to a long multi-word one
NAMES = ["cat", "goldfish", "great white shark", "tench", "American black bear with a very long name"]


def grads(feats, params, seed=0):
    """Gradients of a random linear function of the features (a random upstream gradient)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype).to(f.device)).sum() for f in feats if f.numel())
    return torch.autograd.grad(loss, params)


def assert_matches_reference(model, enc, atol):
    feats = enc()
    ref = encode_prompts_reference(model, enc.classnames, enc.ctx, enc.neg_ctx)
    assert feats[0].shape == ref[0].shape and feats[1].shape == ref[1].shape
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, atol=atol, rtol=0)
    params = [enc.ctx] + ([enc.neg_ctx] if enc.n_neg else [])
    for g, r in zip(grads(feats, params), grads(ref, params)):
        assert r.abs().max() > 0
        # gradients wrt contexts are O(100) (ln_1 rescales the N(0, 0.02) contexts): compare at their scale
        torch.testing.assert_close(g, r, atol=atol * max(1.0, r.abs().max().item()), rtol=0)


def test_reference_is_open_clip_encode_text(tiny_model):
    """Anchor: with the real "X" embeddings as context, the reference path IS model.encode_text."""
    model, _ = tiny_model
    tokenizer = open_clip.get_tokenizer("iim-test-tiny")
    x = model.token_embedding(tokenizer(["X"]))[0, 1]
    ctx = x.expand(4, -1)
    ref_id, ref_neg = encode_prompts_reference(model, NAMES, ctx, ctx.expand(2, -1, -1))
    expected_id = model.encode_text(tokenizer([id_prompt(c, 4) for c in NAMES]))
    expected_neg = model.encode_text(tokenizer([neg_prompt(4)] * 2))
    torch.testing.assert_close(ref_id, expected_id, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_neg, expected_neg, atol=1e-5, rtol=0)
    assert id_prompt("great white shark", 3) == "X X X great white shark."
    assert neg_prompt(3) == "X X X ."


@pytest.mark.parametrize("attention", ["auto", "bmm", "blocks"])
@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("n_neg", [0, 3])
def test_tiny_matches_reference(tiny_model, class_specific, n_neg, attention):
    model, _ = tiny_model
    torch.manual_seed(0)
    enc = PromptEncoder(model, NAMES, n_ctx=16, n_neg=n_neg, class_specific=class_specific, attention=attention)
    assert enc.ctx.shape == ((5, 16, 64) if class_specific else (16, 64))
    assert enc.neg_ctx.shape == (n_neg, 16, 64)
    assert_matches_reference(model, enc, atol=1e-4)


def test_tiny_exact_in_float64(tiny_model):
    """In float64 both paths agree to rounding: the shortcut is exact, not an approximation."""
    model, _ = tiny_model
    model64 = create_model("iim-test-tiny", "none")[0].double()
    model64.iim_model_name = "iim-test-tiny"
    for class_specific in (False, True):
        for attention in ("auto", "bmm", "blocks"):
            torch.manual_seed(1)
            enc = PromptEncoder(model64, NAMES, n_ctx=4, n_neg=2, class_specific=class_specific,
                                attention=attention).double()
            assert_matches_reference(model64, enc, atol=1e-10)


def test_vit_b16_matches_reference():
    model, _ = create_model("ViT-B-16", "none")
    for class_specific, attention in ((False, "auto"), (True, "auto"), (False, "blocks")):
        torch.manual_seed(0)
        enc = PromptEncoder(model, NAMES, n_neg=3, class_specific=class_specific, attention=attention)
        assert_matches_reference(model, enc, atol=1e-4)


@pytest.mark.parametrize("class_specific", [False, True])
def test_blocks_plan_is_exactly_the_visible_keys(tiny_model, class_specific):
    """attention="blocks": the query x key visibility rebuilt from the plan (key blocks read, and
    block 0 first for all with a shared context; the bias) is exactly ``visible`` over all rows."""
    model, _ = tiny_model
    names = open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES[:60]
    enc = PromptEncoder(model, names, n_ctx=4, n_neg=20, class_specific=class_specific, attention="blocks")
    rows = torch.arange(len(enc.row_doc))
    dense = enc.visible(rows[:, None], rows[None])                                 # [R, R]
    n, K = enc.kv_blocks.shape
    B = len(rows) // n
    assert n > 4 and K + 1 < n                                                      # several blocks, sparse
    blocks = torch.cat([torch.zeros(n, 1, dtype=torch.long), enc.kv_blocks], 1) if not class_specific \
        else enc.kv_blocks
    keys = (blocks[:, :, None] * B + torch.arange(B)).view(n, -1)
    rebuilt = torch.zeros_like(dense, dtype=torch.int)
    seen = enc.block_attn_bias == 0                                                 # [n, B, keys]
    for b in range(n):
        rebuilt[b * B:(b + 1) * B].index_add_(1, keys[b], seen[b].int())
    assert torch.equal(rebuilt, dense.int())    # every visible key once, nothing else


def bf16_pairs(model, n_classes, n_neg, attention):
    """``(feature pairs, gradient pairs)`` (encoder, reference) under bf16 autocast on the model's
    device, for the first ``n_classes`` ImageNet class names reading the shared prefix."""
    names = open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES[:n_classes]
    torch.manual_seed(0)
    enc = PromptEncoder(model, names, n_neg=n_neg, attention=attention)
    with torch.autocast(enc.ctx.device.type, dtype=torch.bfloat16):
        feats = enc()
        ref = encode_prompts_reference(model, names, enc.ctx, enc.neg_ctx)
    params = [enc.ctx, enc.neg_ctx]
    return list(zip(feats, ref)), list(zip(grads(feats, params), grads(ref, params)))


@pytest.mark.parametrize("attention", ["auto", "blocks"])
def test_bf16_autocast_stays_close(tiny_model, attention):
    """Under bf16 autocast (the GPU training setting) both paths agree to bf16 precision, with 200
    classes reading the shared prefix."""
    feat_pairs, grad_pairs = bf16_pairs(tiny_model[0], 200, 5, attention)
    for f, r in feat_pairs:
        assert f.dtype == torch.float32
        torch.testing.assert_close(f, r, atol=0.05, rtol=0)
    for g, r in grad_pairs:
        assert (g - r).norm() / r.norm() < 0.02


def test_plain_boolean_mask_path(tiny_model, monkeypatch):
    """Without torch's lower-right causal bias (torch < 2.3) the explicit boolean mask gives the same."""
    import iim.text
    monkeypatch.setattr(iim.text.attention, "causal_lower_right", None)
    model, _ = tiny_model
    torch.manual_seed(0)
    enc = PromptEncoder(model, NAMES, n_neg=2)
    assert enc.segments[1].mask.dtype == torch.bool
    assert_matches_reference(model, enc, atol=1e-4)


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("n_neg", [0, 3])
def test_flex_matches_reference_forward(tiny_model, class_specific, n_neg):
    """attention="flex" (one masked call over the packed rows) gives the same features. torch has no
    FlexAttention backward on CPU: its gradients are checked on CUDA (tests/test_cuda.py)."""
    model, _ = tiny_model
    torch.manual_seed(0)
    enc = PromptEncoder(model, NAMES, n_neg=n_neg, class_specific=class_specific, attention="flex")
    with torch.no_grad():
        feats = enc()
        ref = encode_prompts_reference(model, NAMES, enc.ctx, enc.neg_ctx)
    for f, r in zip(feats, ref):
        assert f.shape == r.shape
        torch.testing.assert_close(f, r, atol=1e-4, rtol=0)
    with pytest.raises(IIMError, match="CUDA only"):
        enc()


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("n_neg", [0, 3])
def test_flex_layout_gives_exact_gradients(tiny_model, monkeypatch, class_specific, n_neg):
    """The flex formulation (attention over the packed rows under the mask ``visible``, EOT rows cut in
    the last layer) has the reference's features AND context gradients. CPU torch has no FlexAttention
    backward, so the fused kernel is swapped for dense masked attention under the same mask; the
    kernel itself is torch's (its CUDA gradients: tests/test_cuda.py)."""
    import torch.nn.functional as F
    import iim.text
    model, _ = tiny_model
    torch.manual_seed(0)
    enc = PromptEncoder(model, NAMES, n_neg=n_neg, class_specific=class_specific, attention="flex")
    rows = torch.arange(enc.n_tokens)
    mask = enc.visible(rows[:, None], rows[None])

    def dense(q, k, v, block_mask):
        assert block_mask is enc.block_mask()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    monkeypatch.setattr(iim.text.block_sparse, "flex_attention_for", lambda device: dense)
    assert_matches_reference(model, enc, atol=1e-4)


@pytest.mark.parametrize("class_specific", [False, True])
def test_flex_block_mask_is_torchs(tiny_model, class_specific):
    """The block mask built one block row at a time equals torch's create_block_mask of the same rule,
    over several 128-row blocks; and the rule is: same prompt, not later in it (+ the shared prefix)."""
    from torch.nn.attention.flex_attention import create_block_mask
    model, _ = tiny_model
    names = open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES[:60]
    enc = PromptEncoder(model, names, n_ctx=4, n_neg=20, class_specific=class_specific, attention="flex")
    T = enc.n_tokens
    assert T > 3 * 128
    ref = create_block_mask(lambda b, h, q, kv: enc.visible(q, kv), None, None, T, T, device="cpu")
    ours = enc.block_mask()
    assert torch.equal(ours.to_dense(), ref.to_dense())
    for count, index in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        n = getattr(ref, count)
        assert torch.equal(getattr(ours, count), n)     # partial and full block lists alike
        for row, k in enumerate(n[0, 0].tolist()):
            assert set(getattr(ours, index)[0, 0, row, :k].tolist()) == set(getattr(ref, index)[0, 0, row, :k].tolist())
    # the rule, checked on the packed rows: each negative prompt (19 rows at the end) sees itself
    # causally; a class suffix row sees the shared prefix (rows 0..4) when the context is shared
    rows = torch.arange(T)
    seen = enc.visible(rows[:, None], rows[None])
    neg = seen[T - 7:, T - 7:]                       # the last negative prompt: SOT, 4 ctx, ".", EOT
    assert torch.equal(neg, torch.ones(7, 7, dtype=torch.bool).tril())
    assert seen[T - 7:, :T - 7].sum() == 0
    eot_1 = enc.eot_index[1]                         # class 1's EOT row: the shared head (rows 0..4),
    own = enc.eot_index[0] + 1                       # or its own, packed right after class 0's prompt
    assert seen[eot_1, :5].all() == (not class_specific)
    assert seen[eot_1, own:own + 5].all() == class_specific


def test_checkpointing_gives_the_same_result(tiny_model):
    model, _ = tiny_model
    torch.manual_seed(0)
    enc = PromptEncoder(model, NAMES, n_neg=3)
    plain = enc()
    g_plain = grads(plain, [enc.ctx, enc.neg_ctx])
    enc.checkpoint = True
    ckpt = enc()
    for a, b in zip(plain + g_plain, ckpt + grads(ckpt, [enc.ctx, enc.neg_ctx])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_only_contexts_learn(tiny_model):
    model, _ = tiny_model
    enc = PromptEncoder(model, NAMES, n_neg=3)
    assert {n for n, _ in enc.named_parameters()} == {"ctx", "neg_ctx"}
    assert set(enc.state_dict()) == {"ctx", "neg_ctx"}
    id_feats, neg_feats = enc()
    (id_feats.sum() + neg_feats.sum()).backward()
    assert enc.ctx.grad is not None and enc.neg_ctx.grad is not None
    assert all(p.grad is None for p in model.parameters())
    assert id_feats.dtype == torch.float32 and id_feats.shape == (5, 32) and neg_feats.shape == (3, 32)


def test_init_and_token_count(tiny_model):
    model, _ = tiny_model
    torch.manual_seed(0)
    enc = PromptEncoder(model, ["cat"] * 200, n_neg=300)
    assert abs(enc.neg_ctx.std().item() - 0.02) < 1e-3 and abs(enc.neg_ctx.mean().item()) < 1e-3
    # SOT + 16 ctx once, then "cat", ".", EOT per class; 16 ctx + SOT + ".", EOT per negative
    assert enc.n_tokens == 17 + 200 * 3 + 300 * 19


def test_too_long_class_name_names_the_class(tiny_model):
    model, _ = tiny_model
    long_name = " ".join(["word"] * 70)
    with pytest.raises(IIMError, match="class name 'word word"):
        PromptEncoder(model, ["cat", long_name], n_neg=0)
    with pytest.raises(IIMError, match="class name 'word word"):
        global_prototypes(model, ["cat", " ".join(["word"] * 80)])
    PromptEncoder(model, [" ".join(["word"] * 58)], n_neg=0)   # 1 + 16 + 58 + 2 = 77 tokens: fits


def test_refuses_non_clip_text_towers(tiny_model):
    model, _ = tiny_model

    class NoTextTower(torch.nn.Module):
        pass

    with pytest.raises(IIMError, match="no standard open_clip CLIP text tower"):
        PromptEncoder(NoTextTower(), NAMES)
    odd = create_model("iim-test-tiny", "none")[0]
    odd.text_pool_type = "last"
    with pytest.raises(IIMError, match="EOT"):
        PromptEncoder(odd, NAMES)


@pytest.mark.parametrize("class_specific", [False, True])
def test_packing_plan_alone(class_specific):
    """The packing plan is a pure function of the lengths: every prompt is SOT + context + its own
    suffix, each packed row is used once (a shared head by every class), and EOT is each prompt's last row."""
    from iim.text import packing_plan
    id_len, neg_len, n_ctx, n_neg = [3, 5, 2], 2, 4, 2
    plan = packing_plan(id_len, neg_len, n_ctx=n_ctx, n_neg=n_neg, class_specific=class_specific)
    prefix = 1 + n_ctx
    lengths = [prefix + n for n in id_len] + [prefix + neg_len] * n_neg
    assert [len(p) for p in plan.prompts] == lengths
    heads = 3 if class_specific else 1
    assert plan.n_tokens == heads * prefix + sum(id_len) + n_neg * (prefix + neg_len)
    rows = [t for p in plan.prompts for t in (p if class_specific else p)]
    if class_specific:   # contiguous prompts, each row once
        assert rows == list(range(plan.n_tokens)) and plan.shared_rows == []
        assert sorted(plan.embed_order) == list(range(plan.n_tokens))
    else:                # the head is shared by the three class prompts, nothing else is
        assert all(p[:prefix] == list(range(prefix)) for p in plan.prompts[:3])
        assert sorted(set(rows)) == list(range(plan.n_tokens)) and plan.embed_order is None
        assert [len(r) for r in plan.shared_rows] == id_len
    assert plan.eot == [p[-1] for p in plan.prompts]
    assert len(set(plan.out_index)) == plan.n_tokens                 # one attention output per row
    assert max(plan.row_doc) == (len(id_len) + n_neg if not class_specific else len(id_len) + n_neg - 1)
