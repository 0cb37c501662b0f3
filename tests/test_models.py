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
