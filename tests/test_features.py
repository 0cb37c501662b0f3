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
