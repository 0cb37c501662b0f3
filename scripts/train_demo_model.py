"""Train the demo CLIP ``iim-demo`` on the demo world from whole images and captions only (issue #23).

The shipped weights come from the first command below (README, "The demo CLIP"; 42 min at one thread,
sharing the 2 cores with another run); the seed and the recipe reproduce a run bit for bit at the same
thread count (``--class-blocks 2`` is the default, spelt out as the weights' metadata records it).

    python scripts/train_demo_model.py --seed 0 --threads 1 --workers 2 --checkpoint-every 500 --eval-every 1500 --class-blocks 2  # CPU
    python scripts/train_demo_model.py --device cuda --seed 0 --out src/iim/weights/iim-demo.safetensors  # GPU

The model is an open_clip CLIP (config ``src/iim/model_configs/iim-demo.json``: 64 px images, patch 8 ->
64 patch tokens, a 6-layer ViT of width 128, the standard 77-token CLIP text tower of width 96) whose image
tower differs in one place: its class token joins late (:class:`iim.models.LateClassTokenViT`, CaiT's class
attention): no patch token ever attends to it, and it reads the patches in the last ``--class-blocks`` blocks
only (default 2, as iim builds iim-demo; ``--no-late-class-token`` trains open_clip's ViT for comparison).
With open_clip's ViT the label's evidence ends up in the residual stream of the background tokens, not in
the object's patch features; with the last block alone reading the patches, the hand-written prompts read
the object's patches almost as well as visual prototypes do (README, issue #23). ``--registers N`` adds N
register tokens (Darcet et al., 2024), scratch space the patches share, so that background patches need not
hold the image's global evidence. It is trained from scratch on captioned images of the demo world
(:func:`iim.demo.world.web_sample`: any of the 80 shape x colour concepts, cluttered scenes and textures --
never a benchmark image).

Objective: image-level only, as CLIP's -- no loss ever reads a patch token (issue #23).

* **CLIP loss** over the batch's B images and T texts: the B web captions (70 % of object images' captions
  also name a distractor, as web captions name more than the main subject), plus the world's 87 concept
  captions ("a picture of a red star.", random template per step) and 18 attribute captions naming one
  attribute only (shape-only "a photo of a star.", colour-only "a photo of a red shape."). A text is a
  positive of every image it describes (a full concept: same concept; an attribute caption: every object
  of that shape, or colour); target mass is spread evenly over the positives, symmetric cross-entropy at
  the learned logit scale. So every image meets every same-colour, other-shape caption as a hard negative
  in every step, and the shape-only captions make the text tower carry the shape word on its own.
* **Random-context concept prompts** (``--no-context-prompts`` leaves them out): the 87 concepts also as
  "X X ... X {concept}." with 16 fresh N(0, 0.02) context vectors per step (SPEC §2's initialisation), as
  captions of their concept, so the text tower keeps classes apart under a prompt learner's random start.
* **Shape loss** (weight ``--shape-weight``): each object image against the 10 concept captions of its
  own colour only (its hard negatives), so colour cannot help: a pure shape signal for both towers
  (with and without the random context).
* Optional FLIP-style token dropping (``--token-keep``), training only. The logit scale is learned from
  open_clip's 1 / 0.07 (``--init-logit-scale`` another start), clamped at 100.

Training images are generated once into an in-memory pool (``--pool``, multiprocessing ``--workers``)
and sampled with horizontal flips. Each distinct text of a step is encoded once, short and long ones
apart (exact under the causal mask, and most of the text tower's cost saved). ``--checkpoint-every N``
writes model, optimiser, schedule and random states atomically (default ``<out>.ckpt``); ``--resume``
continues from there and ends bit for bit where an uninterrupted run ends (same threads; tested in
``tests/test_train_demo_model.py``). ``--eval-every N`` prints the ID-style figures during training.

At the end the script prints, on ID-style images from a stream the benchmark never uses (20 demo
classes, "a photo of a {c}."), the zero-shot accuracy and the shape / colour accuracy of its
predictions, the accuracy of dominant-object patches classified from their local features, the
best-patch image accuracy, and the mean cosine of same-colour / different-shape and same-shape /
different-colour prototype pairs, and records them with the recipe and command in the safetensors
metadata. It computes no OOD number.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from iim.demo import world as W
from iim.features import encode_image
from iim.models import LATE_CLASS_TOKEN, register_model_configs, use_late_class_token
from iim.text import CTX_INIT_STD, encode_prompts_reference, id_prompt

MODEL = "iim-demo"
WORLD_SEED_OFFSET = 1000        # the web images of training seed s come from world seed 1000 + s
EVAL_SEED, EVAL_STREAM = 0, "probe"
CONCEPT_INDEX = {c: i for i, c in enumerate(W.WEB_CONCEPTS)}
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)   # open_clip's OpenAI mean/std
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
encode_image_grad = encode_image.__wrapped__          # the same SPEC §1 features, with gradients


# --------------------------------------------------------------------------------------------------
# data

def _make_chunk(args):
    seed, start, stop = args
    images = np.empty((stop - start, W.IMAGE_SIZE, W.IMAGE_SIZE, 3), np.uint8)
    concepts = np.empty(stop - start, np.int16)
    captions = []
    for j, i in enumerate(range(start, stop)):
        s = W.web_sample(seed, i)
        images[j] = s.image
        concepts[j] = CONCEPT_INDEX[W.web_concept(s)]
        captions.append(s.caption)
    return images, concepts, captions


def make_pool(seed: int, n: int, workers: int, chunk: int = 1000):
    """``n`` captioned web images of world seed ``seed``: uint8 images [n, 3, 64, 64], concept ids [n],
    captions (list). Only image-level labels: nothing below the image is ever a training target."""
    jobs = [(seed, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as p:
            parts = p.map(_make_chunk, jobs)
    else:
        parts = [_make_chunk(j) for j in jobs]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    concepts = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    captions = [c for p in parts for c in p[2]]
    return images, concepts, captions


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> the model's input (same as its open_clip eval preprocess on a 64 px image)."""
    x = images_u8.float() / 255.0
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the images where ``mask`` is set."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


class KeepTokens(nn.Module):
    """FLIP-style token dropping (Li et al., 2023), training only: each image keeps a random
    ``keep`` fraction of its patch tokens (the CLS token always) before the transformer, drawn from the
    script's own generator (so a resumed run repeats it). The image-level loss then has to find its
    evidence in whichever patches are left, as in CLIP trained with token dropping; at evaluation and
    in the shipped model there is no dropping (open_clip's ``patch_dropout`` slot is an identity)."""

    def __init__(self, keep: float, generator: torch.Generator):
        super().__init__()
        self.keep, self.generator = keep, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep >= 1:
            return x
        b, n = x.shape[0], x.shape[1] - 1
        k = max(1, int(round(self.keep * n)))
        order = torch.rand(b, n, generator=self.generator).argsort(dim=1)[:, :k].to(x.device) + 1
        rows = torch.cat([torch.zeros(b, 1, dtype=order.dtype, device=x.device), order], dim=1)
        return x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))


class Tokens:
    """Tokenise captions once (the world has a few thousand distinct captions)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            for c, t in zip(missing, self.tokenizer(missing)):
                self.cache[c] = t
        return torch.stack([self.cache[c] for c in captions])


def encode_text_fast(model, tokens: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
    """``model.encode_text`` on tokens cut after the longest caption's EOT: exact under the causal mask
    (position i sees only positions <= i), and several times cheaper than running all 77 positions.
    ``ctx`` [n_ctx, W]: token embeddings put in place of positions 1 .. n_ctx (CoOp's context vectors)."""
    n = int(tokens.argmax(-1).max()) + 1
    t = tokens[:, :n]
    x = model.token_embedding(t)
    if ctx is not None:
        x = torch.cat([x[:, :1], ctx.to(x.dtype).expand(len(t), -1, -1), x[:, 1 + len(ctx):]], dim=1)
    x = x + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(len(t), device=t.device), t.argmax(-1)]
    return x @ model.text_projection


def concept_prompts(rng: np.random.Generator) -> list[str]:
    """One caption per concept of :data:`W.WEB_CONCEPTS` with a random template (in-batch hard negatives)."""
    out = []
    for c in W.WEB_CONCEPTS:
        if c.endswith(" texture"):
            out.append(W.TEXTURE_TEMPLATES[rng.integers(len(W.TEXTURE_TEMPLATES))].format(c[:-len(" texture")]))
        elif c == "cluttered scene":
            out.append(W.SCENE_CAPTIONS[0])
        else:
            out.append(W.OBJECT_TEMPLATES[rng.integers(len(W.OBJECT_TEMPLATES))].format(c))
    return out


def attribute_prompts(rng: np.random.Generator) -> list[str]:
    """Shape-only ("a photo of a star.", one per shape) and colour-only ("a photo of a red shape.", one per
    colour) captions, random template: they name one attribute, so only that attribute can match them."""
    pick = lambda: W.OBJECT_TEMPLATES[rng.integers(len(W.OBJECT_TEMPLATES))]
    return [pick().format(s) for s in W.SHAPES] + [pick().format(f"{c} shape") for c in W.COLOURS]


N_CTX = 16        # CoOp's context length, the prompt learner's (SPEC §2)


def context_prompts(model, tokens: "Tokens", ctx: torch.Tensor, device) -> torch.Tensor:
    """The 87 concepts as a prompt learner starts them: "X X ... X {concept}." with the X embeddings
    replaced by ``ctx`` ([N_CTX, W], N(0, 0.02) as SPEC §2 initialises contexts; the same for every
    concept, like CoOp's unified context). Seen in training as captions of their concept, so the text
    tower learns to read the class name behind any context -- as CLIP's text tower does under CoOp's
    random start -- instead of mapping every such prompt to one vector."""
    t = tokens([id_prompt(c, N_CTX) for c in W.WEB_CONCEPTS]).to(device)
    return encode_text_fast(model, t, ctx.to(device))


N_OBJ = len(W.CONCEPTS)
# what each extra text says: full concept id (>= 0) or -1 for an attribute prompt, its colour, its shape (-1: any)
# (concept captions, attribute captions, then the context prompts: a concept each)
_N_ATTR = len(W.SHAPES) + len(W.COLOURS)
_ALL = list(range(len(W.WEB_CONCEPTS)))
EXTRA_CONCEPT = torch.tensor(_ALL + [-1] * _N_ATTR + _ALL)
EXTRA_COLOUR = torch.tensor([-1] * (len(W.WEB_CONCEPTS) + len(W.SHAPES)) + list(range(len(W.COLOURS))) + [-1] * len(_ALL))
EXTRA_SHAPE = torch.tensor([-1] * len(W.WEB_CONCEPTS) + list(range(len(W.SHAPES))) + [-1] * len(W.COLOURS)
                           + [-1] * len(_ALL))


def matches(image_concept: torch.Tensor, text_concept: torch.Tensor, text_colour: torch.Tensor,
            text_shape: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: does text t describe image i's concept? A full-concept text matches its concept; an
    attribute text matches every object concept with that colour (or shape)."""
    ic = image_concept[:, None]
    obj = ic < N_OBJ
    colour_ok = (text_colour[None] < 0) | (ic // len(W.SHAPES) == text_colour[None])
    shape_ok = (text_shape[None] < 0) | (ic % len(W.SHAPES) == text_shape[None])
    return torch.where(text_concept[None] >= 0, ic == text_concept[None], obj & colour_ok & shape_ok)


def encode_texts(model, tokens: "Tokens", texts: list[str], device, *, split: int = 24) -> torch.Tensor:
    """``encode_text_fast`` of ``texts``, each distinct text once, short ones (<= ``split`` tokens) apart
    from long ones: the same values, a fraction of the cost (most captions are ~10 tokens, a few ~50)."""
    uniq = list(dict.fromkeys(texts))
    t = tokens(uniq).to(device)
    length = t.argmax(-1)
    out = None
    for group in (length <= split, length > split):
        rows = group.nonzero().flatten()
        if len(rows):
            e = encode_text_fast(model, t[rows])
            out = e.new_empty(len(uniq), e.shape[1]) if out is None else out
            out = out.index_copy(0, rows, e)
    where = {c: i for i, c in enumerate(uniq)}
    return out[torch.tensor([where[c] for c in texts], device=device)]


# --------------------------------------------------------------------------------------------------
# losses

def clip_loss(img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor):
    """Symmetric contrastive loss over B images and T >= B texts; ``pos`` [B, T] marks every text that
    describes an image (target mass spread evenly over them). Texts no image of the batch matches only
    serve as negatives of the image -> text direction."""
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    pos = pos.float()
    i2t = F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
    has = pos.sum(0) > 0
    t2i = F.cross_entropy(logits.T[has], (pos.T / pos.sum(0)[:, None].clamp_min(1))[has])
    return 0.5 * (i2t + t2i)


def shape_loss(img: torch.Tensor, concept_txt: torch.Tensor, image_concept: torch.Tensor, scale: torch.Tensor):
    """Cross-entropy of each object image against the captions of the concepts of its own colour only
    (its hard negatives: same colour, another shape), so colour cannot help and only shape is learnt."""
    obj = image_concept < N_OBJ
    if not obj.any():
        return img.new_zeros(())
    n_shapes = len(W.SHAPES)
    logits = scale * F.normalize(img[obj], dim=-1) @ F.normalize(concept_txt[:N_OBJ], dim=-1).T   # [b, 80]
    colour = image_concept[obj] // n_shapes                  # CONCEPTS is colour-major: id = colour * 10 + shape
    same_colour = logits.view(-1, len(W.COLOURS), n_shapes)[torch.arange(len(colour), device=img.device), colour]
    return F.cross_entropy(same_colour, image_concept[obj] % n_shapes)


# --------------------------------------------------------------------------------------------------
# evaluation (ID-style images only; no OOD numbers here)

TRAIN_K = 8          # the demo's IIM top-k (iim.demo.run.DemoSettings.k): the on-object check ranks this many
CTX_DRAWS = 5        # random contexts drawn for the learned-prompt separation check


def _local_features(model, samples, device):
    x = normalise(torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).to(device))
    g, l = [], []
    for i in range(0, len(x), 256):
        gi, li = encode_image(model, x[i:i + 256])
        g.append(gi.float()), l.append(li.float())
    return F.normalize(torch.cat(g), dim=-1), F.normalize(torch.cat(l), dim=-1)


def _dominant_patches(samples, device) -> torch.Tensor:
    """[N, HW] bool: the patches whose label (>= 40 % cover) is the image's dominant object."""
    return torch.tensor(np.stack([[lab == s.dominant.concept for lab in s.patch_labels()] for s in samples]),
                        device=device)


def max_offdiag(p: torch.Tensor) -> float:
    """Largest pairwise cosine among the rows of ``p`` (normalised)."""
    cos = p @ p.T
    return cos.masked_fill(torch.eye(len(p), dtype=torch.bool, device=p.device), -2).max().item()


@torch.no_grad()
def evaluate(model, tokens: Tokens, *, per_class: int = 20, device="cpu") -> dict:
    """ID-style figures on ``per_class`` images per demo class, from a stream the benchmark never uses
    (issue #23's fidelity targets; no OOD image is involved):

    * ``zero_shot_acc`` (global feature vs "a photo of a {c}."), with the shape / colour accuracy of
      those predictions, and ``best_patch_acc`` (image classified by its best-matching patch);
    * ``patch_acc``: dominant-object patches classified from their local (value-path) features by the
      hand-written prompts; ``visual_patch_acc``: the same patches classified by visual prototypes (class
      means of dominant-patch local features fit on the next ``per_class`` images of each class of the
      stream, never the evaluated ones) -- the "imperfect local prototypes" gap is their difference;
    * ``topk_on_object``: of the TRAIN_K patches ranked highest by the label's hand-written prompt, the
      fraction that lies on the dominant object (what IIM's mining picks as positives);
    * ``ctx_max_cos``: max pairwise cosine of the 20 prototypes of "X X ... X {c}." with N(0, 0.02)
      contexts (16 vectors, the same for all classes, CTX_DRAWS draws; the largest over draws), i.e. how
      well the text tower keeps the classes apart where IIM's training starts; ``ctx_mean_cos`` their mean;
    * the mean cosine of same-colour / different-shape and same-shape / different-colour pairs of the
      hand-written prototypes."""
    was_training = model.training
    model.eval()
    n = len(W.ID_CLASSES)
    samples = [W.id_sample(EVAL_SEED, EVAL_STREAM, i, c) for c in range(n) for i in range(per_class)]
    fit = [W.id_sample(EVAL_SEED, EVAL_STREAM, i, c) for c in range(n) for i in range(per_class, 2 * per_class)]
    labels = torch.tensor([c for c in range(n) for _ in range(per_class)], device=device)
    protos = F.normalize(model.encode_text(tokens([f"a photo of a {c}." for c in W.ID_CLASSES]).to(device)).float(), dim=-1)
    g, l = _local_features(model, samples, device)
    pred = (g @ protos.T).argmax(1)
    n_shapes = len(W.ID_SHAPES)                        # ID_CLASSES is colour-major: class = colour * 5 + shape
    sim = l @ protos.T                                                  # [N, HW, C]
    best_patch = sim.max(1).values.argmax(1) == labels
    dom = _dominant_patches(samples, device)
    patch_ok = (sim.argmax(-1) == labels[:, None]) & dom
    # visual prototypes: class means of the dominant patches of other images of the stream
    _, lf = _local_features(model, fit, device)
    domf = _dominant_patches(fit, device).float()
    fit_labels = torch.tensor([c for c in range(n) for _ in range(per_class)], device=device)
    per_image = (lf * domf[..., None]).sum(1)                           # [N, D] sum of dominant patches
    counts = torch.zeros(n, device=device).index_add_(0, fit_labels, domf.sum(1))
    visual = F.normalize(torch.zeros(n, lf.shape[-1], device=device).index_add_(0, fit_labels, per_image)
                         / counts.clamp_min(1)[:, None], dim=-1)
    visual_ok = ((l @ visual.T).argmax(-1) == labels[:, None]) & dom
    # mining's positives: the label prompt's top-k patches
    label_sim = sim.gather(2, labels.view(-1, 1, 1).expand(-1, sim.shape[1], 1)).squeeze(2)    # [N, HW]
    top = label_sim.topk(TRAIN_K, dim=1).indices
    on_object = dom.gather(1, top).float().mean().item()
    # learned-prompt start: random contexts
    width = model.token_embedding.weight.shape[1]
    ctx_max = []
    for d in range(CTX_DRAWS):
        ctx = torch.randn(N_CTX, width, generator=torch.Generator().manual_seed(d)) * CTX_INIT_STD
        p, _ = encode_prompts_reference(model, list(W.ID_CLASSES), ctx.to(device))
        p = F.normalize(p.float(), dim=-1)
        ctx_max.append(max_offdiag(p))
    cls = torch.arange(n, device=device)
    same_colour = (cls[:, None] // n_shapes == cls[None] // n_shapes) & (cls[:, None] != cls[None])
    same_shape = (cls[:, None] % n_shapes == cls[None] % n_shapes) & (cls[:, None] != cls[None])
    cos = protos @ protos.T
    if was_training:
        model.train()
    return {"zero_shot_acc": (pred == labels).float().mean().item(),
            "shape_acc": (pred % n_shapes == labels % n_shapes).float().mean().item(),
            "colour_acc": (pred // n_shapes == labels // n_shapes).float().mean().item(),
            "best_patch_acc": best_patch.float().mean().item(),
            "patch_acc": (patch_ok.sum() / dom.sum()).item(),
            "visual_patch_acc": (visual_ok.sum() / dom.sum()).item(),
            "topk_on_object": on_object, "topk": TRAIN_K,
            "ctx_max_cos": max(ctx_max), "ctx_mean_cos": sum(ctx_max) / len(ctx_max),
            "cos_same_colour": cos[same_colour].mean().item(), "cos_same_shape": cos[same_shape].mean().item(),
            "eval_images": len(samples)}


TARGETS = {   # issue #23's ID-only fidelity targets: (what, test)
    "zero-shot >= 85%": lambda a: a["zero_shot_acc"] >= 0.85,
    "hand-written patches >= 10 points below visual prototypes":
        lambda a: a["visual_patch_acc"] - a["patch_acc"] >= 0.10,
    "hand-written dominant-patch accuracy >= 25%": lambda a: a["patch_acc"] >= 0.25,
    "top-k patches on the object >= 70%": lambda a: a["topk_on_object"] >= 0.70,
    "random-context prototypes max cosine <= 0.9": lambda a: a["ctx_max_cos"] <= 0.9,
}


def report(acc: dict) -> str:
    return (f"zero-shot {acc['zero_shot_acc']:.1%} (shape {acc['shape_acc']:.1%}, colour {acc['colour_acc']:.1%}), "
            f"dominant-patch hand-written {acc['patch_acc']:.1%} / visual {acc['visual_patch_acc']:.1%}, "
            f"top-{acc['topk']} on object {acc['topk_on_object']:.1%}, best-patch {acc['best_patch_acc']:.1%}, "
            f"random-context max cosine {acc['ctx_max_cos']:.3f} (mean of draws {acc['ctx_mean_cos']:.3f}), "
            f"prototype cosine same colour {acc['cos_same_colour']:.3f} / same shape {acc['cos_same_shape']:.3f}")


def targets_met(acc: dict) -> dict:
    return {name: bool(test(acc)) for name, test in TARGETS.items()}


# --------------------------------------------------------------------------------------------------

def build_model(seed: int, device, vision_layers: int | None = None, *, late_class_token: bool = True,
                class_blocks: int = LATE_CLASS_TOKEN[MODEL][0], registers: int = LATE_CLASS_TOKEN[MODEL][1]):
    """The iim-demo CLIP at random init (seed ``seed``); ``vision_layers`` replaces its config's image-tower
    depth (None: the config's), everything else as in ``src/iim/model_configs/iim-demo.json``, with the late
    class token of :class:`iim.models.LateClassTokenViT` unless ``late_class_token`` is False."""
    import open_clip
    register_model_configs()
    torch.manual_seed(seed)
    kw = {}
    if vision_layers is not None:
        kw["vision_cfg"] = dict(open_clip.get_model_config(MODEL)["vision_cfg"], layers=vision_layers)
    model = open_clip.create_model(MODEL, pretrained=None, **kw)
    if late_class_token:
        use_late_class_token(model, class_blocks, registers)
    return model.to(device)


def save(model, path: str, meta: dict) -> None:
    """fp16 safetensors, written atomically, with the recipe and accuracies in its metadata."""
    from safetensors.torch import save_file
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(state, tmp, metadata={"iim_demo": json.dumps(meta)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


RECIPE_KEYS = ("seed", "device", "steps", "batch", "pool", "lr", "wd", "warmup", "shape_weight", "vision_layers",
               "late_class_token", "class_blocks", "registers", "init_logit_scale",
               "attribute_prompts", "context_prompts", "token_keep")


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a stopped run never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="src/iim/weights/iim-demo.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="default: 6000 on cuda, 4500 on cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 512 on cuda, 32 on cpu")
    ap.add_argument("--pool", type=int, default=None, help="pre-generated images; default 400k on cuda, 30k on cpu")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    ap.add_argument("--vision-layers", type=int, default=None,
                    help="image-tower depth (default: the iim-demo config's 6); a shallower tower keeps the "
                         "patch tokens more local (README, issue #23 probes)")
    ap.add_argument("--no-late-class-token", dest="late_class_token", action="store_false",
                    help="let the class token take part in every image block, as in open_clip's ViT (for comparison "
                         "only: iim runs iim-demo with the late class token, README 'The demo CLIP')")
    ap.add_argument("--class-blocks", type=int, default=LATE_CLASS_TOKEN[MODEL][0],
                    help="with the late class token: in how many of the last blocks it reads the patches "
                         "(default: iim's iim-demo, %(default)s; 1: the last block only)")
    ap.add_argument("--registers", type=int, default=LATE_CLASS_TOKEN[MODEL][1],
                    help="with the late class token: register tokens, scratch space the patches share (Darcet et "
                         "al., 2024), so that background patches need not hold the image's global evidence (default: iim's "
                         "iim-demo, %(default)s)")
    ap.add_argument("--init-logit-scale", type=float, default=None,
                    help="starting value of the learned logit scale (default: open_clip's 1 / 0.07; it stays "
                         "clamped at 100, where OpenAI's CLIP ends its training)")
    ap.add_argument("--token-keep", type=float, default=1.0,
                    help="fraction of patch tokens each training image keeps (FLIP-style token dropping; 1: none)")
    ap.add_argument("--no-context-prompts", dest="context_prompts", action="store_false",
                    help="leave out the random-context concept prompts ('X X ... X {concept}.')")
    ap.add_argument("--shape-weight", type=float, default=1.0,
                    help="weight of the shape loss (each object image against its own colour's concept captions)")
    ap.add_argument("--no-attribute-prompts", dest="attribute_prompts", action="store_false",
                    help="leave out the shape-only / colour-only captions")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--eval-per-class", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=0, help="print the ID-style figures every N steps (0: at the end only)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--checkpoint", default=None, help="checkpoint file; default: <out>.ckpt")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="write the checkpoint every N steps (0: never)")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint (same recipe; same result)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (6000 if cuda else 4500)
    args.batch = args.batch or (512 if cuda else 32)
    args.pool = args.pool or (400_000 if cuda else 30_000)
    steps, batch, pool_n = args.steps, args.batch, args.pool
    ckpt_path = args.checkpoint or args.out + ".ckpt"
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    resume = None
    if args.resume:
        if not os.path.isfile(ckpt_path):
            sys.exit(f"Error: --resume: no checkpoint {ckpt_path}")
        resume = torch.load(ckpt_path, map_location=device, weights_only=False)
        if resume["recipe"] != recipe:
            sys.exit(f"Error: --resume: {ckpt_path} is from another recipe ({resume['recipe']}, not {recipe})")

    t0 = time.time()
    images, concepts, captions = make_pool(WORLD_SEED_OFFSET + args.seed, pool_n, args.workers)
    t_pool = time.time() - t0
    print(f"pool: {pool_n} images in {t_pool:.1f}s ({pool_n / t_pool:.0f} img/s, {args.workers} workers)", flush=True)

    import open_clip
    if args.registers and not args.late_class_token:
        sys.exit("Error: --registers needs the late class token")
    model = build_model(args.seed, device, args.vision_layers, late_class_token=args.late_class_token,
                        class_blocks=args.class_blocks, registers=args.registers)
    if args.init_logit_scale is not None:
        if not 0 < args.init_logit_scale <= 100:
            sys.exit(f"Error: --init-logit-scale must be in (0, 100], not {args.init_logit_scale}")
        with torch.no_grad():
            model.logit_scale.fill_(math.log(args.init_logit_scale))
    tokens = Tokens(open_clip.get_tokenizer(MODEL))
    with torch.no_grad():   # the fast text path must equal open_clip's encode_text
        t = tokens(captions[:8]).to(device)
        assert torch.allclose(encode_text_fast(model, t), model.encode_text(t), atol=1e-3)
        assert torch.allclose(encode_texts(model, tokens, captions[:64], device),
                              model.encode_text(tokens(captions[:64]).to(device)), atol=1e-3)
    images = images.to(device)
    concepts = concepts.to(device)
    keep = torch.tensor([True] * len(W.WEB_CONCEPTS) + [args.attribute_prompts] * _N_ATTR
                        + [args.context_prompts] * len(W.WEB_CONCEPTS))
    extra = [e[keep].to(device) for e in (EXTRA_CONCEPT, EXTRA_COLOUR, EXTRA_SHAPE)]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6, **({"fused": True} if cuda else {}))
    warm = max(1, int(args.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    if args.token_keep < 1:
        model.visual.patch_dropout = KeepTokens(args.token_keep, gen)
    start, t_before = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        rng.bit_generator.state = resume["rng"]
        gen.set_state(resume["gen"])
        start, t_before = resume["step"], resume["train_seconds"]
        print(f"resumed from {ckpt_path} at step {start}", flush=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    print(f"training {MODEL}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{steps} steps x batch {batch} on {device}", flush=True)
    t1 = time.time() - t_before
    model.train()
    for step in range(start, steps):
        idx = torch.randint(0, pool_n, (batch,), generator=gen)
        x = flip(images[idx.to(device)], (torch.rand(batch, generator=gen) < 0.5).to(device))
        prompts = concept_prompts(rng) + (attribute_prompts(rng) if args.attribute_prompts else [])
        ctx = torch.randn(N_CTX, model.token_embedding.weight.shape[1], generator=gen) * CTX_INIT_STD
        idx = idx.to(device)
        with autocast:
            g, _ = encode_image_grad(model, normalise(x))
            txt = encode_texts(model, tokens, [captions[i] for i in idx.tolist()] + prompts, device)
            if args.context_prompts:
                txt = torch.cat([txt, context_prompts(model, tokens, ctx, device)])
            scale = model.logit_scale.exp()
            pos = matches(concepts[idx], torch.cat([concepts[idx], extra[0]]),
                          torch.cat([concepts.new_full((batch,), -1), extra[1]]),
                          torch.cat([concepts.new_full((batch,), -1), extra[2]]))
            lc = clip_loss(g.float(), txt.float(), pos, scale)
            ls = shape_loss(g.float(), txt[batch:batch + len(W.WEB_CONCEPTS)].float(), concepts[idx], scale) \
                if args.shape_weight else lc.new_zeros(())
            if args.shape_weight and args.context_prompts:   # the same shape signal under a random context
                ls = 0.5 * (ls + shape_loss(g.float(), txt[-len(W.WEB_CONCEPTS):].float(), concepts[idx], scale))
            loss = lc + args.shape_weight * ls
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        if step % args.log_every == 0 or done == steps:
            el = time.time() - t1
            print(f"step {step:5d}/{steps}  clip {lc.item():.3f}  shape {ls.item():.3f}  "
                  f"scale {scale.item():.1f}  {el:.0f}s ({(done - start) * batch / max(1e-9, el - t_before):.0f} img/s, "
                  f"{(el - t_before) / (done - start) * (steps - done):.0f}s to go)", flush=True)
        if args.eval_every and done % args.eval_every == 0 and done < steps:
            print(f"  probe @ {done}: " + report(evaluate(model, tokens, per_class=args.eval_per_class, device=device)),
                  flush=True)
        if args.checkpoint_every and done % args.checkpoint_every == 0 and done < steps:
            save_checkpoint(ckpt_path, {"recipe": recipe, "step": done, "model": model.state_dict(),
                                        "opt": opt.state_dict(), "sched": sched.state_dict(),
                                        "rng": rng.bit_generator.state, "gen": gen.get_state(),
                                        "train_seconds": time.time() - t1})
    t_train = time.time() - t1

    model.visual.patch_dropout = nn.Identity()     # the shipped model drops no token
    model = model.float().eval()
    acc = evaluate(model, tokens, per_class=args.eval_per_class, device=device)
    met = targets_met(acc)
    command = [a for a in argv if a != "--resume"]
    meta = {"model": MODEL, **recipe, "world_seed": WORLD_SEED_OFFSET + args.seed,
            "eval": {"seed": EVAL_SEED, "stream": EVAL_STREAM, "per_class": args.eval_per_class},
            "train_seconds": round(t_train, 1), "resumed": resume is not None,
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in acc.items()}, "targets_met": met,
            "command": " ".join(["scripts/train_demo_model.py"] + command)}
    save(model, args.out, meta)
    print(report(acc) + " (20 ID classes, chance 5%)", flush=True)
    for name, ok in met.items():
        print(f"  target {'met' if ok else 'NOT met'}: {name}", flush=True)
    print(f"pool {t_pool:.0f}s + training {t_train:.0f}s; wrote {args.out} "
          f"({os.path.getsize(args.out) / 1e6:.1f} MB)", flush=True)
    return acc


if __name__ == "__main__":
    main()
