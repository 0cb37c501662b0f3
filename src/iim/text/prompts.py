"""The prompts of SPEC §2 as text and as tokens: the templates, the model's own tokenizer (built once
per process), and tokenisation that never truncates silently."""
from __future__ import annotations

import functools

import open_clip
import torch

from ..errors import IIMError

GLOBAL_TEMPLATE = "a photo of a {}."
CTX_TOKEN = "X"       # placeholder word whose embeddings the learnable context replaces (CoOp)


def id_prompt(classname: str, n_ctx: int) -> str:
    """SPEC §2 ID local prompt: ``"X X ... X {classname}."`` with ``n_ctx`` X's."""
    return " ".join([CTX_TOKEN] * n_ctx + [classname]) + "."


def neg_prompt(n_ctx: int) -> str:
    """SPEC §2 negative prompt: ``"X X ... X ."`` (no class name)."""
    return " ".join([CTX_TOKEN] * n_ctx) + " ."


@functools.lru_cache(maxsize=8)
def model_tokenizer(name: str):
    """open_clip's tokenizer of model ``name``, built once per process (reading its BPE vocabulary takes
    ~0.1 s: paid once, not per prompt encoder)."""
    return open_clip.get_tokenizer(name)


def tokenize(model, texts, *, names=None) -> torch.Tensor:
    """Tokenize with the model's own open_clip tokenizer -> ``[N, context_length]`` int64.

    Unlike the tokenizer, never truncates silently: a text longer than the text encoder's context is
    an :class:`IIMError` naming the text (or ``names[i]``, e.g. the class name that made it long).
    """
    tokenizer = model_tokenizer(model_name(model))
    length = getattr(model, "context_length", 77)
    if not texts:
        return torch.zeros(0, length, dtype=torch.long)
    tokens = tokenizer(list(texts), context_length=4 * length)   # room to measure over-long texts
    eot = tokens.argmax(dim=-1)
    for i in torch.nonzero(eot >= length).flatten().tolist():
        what = f"class name {names[i]!r}" if names is not None else f"text {texts[i]!r}"
        n = "more than " + str(4 * length) if eot[i] == 4 * length - 1 else str(int(eot[i]) + 1)
        raise IIMError(f"{what} makes the prompt {texts[i]!r} {n} tokens long; the text encoder "
                       f"takes at most {length} (shorten the name or use fewer context tokens)")
    return tokens[:, :length]


def model_name(model) -> str:
    """The open_clip name whose tokenizer ``model`` uses (every open_clip CLIP uses the OpenAI BPE
    tokenizer unless its config says otherwise)."""
    return getattr(model, "iim_model_name", "ViT-B-16")
