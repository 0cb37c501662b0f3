"""The local features are exactly SPEC §1's MaskCLIP value path; the global ones are CLIP's embedding."""
import pytest
import torch
import torch.nn.functional as F

from iim.features import encode_image
from iim.models import create_model


def reference_features(model, images):
    """Straightforward SPEC §1 computation, step by step through the open_clip block."""
    visual = model.visual
    captured = {}
    last = visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    global_ref = model.encode_image(images)            # open_clip's own forward
    hook.remove()
    x = captured["x"]
    width = x.shape[-1]
    h0 = last.ln_1(x)
    w_v = last.attn.in_proj_weight[2 * width:]
    b_v = last.attn.in_proj_bias[2 * width:]
    v = F.linear(h0, w_v, b_v)
    v = last.attn.out_proj(v)
    v = x + last.ls_1(v)
    v = v + last.ls_2(last.mlp(last.ln_2(v)))
    local_ref = visual.ln_post(v) @ visual.proj
    return global_ref, local_ref[:, 1:]


@pytest.mark.parametrize("name", ["iim-test-tiny", "ViT-B-16"])
def test_features_match_reference(name):
    model, _ = create_model(name, "none")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    torch.manual_seed(0)
    images = torch.randn(2, 3, size, size)
    g, l = encode_image(model, images)
    g_ref, l_ref = reference_features(model, images)
    grid = size // model.visual.patch_size[0]
    assert g.shape == g_ref.shape and l.shape == (2, grid * grid, g.shape[-1])
    assert l.shape[1] >= 16
    torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l, l_ref, atol=1e-4, rtol=1e-4)
    # the value path really differs from the ordinary token outputs (attention mixing is removed)
    assert not torch.allclose(l[:, 0], l[:, 1])


def test_random_weights_are_deterministic():
    a, _ = create_model("iim-test-tiny", "none")
    b, _ = create_model("iim-test-tiny", "none")
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na


# ---- the late class token (the demo CLIP's tower, iim.models.LateClassTokenViT) ---------------------
def late_class_token_reference(model, images, class_blocks=1, registers=0):
    """The same tower written the straightforward way: open_clip's own blocks over all 1 + R + HW tokens
    (class token, registers, patches) with an attention mask that keeps the patches and registers from the
    class token in every block, and the class token from them in every block but the last ``class_blocks``;
    the last block's input without the registers."""
    visual = model.visual
    x = visual._embeds(images)                # open_clip's (the subclass does not override it)
    if registers:
        x = torch.cat([x[:, :1], visual.register_embedding.expand(len(x), -1, -1), x[:, 1:]], dim=1)
    n = x.shape[1]
    blocks = visual.transformer.resblocks
    for i, blk in enumerate(blocks[:-1]):
        mask = torch.zeros(n, n)
        if i < len(blocks) - class_blocks:
            mask[0, 1:] = float("-inf")  # the class token sees only itself ...
        mask[1:, 0] = float("-inf")      # ... and no patch or register ever sees it
        x = blk(x, attn_mask=mask)
    return torch.cat([x[:, :1], x[:, 1 + registers:]], dim=1)


@pytest.mark.parametrize("class_blocks, registers", [(1, 0), (2, 0), (1, 2), (2, 4)])
def test_late_class_token_matches_a_masked_reference(class_blocks, registers):
    from iim.models import LateClassTokenViT, use_late_class_token
    model, _ = create_model("iim-test-tiny", "none")
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    g_std, l_std = encode_image(model, images)
    use_late_class_token(model, class_blocks, registers)
    assert isinstance(model.visual, LateClassTokenViT)
    g, l = encode_image(model, images)
    x = late_class_token_reference(model, images, class_blocks, registers)
    last = model.visual.transformer.resblocks[-1]
    g_ref = model.visual.ln_post(last(x)[:, 0]) @ model.visual.proj        # CLIP's pooling after the last block
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_image(images), g_ref, atol=1e-5, rtol=1e-5)   # open_clip's entry point too
    # the SPEC §1 value path read on the masked reference's last-block input
    width = x.shape[-1]
    v = last.attn.out_proj(F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:]))
    v = x + last.ls_1(v)
    v = v + last.ls_2(last.mlp(last.ln_2(v)))
    torch.testing.assert_close(l, (model.visual.ln_post(v) @ model.visual.proj)[:, 1:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(g, g_std, atol=1e-3) and not torch.allclose(l, l_std, atol=1e-3)   # it is another tower
    # with the last block only, the class token enters it as one vector, whatever the image
    assert torch.allclose(x[0, 0], x[1, 0], atol=1e-6) == (class_blocks == 1)


def test_late_class_token_is_the_demo_clip_s_only():
    from iim.errors import IIMError
    from iim.models import LateClassTokenViT, use_late_class_token
    demo, _ = create_model("iim-demo", "none")
    tiny, _ = create_model("iim-test-tiny", "none")
    assert isinstance(demo.visual, LateClassTokenViT) and not isinstance(tiny.visual, LateClassTokenViT)
    with pytest.raises(NotImplementedError, match="encode_image"):
        demo.visual.forward_intermediates(torch.zeros(1, 3, 64, 64))
    with pytest.raises(IIMError, match="VisionTransformer"):
        use_late_class_token(demo)           # twice: refused, it is no plain open_clip ViT any more
    with pytest.raises(IIMError, match="class_blocks"):
        use_late_class_token(tiny, class_blocks=len(tiny.visual.transformer.resblocks) + 1)
    with pytest.raises(IIMError, match="registers"):
        use_late_class_token(tiny, registers=-1)
