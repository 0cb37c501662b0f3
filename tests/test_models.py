"""Model factory and device choice: clear one-line errors, never a silent fallback."""
import pytest
import torch

from iim.errors import IIMError
from iim.models import create_model, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(IIMError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(IIMError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_unknown_model_and_missing_or_wrong_checkpoint(tmp_path):
    with pytest.raises(IIMError, match="unknown model 'ViT-Q-99'"):
        create_model("ViT-Q-99", "none")
    with pytest.raises(IIMError, match="checkpoint file not found"):
        create_model("iim-test-tiny", str(tmp_path / "missing.bin"))
    bad = tmp_path / "other.bin"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(IIMError, match="cannot load checkpoint .* into iim-test-tiny"):
        create_model("iim-test-tiny", str(bad))


def test_a_demo_checkpoint_brings_its_own_class_token_tower(tmp_path):
    """create_model builds the image tower an iim-demo checkpoint records it was trained with (its
    train_demo_model metadata), else the configured one (LATE_CLASS_TOKEN); register tokens, a parameter
    open_clip's ViT lacks, load with the rest of the weights."""
    import json

    from safetensors.torch import save_file

    from iim.models import LATE_CLASS_TOKEN, LateClassTokenViT, use_late_class_token
    base = create_model("iim-demo", "none")[0]
    state = {k: v.contiguous() for k, v in base.state_dict().items()}
    built = {}
    for name, meta in {"one": {"late_class_token": True, "class_blocks": 1},
                       "old": {"late_class_token": True},              # written before class_blocks existed
                       "plain": {"late_class_token": False, "class_blocks": 3},
                       "bare": None}.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata=None if meta is None else {"iim_demo": json.dumps(meta)})
        visual = create_model("iim-demo", str(path))[0].visual
        built[name] = (visual.class_blocks, visual.registers) if isinstance(visual, LateClassTokenViT) else None
    assert built == {"one": (1, 0), "old": (1, 0), "plain": None, "bare": LATE_CLASS_TOKEN["iim-demo"]}
    visual = create_model("iim-demo", "none")[0].visual
    assert (visual.class_blocks, visual.registers) == LATE_CLASS_TOKEN["iim-demo"]
    # a tower with registers: its trained register tokens come back, and so do its features
    import open_clip
    with_reg = open_clip.create_model("iim-demo", pretrained=None)
    use_late_class_token(with_reg, 3, 2)
    torch.nn.init.normal_(with_reg.visual.register_embedding)
    path = tmp_path / "registers.safetensors"
    save_file({k: v.contiguous() for k, v in with_reg.state_dict().items()}, str(path),
              metadata={"iim_demo": json.dumps({"late_class_token": True, "class_blocks": 3, "registers": 2})})
    loaded = create_model("iim-demo", str(path))[0]
    assert (loaded.visual.class_blocks, loaded.visual.registers) == (3, 2)
    assert torch.equal(loaded.visual.register_embedding, with_reg.visual.register_embedding)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_image(images), with_reg.eval().encode_image(images))
    with pytest.raises(IIMError, match="cannot load checkpoint"):        # registers recorded, none stored
        save_file(state, str(path), metadata={"iim_demo": json.dumps({"late_class_token": True, "registers": 2})})
        create_model("iim-demo", str(path))
