"""Which prompt-encoder variants a benchmark times (shared by text_encoder.py and train_step.py)."""
from __future__ import annotations

import torch


def add_variant_options(parser, attention_help: str) -> None:
    """The ``--attention`` / ``--compile`` options that :func:`variants` reads."""
    parser.add_argument("--attention", default="auto", help="comma list of prompt encoder attention kernels "
                        "(auto, math, efficient, flash, bmm, blocks, flex; flex: CUDA only)" + attention_help)
    parser.add_argument("--compile", default="", help="comma list of torch.compile modes (default, "
                        "reduce-overhead, max-autotune-no-cudagraphs) to also time every --attention kernel "
                        "with, or of KERNEL+MODE items (flex+default: that kernel only)")


def variants(attention: str, compile: str) -> list[tuple[str, str | None]]:
    """``(kernel, torch.compile mode or None)`` pairs, in order, without repeats.

    ``attention``: comma list of kernels, each timed eagerly (``auto,flex``). ``compile``: comma list of
    items ``MODE`` (every kernel of ``attention`` under that mode) or ``KERNEL+MODE`` (that one only),
    e.g. ``flex+default,flex+reduce-overhead``.
    """
    kernels = [k for k in attention.split(",") if k]
    out = [(k, None) for k in kernels]
    for item in filter(None, compile.split(",")):
        kernel, plus, mode = item.partition("+")
        out += [(k, mode) for k in kernels] if not plus else [(kernel, mode)]
    return list(dict.fromkeys(out))


def variant_label(kernel: str, mode: str | None) -> str:
    return kernel + (f"+{mode}" if mode else "")


def allow_many_compiles(limit: int = 64) -> None:
    """A benchmark compiles the same code (the encoder's forward, the loop's step) once per variant;
    past torch's recompile limit (8) it would silently run eager code under a "compiled" label."""
    import torch._dynamo
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))
