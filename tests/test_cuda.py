"""GPU-only checks (skipped without CUDA; run them in a GPU session: ``pytest tests/test_cuda.py``).

CPU torch has no FlexAttention backward and no CUDA graphs, so the prompt encoder's ``attention="flex"``
gradients and the compiled CUDA training step are proved here, against the same full-length reference
as the CPU tests.
"""
import pytest
import torch

from iim.models import create_model
from iim.text import PromptEncoder, encode_prompts_reference
from test_text import NAMES, assert_matches_reference, bf16_pairs, grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def no_tf32_fresh_compiles(monkeypatch):
    """fp32 comparisons at 1e-4: no TF32 matmuls. Each test compiles afresh, and passing torch's
    recompile limit (compiled flex is shared by every token count) fails instead of running the
    unfused eager flex silently."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    import torch._dynamo
    torch._dynamo.reset()
    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)


@pytest.fixture(scope="module", params=["iim-test-tiny", "ViT-B-16"])
def cuda_model(request):
    return create_model(request.param, "none", device="cuda")[0]


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("n_neg, attention", [(0, "auto"), (3, "auto"), (3, "flex"), (3, "blocks")])
def test_matches_reference_on_cuda(cuda_model, class_specific, n_neg, attention):
    """Features and context gradients on CUDA, fp32 (flex with n_neg=0: the CPU formulation test)."""
    torch.manual_seed(0)
    enc = PromptEncoder(cuda_model, NAMES, n_neg=n_neg, class_specific=class_specific, attention=attention)
    assert_matches_reference(cuda_model, enc, atol=1e-4)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_flex_encoder_matches_reference(mode):
    """torch.compile of the whole encoder (and CUDA graphs with reduce-overhead), on ViT-B-16."""
    cuda_model = create_model("ViT-B-16", "none", device="cuda")[0]
    torch.manual_seed(0)
    enc = PromptEncoder(cuda_model, NAMES, n_neg=3, attention="flex")
    compiled = torch.compile(enc, mode=mode)
    for _ in range(3):                                  # compile, record, replay
        feats = compiled()
        feats = [f.clone() for f in feats]
        params = [enc.ctx, enc.neg_ctx]
        got = grads(feats, params)
    ref = encode_prompts_reference(cuda_model, NAMES, enc.ctx, enc.neg_ctx)
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, atol=1e-4, rtol=0)
    for g, r in zip(got, grads(ref, params)):
        torch.testing.assert_close(g, r, atol=1e-4 * max(1.0, r.abs().max().item()), rtol=0)


@pytest.mark.parametrize("attention", ["flex", "blocks"])
def test_bf16_stays_close(attention):
    """bf16 autocast (the GPU training setting), ViT-B-16, 300 classes reading the shared prefix."""
    feat_pairs, grad_pairs = bf16_pairs(create_model("ViT-B-16", "none", device="cuda")[0], 300, 30, attention)
    for f, r in feat_pairs:
        assert (f - r).norm() / r.norm() < 0.02
    for g, r in grad_pairs:
        assert (g - r).norm() / r.norm() < 0.03


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_training_flex_compiled_matches_eager(tmp_path, mode):
    """The loop on CUDA: flex + compile (CUDA graphs too) trains like the eager default (fp32)."""
    from test_train import config, make_train_cache, quiet
    from iim.train.loop import train
    make_train_cache(tmp_path / "cache")
    common = dict(epochs=2, device="cuda", bf16=False)
    a = train(config(tmp_path / "cache", tmp_path / "a", **common), progress=False, log=quiet)
    b = train(config(tmp_path / "cache", tmp_path / "b", attention="flex", compile=mode, **common),
              progress=False, log=quiet)
    for key in ("ctx", "neg_ctx"):
        torch.testing.assert_close(b["contexts"][key], a["contexts"][key], atol=1e-4, rtol=1e-3)
