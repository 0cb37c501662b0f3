"""The attention kernels of the packed encoder: the backends (``attention=``), right-padded segments
of prompts (:class:`Segment`), the row gather with a summing backward (:class:`Rows`), plain-matmul
attention and torch's FlexAttention."""
from __future__ import annotations

import contextlib
import inspect
import warnings

import torch

from ..errors import IIMError

try:   # causal mask aligned to the last key: lets CUDA use flash attention (torch >= 2.3)
    from torch.nn.attention.bias import causal_lower_right
except ImportError:  # pragma: no cover
    causal_lower_right = None

SDPA_BACKENDS = ("auto", "math", "efficient", "flash", "bmm", "flex", "blocks")
ROW_BLOCK = 64        # attention="blocks": packed rows per query / key block (divides FLEX_BLOCK)

_FLEX = {}


def has_flex_attention() -> bool:
    """Whether this torch's FlexAttention takes explicit sequence lengths (2.6 or newer)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:
        return False
    return "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters


def flex_attention_for(device: torch.device):
    """torch's flex_attention: compiled on CUDA (fused block-sparse kernels, compiled once per shape)
    or inside an already compiled encoder; eager elsewhere (an unfused reference that materialises
    the scores: for checks only)."""
    from torch.nn.attention.flex_attention import flex_attention
    if device.type != "cuda" and torch.is_grad_enabled():
        raise IIMError(f"attention='flex' trains on CUDA only (torch's FlexAttention has no {device.type} "
                       f"backward); use attention='auto' on this device")
    if torch.compiler.is_compiling():
        return flex_attention
    if device.type not in _FLEX:
        if device.type == "cuda":   # one compile per token count (an encoder has one: fine in training;
            # a process building encoders of many sizes passes torch's recompile limit: see test_cuda.py)
            _FLEX["cuda"] = torch.compile(flex_attention, dynamic=False)
        else:
            def eager(*args, **kwargs):
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
                    return flex_attention(*args, **kwargs)
            _FLEX[device.type] = eager
    return _FLEX[device.type]


def bmm_attention(q, k, v, bias):
    """softmax(q k^T / sqrt(d) + bias) v with plain batched matmuls; ``bias`` [queries, keys] is 0 / -inf."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


def sdpa_backend(name: str):
    """The context that makes ``F.scaled_dot_product_attention`` use backend ``name`` (``auto``: torch picks)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "flash": SDPBackend.FLASH_ATTENTION}[name])


class Segment:
    """Prompts batched for attention: row i gathers the packed rows ``rows[i]`` (right-padded with its
    last row) as queries, keys and values; with ``n_prefix``, the shared prefix (packed rows
    ``0..n_prefix-1``) comes before every row's keys and values, and the queries see it whole, then
    their own tokens causally."""

    def __init__(self, rows, n_prefix: int, device):
        self.n, self.n_prefix = len(rows), n_prefix
        self.n_queries = max(len(r) for r in rows)
        self.n_keys = n_prefix + self.n_queries
        self.index = torch.tensor([r + r[-1:] * (self.n_queries - len(r)) for r in rows], device=device).flatten()
        self.mask = None                          # None: causal attention over the row
        # the same visibility as an additive bias, for attention="bmm": query i sees keys 0..n_prefix+i
        visible = torch.ones(self.n_queries, self.n_keys, dtype=torch.bool, device=device).tril(n_prefix)
        self.bias = torch.zeros(visible.shape, device=device).masked_fill_(~visible, float("-inf"))
        if n_prefix:
            self.mask = (causal_lower_right(self.n_queries, self.n_keys) if causal_lower_right else
                         torch.ones(self.n_queries, self.n_keys, dtype=torch.bool, device=device).tril(n_prefix))


class Rows(torch.autograd.Function):
    """``x[index]`` along dim 0. The backward sums the gradients of repeated rows (the shared prefix is
    read by every class) with ``index_add_``, several times faster than advanced indexing's
    ``index_put_`` on CPU, and in float32 under half/bf16 autocast, as a reduction would."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        low = grad.dtype in (torch.float16, torch.bfloat16)
        acc = grad.new_zeros((ctx.n_rows,) + grad.shape[1:], dtype=torch.float32 if low else grad.dtype)
        return acc.index_add_(0, index, grad.to(acc.dtype)).to(grad.dtype), None
