"""The model a cache was extracted with, rebuilt from its manifest and its weights checked first: the one
loader of training, ``iim negatives``, ``iim score --negatives`` and ``iim predict``.

    model, preprocess = load_cache_model(cache, "cuda")                      # the manifest's own weights
    model, preprocess = load_cache_model(cache, "cpu", pretrained="/ckpt/vit.bin")   # the same, as a file

The rules, one set for every caller. The manifest names the model (``model``), where its weights came
from (``pretrained``: a tag or a file) and what they were (``weights``: the tag, ``sha256:<hex>`` of a
file, ``demo@sha256:<hex>`` of packaged weights; :func:`iim.models.weights_id`). ``--pretrained`` gives
the weights from elsewhere. The weights used must have the recorded ``weights`` id, checked before the
model is built, except a local file given for a plain tag: no hash to compare with, so the model's text
prototypes must equal the cache's stored ones (the text tower ships with the image tower).
"""
from __future__ import annotations

import torch

from .errors import IIMError
from .models import create_model, image_size, is_local_checkpoint, names_a_file, weights_id
from .text import global_prototypes

PROTOTYPE_TOLERANCE = 1e-3    # rtol = atol of the text-prototype comparison (float16 storage, other devices)


def load_cache_model(cache, device, pretrained: str | None = None, *, note=None):
    """``(model, preprocess)``: the model that extracted ``cache`` (an opened cache), on ``device``, with
    the weights the manifest records or ``pretrained`` (a tag or a file: the same weights from
    elsewhere). Weights that are not the recorded ones, a recorded file that is gone, or another image
    size are one-line errors. ``note(line)`` hears when a file was accepted for a tag."""
    man, root, pretrained = cache.manifest, cache.root, pretrained or None
    name, want = man.get("model"), man.get("weights")
    recorded = man.get("pretrained") or want
    source = pretrained or recorded
    if not name or not want:
        raise IIMError(f"cache {root}: the manifest does not name its model and weights; re-extract it with "
                       f"iim extract")
    recorded_file = str(want).startswith("sha256:") or names_a_file(recorded)
    if pretrained is None and recorded_file and not is_local_checkpoint(recorded):
        raise IIMError(f"the checkpoint file {recorded} that cache {root} was extracted with is not there any "
                       f"more; pass that file with --pretrained FILE (it must have {_short(want)})")
    if pretrained is not None and names_a_file(pretrained) and not is_local_checkpoint(pretrained):
        raise IIMError(f"checkpoint file not found: {pretrained}")
    got = weights_id(source)
    file_for_tag = got != want and is_local_checkpoint(source) and _is_tag(want)
    if got != want and not file_for_tag:
        fix = ("pass the weights the cache was extracted with" if pretrained is not None else
               "the packaged or local weights changed since the extraction: re-extract the cache "
               "(and retrain), or pass the old weights with --pretrained FILE")
        raise IIMError(f"weights {source} ({_short(got)}) are not the weights cache {root} was extracted with "
                       f"({_short(want)}); {fix}")
    model, preprocess = create_model(name, source, device=device)
    if man.get("image_size") is not None and image_size(model) != man["image_size"]:
        raise IIMError(f"{name}: image size {image_size(model)} differs from cache {root}'s ({man['image_size']})")
    if file_for_tag:
        check_text_prototypes(model, cache, source, want)
        if note is not None:
            note(f"Weights {source}: accepted for tag {want!r} (same text prototypes as the cache)")
    return model, preprocess


def check_text_prototypes(model, cache, source: str, want: str) -> None:
    """A weights file given for the tag ``want``: its frozen ``"a photo of a {c}."`` prototypes must be
    the cache's stored ones (no hash of a tag's weights to compare with)."""
    mine, stored = global_prototypes(model, cache.classnames).to(torch.float32), cache.global_prototypes()
    if mine.shape != stored.shape or not torch.allclose(mine, stored, rtol=PROTOTYPE_TOLERANCE,
                                                        atol=PROTOTYPE_TOLERANCE):
        raise IIMError(f"weights {source} are not the {want!r} weights cache {cache.root} was extracted with "
                       f"(its text prototypes differ); pass those weights")


def _is_tag(weights: str) -> bool:
    """Whether a weights id is an open_clip tag (``openai``), with no hash of the weights behind it."""
    return not str(weights).startswith("sha256:") and "@sha256:" not in str(weights)


def _short(weights: str) -> str:
    """A weights id for a message: a sha256 cut to 12 hex digits."""
    head, sep, digest = str(weights).partition("sha256:")
    return f"{head}sha256:{digest[:12]}..." if sep and len(digest) > 12 else str(weights)
