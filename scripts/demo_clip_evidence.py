"""Where does a demo CLIP keep the label's evidence? (issue #23; ID probe images only, no OOD image)

    python scripts/demo_clip_evidence.py src/iim/weights/iim-demo.safetensors [more.safetensors ...]

For each weights file (the tower as its metadata records it: with or without the late class token), on the
400 ID-style probe images the training script evaluates on, the local feature of SPEC §1 is split into its
two parts, the residual stream ``x`` that enters the last block and the last block's value term
``out_proj(value(ln_1(x)))``, each read through ``ln_post`` and ``proj`` like the local feature itself. Per
patch kind (dominant object / distractor / background texture) it prints their mean cosine with the label's
hand-written prompt, the share of the label's top-8 patches that lie on the object when ranked by each
part, the class token's attention in the last block (1 = uniform over the 64 patches), where the local
feature's top-8 patches lie (object, its border, a distractor, background), and how often the hand-written
prompts give the object's patches the right colour and the right shape.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from iim.demo import world as W
from iim.models import register_model_configs, use_late_class_token
from iim.text import global_prototypes
from iim.features import _run_to_last_block, encode_image

KINDS = ("dominant", "distractor", "background")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def load(path: str):
    import open_clip
    from safetensors import safe_open
    from safetensors.torch import load_file
    register_model_configs()
    with safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {}).get("iim_demo", "{}"))
    cfg = open_clip.get_model_config("iim-demo")
    vision = dict(cfg["vision_cfg"], layers=meta.get("vision_layers") or cfg["vision_cfg"]["layers"])
    logging.getLogger().setLevel(logging.ERROR)       # open_clip's "initialized randomly": the weights follow
    model = open_clip.create_model("iim-demo", pretrained=None, vision_cfg=vision)
    if meta.get("late_class_token", False):   # before loading: registers are a parameter of the late tower
        use_late_class_token(model, meta.get("class_blocks", 1), meta.get("registers", 0))
    model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    model.iim_model_name = "iim-demo"
    return model.eval(), meta


@torch.no_grad()
def evidence(model, per_class: int = 20) -> None:
    n = len(W.ID_CLASSES)
    samples = [W.id_sample(0, "probe", i, c) for c in range(n) for i in range(per_class)]
    labels = torch.tensor([c for c in range(n) for _ in range(per_class)])
    kind = torch.tensor([[0 if lab == s.dominant.concept else 2 if lab.endswith(" texture") else 1
                          for lab in s.patch_labels()] for s in samples])
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
    v = model.visual
    x = _run_to_last_block(v, (images - MEAN) / STD)
    blk = v.transformer.resblocks[-1]
    h0 = blk.ln_1(x)
    width = x.shape[-1]
    value = blk.attn.out_proj(F.linear(h0, blk.attn.in_proj_weight[2 * width:], blk.attn.in_proj_bias[2 * width:]))
    _, att = blk.attn(h0[:, :1], h0, h0, need_weights=True)              # the class token's query
    y = x + blk.ls_1(value)
    y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
    protos = F.normalize(global_prototypes(model, list(W.ID_CLASSES)), dim=-1)

    def label_cos(z, centre=True):   # through ln_post's scale (and its shift, for whole residual vectors) and proj
        f = v.ln_post(z) if centre else (z - z.mean(-1, keepdim=True)) * v.ln_post.weight
        f = F.normalize(f @ v.proj, dim=-1)[:, 1:]
        return (f @ protos.T).gather(2, labels.view(-1, 1, 1).expand(-1, f.shape[1], 1)).squeeze(2)

    parts = {"residual x": label_cos(x), "value term": label_cos(value, centre=False), "local feature": label_cos(y)}
    for name, c in parts.items():
        on = (kind.gather(1, c.topk(8, dim=1).indices) == 0).float().mean()
        print(f"  {name:14s} cos(label) " + "  ".join(f"{k} {c[kind == i].mean():+.3f}" for i, k in enumerate(KINDS))
              + f"   top-8 on object {on:.1%}")
    a = att[:, 0, 1:] * kind.shape[1]
    print("  class token's last-block attention (x uniform): "
          + "  ".join(f"{k} {a[kind == i].mean():.2f}" for i, k in enumerate(KINDS)))
    # where the local feature's top-8 patches lie: on the object, on its border, on a distractor, on background
    cover = [s.patch_coverage() for s in samples]                       # [n_objects, HW], dominant last
    where = torch.tensor(np.stack([np.select([c[-1] >= 0.4, c[-1] >= 0.1, c[:-1].max(0, initial=0) >= 0.1], [0, 1, 2], 3)
                                   for c in cover]))
    top = where.gather(1, parts["local feature"].topk(8, dim=1).indices)
    print("  local feature's top-8: " + "  ".join(f"{k} {(top == i).float().mean():.1%}" for i, k in
                                                  enumerate(("object", "its border (10-40% cover)", "distractor", "background"))))
    # what the hand-written prompts read on the object's patches: its colour, its shape (ID_CLASSES is colour-major)
    local = F.normalize(v.ln_post(y) @ v.proj, dim=-1)[:, 1:]
    pred, dom, n_shapes = (local @ protos.T).argmax(-1), kind == 0, len(W.ID_SHAPES)
    right = lambda same: (same & dom).sum().item() / dom.sum().item()
    print(f"  dominant patches, hand-written prompts: right colour {right(pred // n_shapes == labels[:, None] // n_shapes):.1%}"
          f" (chance 25%), right shape {right(pred % n_shapes == labels[:, None] % n_shapes):.1%} (chance 20%)")
    # the same for visual prototypes: class means of the dominant patches of the next images of the stream
    fit = [W.id_sample(0, "probe", i, c) for c in range(n) for i in range(per_class, 2 * per_class)]
    _, lf = encode_image(model, (torch.from_numpy(np.stack([s.image for s in fit])).permute(0, 3, 1, 2).float() / 255
                                 - MEAN) / STD)
    domf = torch.tensor(np.stack([[lab == s.dominant.concept for lab in s.patch_labels()] for s in fit])).float()
    lf = F.normalize(lf, dim=-1) * domf[..., None]
    visual = F.normalize(lf.sum(1).view(n, per_class, -1).sum(1), dim=-1)
    vpred = (local @ visual.T).argmax(-1)
    print(f"  dominant patches, visual prototypes:  right colour {right(vpred // n_shapes == labels[:, None] // n_shapes):.1%}"
          f", right shape {right(vpred % n_shapes == labels[:, None] % n_shapes):.1%}, both {right(vpred == labels[:, None]):.1%}"
          f" (hand-written both {right(pred == labels[:, None]):.1%})")


def main(paths):
    if any(p in ("-h", "--help") for p in paths):
        print(__doc__)
        return
    for p in paths:
        if not os.path.isfile(p):
            sys.exit(f"demo_clip_evidence: no weights file {p}")
        model, meta = load(p)
        print(f"{p} (late class token: {meta.get('late_class_token', False)}, class blocks {meta.get('class_blocks', 1)}, registers {meta.get('registers', 0)}, steps {meta.get('steps')}, "
              f"seed {meta.get('seed')})")
        evidence(model)


if __name__ == "__main__":
    main(sys.argv[1:] or ["src/iim/weights/iim-demo.safetensors"])
