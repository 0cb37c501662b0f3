import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tests never touch the network
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model():
    from iim.models import create_model
    model, preprocess = create_model("iim-test-tiny", "none")
    return model, preprocess


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is fastest and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def unwritable(monkeypatch):
    """``unwritable(folder)``: writes below ``folder`` fail with EACCES for the rest of the test."""
    import faults
    made = []

    def make(folder):
        faults.unwritable(monkeypatch, folder)
        made.append(folder)
    yield make
    if faults.chmod_effective():
        for folder in made:
            folder.chmod(0o755)
