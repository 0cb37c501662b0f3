"""Wall time of a benchmark step, shared by the benchmark scripts."""
from __future__ import annotations

import statistics
import time

import torch


def timings(step, *, iters: int, warmup: int, device) -> tuple[float, float]:
    """``(best, median)`` wall time of ``step()`` in ms (best: robust on a shared machine); CUDA is
    synchronised around every call."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), statistics.median(times)
