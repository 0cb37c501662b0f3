"""KNN baseline (Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest neighbors").

Memory bank: the L2-normalised cached GLOBAL features of the few-shot support set (the train split the
run was trained on), view 0 by default (``all_views=True``: every augmented view). Score of a test image:
minus the squared L2 distance between its normalised global feature and its k-th nearest neighbour in
the bank (Sun et al.'s code takes ``-D[:, -1]`` from ``faiss.IndexFlatL2``); higher = more ID.

k defaults to 1: Sun et al. tune k in {1, ..., 1000} on banks of up to 1.28 M images, but a K-shot
support set has only K images per class, so only small k make sense.
faiss-gpu is used when installed and a GPU is visible (``faiss.get_num_gpus() > 0``), else faiss-cpu.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import IIMError
from ..ops import l2norm


def memory_bank(split, *, all_views: bool = False, rows: int | None = None) -> np.ndarray:
    """The normalised global features of a cache split as float32 ``[M, D]`` (M = N or N x V)."""
    parts = []
    for chunk in split.iter_chunks(rows=rows, view=None if all_views else 0):
        g = chunk.global_feats.reshape(-1, split.dim)
        parts.append(l2norm(g).numpy())
    if not parts:
        raise IIMError(f"KNN memory bank: split {split.name!r} is empty")
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


class KNNScorer:
    """``scorer(global_feats [b, D]) -> numpy [b]``: -(squared distance to the k-th nearest bank entry)."""

    def __init__(self, bank: np.ndarray, k: int = 1, *, use_gpu: bool | None = None):
        import faiss

        if not 1 <= k <= len(bank):
            raise IIMError(f"--knn-k {k} is out of range: the memory bank holds {len(bank)} features")
        self.k = k
        index = faiss.IndexFlatL2(bank.shape[1])
        if use_gpu is None:
            use_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        if use_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(bank)
        self.index, self.on_gpu, self.size = index, use_gpu, len(bank)

    def __call__(self, global_feats: torch.Tensor) -> np.ndarray:
        queries = np.ascontiguousarray(l2norm(global_feats).cpu().numpy(), dtype=np.float32)
        dist, _ = self.index.search(queries, self.k)
        return -dist[:, self.k - 1]
