"""The train split's patch features, where they fit (GPU memory, pinned host memory, or streamed
per epoch), and each step's batch of them."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

WHERE = {"device": "in device memory", "host": "in host memory", "stream": "streamed per epoch"}


class TrainFeatures:
    """The train split's patch features where they fit: ``device`` (whole [N, V, HW, D] in GPU
    memory), ``host`` (whole, in pinned CPU memory, batches copied per step) or ``stream`` (each epoch
    reads the split chunk by chunk and keeps only the drawn view of each image)."""

    def __init__(self, split, device: torch.device, where: str = "auto", *, progress: bool = True):
        self.split, self.device, self.progress = split, device, progress
        self.labels = torch.from_numpy(split.labels).to(device)
        self.nbytes = split.n * split.views * split.hw * split.dim * 2
        self.where = _choose_storage(self.nbytes, device) if where == "auto" else where
        if self.where == "device" or (self.where == "host" and device.type == "cpu"):
            self.local = self._load(device, pin=False)
        elif self.where == "host":
            self.local = self._load(torch.device("cpu"), pin=True)
        self._epoch_local = None

    def _load(self, device, pin: bool) -> torch.Tensor:
        s = self.split
        shape = (s.n, s.views, s.hw, s.dim)
        try:
            out = torch.empty(shape, dtype=torch.float16, device=device, pin_memory=pin)
        except RuntimeError:                 # pinning refused (limits): pageable memory still works
            out = torch.empty(shape, dtype=torch.float16, device=device)
        bar = tqdm(total=s.n, desc=f"loading {s.name} ({self.nbytes / 2**30:.1f} GiB)", unit="img",
                   disable=None if self.progress else True, leave=False)
        for chunk in s.iter_chunks(view=None):
            out[chunk.start:chunk.start + len(chunk.labels)].copy_(chunk.local_feats)
            bar.update(len(chunk.labels))
        bar.close()
        return out

    def start_epoch(self, view: torch.Tensor) -> None:
        """Use ``view[i]`` of image i during this epoch."""
        if self.where != "stream":
            self.view = view.to(self.local.device)
            return
        s = self.split
        pin = self.device.type == "cuda"
        try:
            local = torch.empty((s.n, s.hw, s.dim), dtype=torch.float16, pin_memory=pin)
        except RuntimeError:                 # pinning refused (limits): pageable memory still works
            local = torch.empty((s.n, s.hw, s.dim), dtype=torch.float16)
        for chunk in s.iter_chunks(view=None):
            rows = torch.arange(chunk.start, chunk.start + len(chunk.labels))
            local[rows] = chunk.local_feats[torch.arange(len(rows)), view[rows]]
        self._epoch_local = local

    def steps(self, idx: torch.Tensor) -> list[tuple]:
        """The inputs of each optimiser step of batch ``idx``: IIM takes one (another method's steps:
        :class:`iim.train.methods.StepInputs`, which wraps this)."""
        return [self.batch(idx)]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features ``[b, HW, D]`` (float16, on the device) and labels of images ``idx``."""
        if self.where == "stream":
            local = self._epoch_local[idx]
        else:
            i = idx.to(self.local.device)
            local = self.local[i, self.view[i]]
        return local.to(self.device, non_blocking=True), self.labels[idx.to(self.labels.device)]


def _choose_storage(nbytes: int, device: torch.device) -> str:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < 0.85 * free - (6 << 30):        # leave room for the text encoder's activations
            return "device"
    if nbytes < 0.6 * available_ram():
        return "host" if device.type == "cuda" else "device"
    return "stream"


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30
