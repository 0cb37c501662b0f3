"""The KNN baseline's faiss index: the CPU path against brute force, and the GPU switch (faiss-gpu when
installed and a GPU is visible) taken through a stand-in for faiss's GPU calls, with the same neighbours."""
import numpy as np
import pytest
import torch

import faiss
from iim.errors import IIMError
from iim.score.knn import KNNScorer


def brute_force(bank, queries, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = ((q[:, None] - bank[None]) ** 2).sum(-1)
    return -np.sort(d, axis=1)[:, k - 1]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(40, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    return bank, rng.normal(size=(12, 8)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_cpu_path_equals_brute_force(data, k):
    bank, queries = data
    scorer = KNNScorer(bank, k=k)
    assert not scorer.on_gpu                    # faiss-cpu here: no GPU visible
    np.testing.assert_allclose(scorer(torch.from_numpy(queries)), brute_force(bank, queries, k), atol=1e-5)


def test_gpu_switch_when_a_gpu_is_visible(data, monkeypatch):
    """With faiss-gpu and a GPU, the index is moved with index_cpu_to_all_gpus; neighbours unchanged."""
    bank, queries = data
    moved = []

    def to_gpus(index):
        moved.append(index)
        return index                            # stand-in: the same flat index, searched on the CPU
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    scorer = KNNScorer(bank, k=2)
    assert scorer.on_gpu and len(moved) == 1
    np.testing.assert_allclose(scorer(torch.from_numpy(queries)), brute_force(bank, queries, 2), atol=1e-5)
    assert not KNNScorer(bank, k=2, use_gpu=False).on_gpu and len(moved) == 1   # explicit CPU wins


def test_k_out_of_range_is_one_line(data):
    with pytest.raises(IIMError, match="--knn-k 41 is out of range"):
        KNNScorer(data[0], k=41)
