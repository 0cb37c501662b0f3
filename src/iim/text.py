"""Text side: frozen global prototypes and the learnable prompt encoder (SPEC §2)."""
from __future__ import annotations

import open_clip
import torch

GLOBAL_TEMPLATE = "a photo of a {}."


@torch.no_grad()
def global_prototypes(model, classnames, *, template: str = GLOBAL_TEMPLATE, batch_size: int = 256,
                      device=None) -> torch.Tensor:
    """Frozen hand-written prototypes ``T("a photo of a {c}.")`` -> float32 ``[C, D]``, unnormalised."""
    tokenizer = open_clip.get_tokenizer(_model_name(model))
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(classnames), batch_size):
        tokens = tokenizer([template.format(c) for c in classnames[i:i + batch_size]]).to(device)
        out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.text_projection.shape[1])


def _model_name(model) -> str:
    # every open_clip CLIP uses the OpenAI BPE tokenizer unless its config says otherwise
    return getattr(model, "iim_model_name", "ViT-B-16")
