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
