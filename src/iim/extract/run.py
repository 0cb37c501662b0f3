"""Stage one: run the frozen image encoder once over a benchmark and write the feature cache.

    from iim.extract import extract
    extract("imagenet", data_root="/data", shots=[16], seeds=[1, 2, 3])      # -> cache/imagenet

Per split: a DataLoader (workers, pinned memory on CUDA) feeds batches to
:func:`iim.features.encode_image` (autocast on CUDA); a writer thread with a bounded queue appends the
float16 results to the split's Zarr arrays, so compression and disk writes overlap compute. Batches are
aligned with storage chunks, so a killed run resumes at the last fully written chunk and reproduces the
arrays of an uninterrupted run (same command). A complete split is skipped.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import open_clip
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..cache.names import is_ood, ood_split_name
from ..cache.location import as_path
from ..cache.store import CHUNK_BYTES, MANIFEST, Cache, SplitWriter, create_cache, open_cache
from ..data.benchmarks import Benchmark, load_benchmark
from ..data.folders import ORIENTATION, ImageRows
from ..data.splits import SplitPlan, files_digest, plan_ood, plan_test, plan_train, split_crop_scale, stored_plans, train_pools  # noqa: E501
from ..errors import IIMError
from ..log import info as log_info, warning as log_warning
from ..features import FEATURE_VERSION, check_supported, encode_image
from ..models import create_model, image_size, model_logit_scale, resolve_device, train_transform, weights_id
from ..dist import barrier, process_group, torchrun_env, worker_device
from ..lock import folder_lock
from ..text import global_prototypes

SPLIT_KINDS = ("train", "test", "ood")
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}


# ---------------------------------------------------------------------------------------------------
# Which splits
# ---------------------------------------------------------------------------------------------------
def plan_splits(bench: Benchmark, splits=None, *, shots=(), seeds=(1,), views: int = 1,
                crop_scale: float | None = None, warn=log_warning) -> list[SplitPlan]:
    """Plan every requested split before any image is encoded (bad input fails fast).

    ``splits``: names among ``train``, ``test``, ``ood`` (all OOD sets) and ``ood_<name>`` (one set);
    ``None`` means all the benchmark defines, with ``train`` only when ``shots`` are given.
    ``train`` makes one split per (shots, seed) pair.
    """
    explicit = splits is not None
    wanted = list(splits) if explicit else [k for k in SPLIT_KINDS
                                            if k != "train" or shots]
    plans: list[SplitPlan] = []
    for token in wanted:
        if token == "train":
            if not shots:
                raise IIMError("the train split needs --shots (e.g. --shots 16 or --shots 1,2,4,8,16)")
            pools = train_pools(bench)              # list ImageNet's 1.28 M train files once
            plans += [plan_train(bench, k, s, views=views, pools=pools, crop_scale=crop_scale)
                      for k in shots for s in seeds]
        elif token == "test":
            plans.append(plan_test(bench, warn=warn))
        elif token == "ood":
            plans += [plan_ood(bench, name, warn=warn) for name in bench.ood]
        elif is_ood(token) or token.startswith("ood:"):
            plans.append(plan_ood(bench, token[4:], warn=warn))
        else:
            oods = ", ".join(ood_split_name(n) for n in bench.ood)
            raise IIMError(f"unknown split {token!r}; choose from train, test, ood" + (f", {oods}" if oods else ""))
    names = [p.name for p in plans]
    return [p for i, p in enumerate(plans) if p.name not in names[:i]]


# ---------------------------------------------------------------------------------------------------
# Writing overlapped with compute
# ---------------------------------------------------------------------------------------------------
class AsyncWriter:
    """Feeds a :class:`SplitWriter` from a background thread through a bounded queue."""

    _STOP = object()

    def __init__(self, writer: SplitWriter, depth: int = 4):
        self.writer, self.error = writer, None
        self.queue: queue.Queue = queue.Queue(depth)
        self.thread = threading.Thread(target=self._run, name="iim-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while (item := self.queue.get()) is not self._STOP:
            if self.error is not None:
                continue                                       # drain without writing
            g, l, ready, skipped = item
            try:
                if ready is not None:
                    ready.synchronize()                        # the device->host copy has landed
                for row, path in skipped:
                    self.writer.mark_skipped(row, path)
                self.writer.append(g.numpy(), l.numpy())
            except BaseException as e:  # re-raised in the main thread
                self.error = e

    def put(self, g: torch.Tensor, l: torch.Tensor, ready=None, skipped=()):
        if self.error is not None:
            raise self.error
        self.queue.put((g, l, ready, list(skipped)))

    def close(self) -> None:
        """Wait until every queued batch is appended (full chunks are then on disk)."""
        self.queue.put(self._STOP)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """After a failure elsewhere: write the full chunks already computed (they are valid and save
        work on resume), leave the rest; nothing is marked complete. Own errors are not re-raised."""
        if self.thread.is_alive():
            self.queue.put(self._STOP)
            self.thread.join()


# ---------------------------------------------------------------------------------------------------
# One split
# ---------------------------------------------------------------------------------------------------
def chunk_rows_for(row_bytes: int, batch: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per storage chunk: about ``chunk_bytes`` of ``local``, rounded to whole batches so that a
    resumed run starts on the same batch boundaries as an uninterrupted one."""
    return max(batch, (chunk_bytes // max(1, row_bytes)) // batch * batch)


def image_loader(root, files: list[str], preprocess, model, *, batch_size: int, device: torch.device,
                 workers: int = 0, start: int = 0, views: int = 1, augment=None, seed: int = 0, spans=None):
    """The batches stage one encodes: :class:`~iim.data.folders.ImageRows` (decode,
    :func:`~iim.data.folders.to_rgb`, preprocess; unreadable files as errors) in ``batch_size`` rows
    from row ``start`` (or within each ``(lo, hi)`` of ``spans``), in DataLoader workers, pinned on CUDA. Yields ``(rows, images [b, V, 3, H, W],
    errors)``."""
    dataset = ImageRows(root, files, preprocess, image_size=image_size(model), views=views, augment=augment,
                        seed=seed)
    n = len(files)
    spans = [(start, n)] if spans is None else spans
    batches = [list(range(i, min(i + batch_size, hi))) for lo, hi in spans for i in range(lo, hi, batch_size)]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def encode_batch(model, images: torch.Tensor, *, device: torch.device, amp_dtype=None):
    """SPEC §1 features of ``images [b, V, 3, H, W]`` as the cache stores them: float16
    ``(global [b, V, D], local [b, V, HW, D])`` on ``device`` (autocast ``amp_dtype`` on CUDA)."""
    b, views = images.shape[:2]
    x = images.flatten(0, 1).to(device, non_blocking=True)
    cuda = device.type == "cuda"
    with torch.autocast("cuda", dtype=amp_dtype) if cuda and amp_dtype else nullcontext():
        g, l = encode_image(model, x)
    return g.to(torch.float16).unflatten(0, (b, views)), l.to(torch.float16).unflatten(0, (b, views))


def open_split_writer(cache: Cache, plan: SplitPlan, *, rows_per_batch: int, amp_dtype=None,
                      chunk_bytes: int = CHUNK_BYTES, env=None) -> SplitWriter:
    """The writer of ``plan``'s split, storage chunks of whole batches of ``rows_per_batch`` images:
    rank 0 creates the split (or reopens an interrupted one), then, under torchrun (``env``), the other
    ranks open it after a barrier; each writes the chunks it owns."""
    rank, world = (env.rank, env.world) if env else (0, 1)
    hw, dim = int(cache.manifest["num_patches"]), int(cache.manifest["embed_dim"])
    attrs = dict(plan.attrs, amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "off")
    make = lambda: cache.writer(plan.name, n=plan.n, views=plan.views, hw=hw, dim=dim, labels=plan.labels,  # noqa
                                paths=plan.files, attrs=attrs, rank=rank, world=world,
                                chunk_rows=chunk_rows_for(plan.views * hw * dim * 2, rows_per_batch, chunk_bytes))
    writer = make() if rank == 0 else None               # rank 0 creates the arrays, then the others open them
    if env:
        barrier()
        writer = writer or make()
    return writer


def unreadable_rows(plan: SplitPlan, rows, errors, *, skip_bad: bool) -> list[int]:
    """The positions in a batch of the images that could not be read (``errors[i]`` set): skipped (their
    rows zero-filled) with ``--skip-bad``, except in a few-shot split; otherwise the first is an error."""
    bad = [i for i, e in enumerate(errors) if e]
    if bad and (not skip_bad or plan.kind == "train"):
        i = bad[0]
        hint = ("a few-shot split must hold K images of every class, so --skip-bad does not apply: "
                "fix or remove it (sampling then picks another)" if plan.kind == "train" else
                "fix or remove it, or pass --skip-bad to skip unreadable images")
        raise IIMError(f"cannot read image {plan.root / plan.files[rows[i]]} ({errors[i]}); {hint}")
    return bad


def extract_split(cache: Cache, plan: SplitPlan, model, preprocess, *, device: torch.device,
                  amp_dtype=None, batch_size: int = 128, workers: int = 4, skip_bad: bool = False,
                  chunk_bytes: int = CHUNK_BYTES, progress: bool = True, log=log_info, env=None) -> None:
    """Encode the images of ``plan`` and write (or finish) its split in ``cache``. Under torchrun
    (``env``: :func:`iim.dist.torchrun_env`) every rank calls this: rank 0 creates the split, each rank
    writes the chunks it owns, and rank 0 marks the split complete once all ranks are done."""
    rank, world = (env.rank, env.world) if env else (0, 1)
    views = plan.views
    rows_per_batch = max(1, batch_size // views)      # --batch-size counts image views per forward
    writer = open_split_writer(cache, plan, rows_per_batch=rows_per_batch, amp_dtype=amp_dtype,
                               chunk_bytes=chunk_bytes, env=env)
    todo = sum(hi - lo for lo, hi in writer.spans)
    if writer.start and world == 1:
        log(f"{plan.name}: resuming at row {writer.start} of {plan.n}")
    elif world > 1 and len(writer.todo) < len(range(rank, writer.n_chunks, world)):
        log(f"{plan.name}: resuming; rank {rank} has {todo} rows left")
    cuda = device.type == "cuda"
    loader = image_loader(plan.root, plan.files, preprocess, model, batch_size=rows_per_batch, spans=writer.spans,
                          workers=workers, device=device, views=views, seed=plan.seed,
                          augment=train_transform(model, scale=(plan.attrs["crop_scale"], 1.0)) if views > 1
                          else None)
    batches_iter = iter(loader)                       # start the workers before the writer thread
    sink = AsyncWriter(writer)
    bar = tqdm(total=plan.n if world == 1 else todo, initial=plan.n - todo if world == 1 else 0, unit="img",
               desc=plan.name if world == 1 else f"{plan.name} [rank 0 of {world}]", dynamic_ncols=True,
               file=sys.stderr, disable=None if progress and rank == 0 else True)   # None: only on a terminal
    t0 = time.perf_counter()
    try:
        for rows, images, errors in batches_iter:
            bad = unreadable_rows(plan, rows, errors, skip_bad=skip_bad)
            b = images.shape[0]
            g, l = encode_batch(model, images, device=device, amp_dtype=amp_dtype)
            if bad:
                g[bad], l[bad] = 0, 0                        # skipped rows hold zeros
            ready = None
            if cuda:
                g, l = g.to("cpu", non_blocking=True), l.to("cpu", non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            sink.put(g, l, ready, [(int(rows[i]), plan.files[rows[i]]) for i in bad])
            bar.update(b)
        sink.close()
        writer.finish_share()
        if env:
            barrier()                                    # every rank's chunks are stored
        if rank == 0:
            writer.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    done = todo
    skipped = list(writer.group.attrs.get("skipped_paths", [])) if rank == 0 else []
    log(f"{plan.name}: {done} images in {seconds:.1f} s ({done / max(seconds, 1e-9):.0f} img/s)"
        + (f"; {len(skipped)} unreadable skipped" if skipped else ""))


# ---------------------------------------------------------------------------------------------------
# The whole extraction
# ---------------------------------------------------------------------------------------------------
def _config_image_size(model_name: str) -> int:
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise IIMError(f"unknown model {model_name!r}; open_clip knows e.g. ViT-B-16, ViT-L-14, iim-test-tiny")
    size = cfg["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def cache_key(bench: Benchmark, model_name: str, pretrained: str) -> dict:
    """The manifest fields that decide whether an existing cache may be extended (no model needed)."""
    local = pretrained not in (None, "", "none") and Path(pretrained).expanduser().is_file()
    return dict(model=model_name, pretrained=str(Path(pretrained).expanduser().resolve()) if local else pretrained,
                weights=weights_id(pretrained), image_size=_config_image_size(model_name),
                feature_version=FEATURE_VERSION, benchmark=bench.name, classnames=list(bench.classnames))


def extract(benchmark: Benchmark | str, out=None, *, data_root=None, model: str = "ViT-B-16",
            pretrained: str = "openai", splits=None, shots=(), seeds=(1,), views: int = 1,
            crop_scale: float | None = None, batch_size: int = 128, workers: int | None = None,
            device: str = "auto", amp: str = "auto",
            skip_bad: bool = False, chunk_bytes: int = CHUNK_BYTES, progress: bool = True,
            log=log_info) -> Cache:
    """Extract the requested splits of ``benchmark`` into the cache at ``out`` (default
    ``cache/<benchmark>``) and return it. See :func:`plan_splits` for ``splits``. ``crop_scale``: s_min of
    the augmented views (default: the benchmark's, SPEC §1); a cache never mixes crop scales."""
    env = torchrun_env()
    if env is None:
        return _extract(benchmark, out, data_root=data_root, model=model, pretrained=pretrained, splits=splits,
                        shots=shots, seeds=seeds, views=views, crop_scale=crop_scale, batch_size=batch_size,
                        workers=workers, device=device, amp=amp, skip_bad=skip_bad, chunk_bytes=chunk_bytes,
                        progress=progress, log=log)
    _exit_on_sigterm()
    with process_group(env):                 # torchrun: every rank runs the same extraction on its chunks
        return _extract(benchmark, out, data_root=data_root, model=model, pretrained=pretrained, splits=splits,
                        shots=shots, seeds=seeds, views=views, crop_scale=crop_scale, batch_size=batch_size,
                        workers=workers, device=worker_device(device, env.local_rank), amp=amp,
                        skip_bad=skip_bad, chunk_bytes=chunk_bytes, progress=progress,
                        log=log if env.rank == 0 else (lambda m: None), env=env)


def _extract(benchmark, out, *, data_root, model, pretrained, splits, shots, seeds, views, crop_scale,
             batch_size, workers, device, amp, skip_bad, chunk_bytes, progress, log, env=None) -> Cache:
    """:func:`extract` in one process, or in one torchrun rank (``env``): all ranks check and plan alike
    before anything is written; rank 0 alone writes the manifest, prototypes and split attributes."""
    rank = env.rank if env else 0
    bench = load_benchmark(benchmark, data_root) if isinstance(benchmark, str) else benchmark
    out = as_path(out) if out is not None else Path("cache") / bench.name      # a folder or an fsspec URL
    if out.exists() and not out.is_dir():
        raise IIMError(f"--out {out} is a file, not a folder")
    if batch_size < 1:
        raise IIMError("--batch-size must be at least 1")
    if views < 1:
        raise IIMError("--views must be at least 1")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    plans = plan_splits(bench, splits, shots=shots, seeds=seeds, views=views, crop_scale=crop_scale,
                        warn=lambda m: log(f"warning: {m}"))
    key = cache_key(bench, model, pretrained)

    cache = create_cache(out, key) if (out / MANIFEST).is_file() else None   # refuses a mismatch early
    if cache is not None:
        plans = stored_plans(plans, cache)
        check_one_crop_scale(cache, plans)
        for plan in plans:
            _check_same_files(cache, plan, log)
        todo = [p for p in plans if not (cache.is_complete(p.name) and _recorded_complete(cache, p))]
        if not todo and _has_prototypes(cache):
            log(f"{out}: every requested split is complete ({', '.join(p.name for p in plans)})")
            return cache

    dev = resolve_device(device)
    amp = "fp16" if amp == "auto" else amp
    if amp not in AMP_DTYPES:
        raise IIMError(f"unknown --amp {amp!r} (use auto, fp16, bf16 or off)")
    if dev.type != "cuda":
        amp = "off"                          # CPU runs float32; record what actually ran
    net, preprocess, shape_fields = _image_model(model, pretrained, dev, key["image_size"])

    if env:
        barrier()                            # every rank has read the cache's state: rank 0 may write now
    if rank:
        return _extract_rank(out, plans, net, preprocess, env, device=dev, amp_dtype=AMP_DTYPES[amp],
                             batch_size=batch_size, workers=workers, skip_bad=skip_bad, chunk_bytes=chunk_bytes)
    cache = create_cache(out, dict(key, **shape_fields, class_dirs=list(bench.class_dirs), iim_version=__version__,
                                   orientation=ORIENTATION, created=time.strftime("%Y-%m-%dT%H:%M:%S"), splits={}))
    with folder_lock(out, ".extract.lock", "iim extract"):
        cache = create_cache(out, cache.manifest)       # re-read: another extraction may have just finished
        if any(cache.manifest.get(k) != v for k, v in shape_fields.items()):
            cache.update_manifest(**shape_fields)
        if not _has_prototypes(cache):
            cache.write_global_prototypes(global_prototypes(net, bench.classnames).numpy())
        if env:
            barrier()                                    # the cache and its manifest exist
        _extract_splits(cache, plans, net, preprocess, device=dev, amp_dtype=AMP_DTYPES[amp],
                        batch_size=batch_size, workers=workers, skip_bad=skip_bad, chunk_bytes=chunk_bytes,
                        progress=progress, log=log, env=env)
    if env:
        barrier()                                        # the other ranks return once every split is complete
    return cache


def _image_model(model: str, pretrained: str, device, config_size: int):
    """The image encoder, checked (MaskCLIP-able, image size as in its config) ->
    ``(net, preprocess, the manifest's shape fields)``."""
    net, preprocess = create_model(model, pretrained, device=device)
    check_supported(net)
    if image_size(net) != config_size:
        raise IIMError(f"{model}: image size {image_size(net)} differs from its config ({config_size})")
    grid = image_size(net) // net.visual.patch_size[0]
    shape_fields = dict(embed_dim=int(net.visual.output_dim), num_patches=int(grid * grid),
                        logit_scale=model_logit_scale(net))   # the model's own tau (SPEC §3)
    return net, preprocess, shape_fields


def _extract_splits(cache: Cache, plans: list[SplitPlan], net, preprocess, *, log, env=None, **kw) -> None:
    """Rank 0, holding the cache lock: every split of ``plans`` not yet complete, each recorded in the
    manifest before and after (``kw``: :func:`extract_split`'s options)."""
    for plan in plans:
        complete = cache.is_complete(plan.name)
        if env:
            _broadcast_flag(complete)               # the other ranks skip it too
        if complete:
            if not _recorded_complete(cache, plan):      # finished by a run killed before recording it
                _record(cache, plan, complete=True)
            log(f"{plan.name}: complete, skipped")
            continue
        _record(cache, plan, complete=False)
        extract_split(cache, plan, net, preprocess, log=log, env=env, **kw)
        _record(cache, plan, complete=True)


def _exit_on_sigterm() -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: exit through ``finally`` blocks, so
    rank 0 releases the cache lock (and full chunks already encoded are stored)."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def _broadcast_flag(flag: bool) -> bool:
    from ..dist import broadcast
    return broadcast(flag)


def _extract_rank(out, plans, net, preprocess, env, **kw) -> Cache:
    """A rank other than 0: write the chunks it owns of each split rank 0 says is not complete."""
    barrier()                                            # rank 0 has created the cache
    cache = open_cache(out)
    for plan in plans:
        if _broadcast_flag(False):                       # complete: rank 0 skips it
            continue
        extract_split(cache, plan, net, preprocess, progress=False, log=lambda m: None, env=env, **kw)
    barrier()
    return open_cache(out)


def check_one_crop_scale(cache: Cache, plans: list[SplitPlan]) -> None:
    """A cache never mixes augmented views of different crop scales: another value is refused."""
    wanted = {p.attrs["crop_scale"] for p in plans if p.attrs.get("crop_scale") is not None}
    for name, entry in (cache.manifest.get("splits") or {}).items():
        have = split_crop_scale(entry)
        if have is not None and wanted and wanted != {have}:
            raise IIMError(f"{cache.root} holds views cropped with --crop-scale {have:g} ({name}); a cache "
                           f"never mixes crop scales: extract --crop-scale {wanted.pop():g} into another --out")


def _recorded_complete(cache: Cache, plan: SplitPlan) -> bool:
    return bool((cache.manifest.get("splits") or {}).get(plan.name, {}).get("complete"))


def _has_prototypes(cache: Cache) -> bool:
    try:
        cache.global_prototypes()
        return True
    except IIMError:
        return False


def _check_same_files(cache: Cache, plan: SplitPlan, log) -> None:
    """A complete split made from other files than the folder now holds is kept, with a warning."""
    if cache.is_complete(plan.name):
        attrs = cache.split(plan.name).attrs
        old = attrs.get("files_sha256")            # older caches: newline-joined paths, no files_hash
        if old and old != files_digest(plan.files, attrs.get("files_hash", "newline")):
            log(f"warning: {plan.name} in {cache.root} was extracted from other files than "
                f"{plan.root} holds now; kept as is (delete {cache.root / plan.name} to redo it)")


def _record(cache: Cache, plan: SplitPlan, *, complete: bool) -> None:
    """Describe the split in the manifest (its files are the split's ``path`` array)."""
    skipped = cache.split(plan.name).attrs.get("skipped_paths", []) if complete else []
    entry = dict(plan.attrs, n=plan.n, views=plan.views, complete=complete, skipped=list(skipped))
    splits = dict(cache.manifest.get("splits") or {})
    splits[plan.name] = entry
    cache.update_manifest(splits=splits)
