"""Model factory: any open_clip CLIP, by name and pretrained tag, a local checkpoint, or random weights.

    model, preprocess = create_model("ViT-B-16", "openai")          # open_clip tag (needs the weights)
    model, preprocess = create_model("ViT-B-16", "/ckpt/vit.bin")    # local checkpoint file
    model, preprocess = create_model("iim-test-tiny", "none")        # random weights, fixed seed
    model, preprocess = create_model("iim-demo", "demo")             # weights shipped in the package

The project's own architectures (``iim-test-tiny`` for tests and smoke runs) are open_clip JSON configs
in ``model_configs/``, registered with open_clip when this module is first imported (every path that builds
a model or reads a model config goes through it; ``import iim`` alone stays light).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import open_clip
import torch

from .errors import IIMError

CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM_WEIGHTS = "none"   # --pretrained none: random weights from a fixed seed
RANDOM_SEED = 0
# Weights shipped inside the package, by pretrained tag: tag -> (model name, file). Offline, always there.
PACKAGED_WEIGHTS = {"demo": ("iim-demo", Path(__file__).parent / "weights" / "iim-demo.safetensors")}
# The project's architectures whose image tower differs from open_clip's ViT in one place: the class token
# joins late (LateClassTokenViT; issue #23, README "The demo CLIP"). By model name: (in how many of the last
# blocks the class token reads the patches, register tokens). A checkpoint of scripts/train_demo_model.py
# records the tower it was trained with in its metadata, and that record wins (late_class_tower).
LATE_CLASS_TOKEN = {"iim-demo": (2, 0)}
_registered = False


def register_model_configs() -> None:
    """Make the JSON configs in ``model_configs/`` known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


register_model_configs()    # on first import: extraction reads a config (image size) before any model is built


class LateClassTokenViT(open_clip.transformer.VisionTransformer):
    """open_clip's ViT, except that the class token joins late, as in CaiT's class attention (Touvron et al.,
    2021): patch tokens never attend to the class token, and the class token reads the patches only in the
    last ``class_blocks`` blocks (before them it attends to itself only, so it is the same learned vector for
    every image until then). Same parameters, same state dict; only the forward differs. The image's evidence
    can then reach the class token only through those blocks' values, the last of which MaskCLIP's patch
    features read: with open_clip's ViT, a small CLIP trained from scratch carries the label's evidence in the
    residual stream of background tokens instead (issue #23, README "The demo CLIP").

    With ``registers`` > 0 the tower also has that many register tokens (Darcet et al., 2024, "Vision
    Transformers Need Registers"): learned vectors (``register_embedding``, no position) that join the patch
    tokens after ``ln_pre`` as scratch space for global computation, which the low-information background
    patches otherwise take over. Patches and registers read each other; the class token reads them in its
    class-attention blocks; the registers never read the class token, and they retire before the last block,
    so the last block -- the one MaskCLIP's patch features read -- sees the class token and the patches only."""

    late_class_token = True      # what iim.features looks for (it does not import this module)
    class_blocks = 1             # how many of the last blocks let the class token read the patches
    registers = 0                # register tokens (0: none)

    def run_to_last_block(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens [B, 1 + HW, W] that enter the last block."""
        x = self._embeds(images)
        cls, x = x[:, :1], x[:, 1:]
        r = self.registers
        if r:            # registers first, then the patches; they take part like patches until the last block
            x = torch.cat([self.register_embedding.to(x.dtype).expand(len(x), -1, -1), x], dim=1)
        blocks = self.transformer.resblocks
        mask = _patches_ignore_class_token(x.shape[1] + 1, x) if self.class_blocks > 1 else None
        for i, blk in enumerate(blocks[:-1]):
            if i < len(blocks) - self.class_blocks:
                cls, x = blk(cls), blk(x)
            else:        # class attention: the class token reads the patches, the patches still never read it
                y = blk(torch.cat([cls, x], dim=1), attn_mask=mask)
                cls, x = y[:, :1], y[:, 1:]
        return torch.cat([cls, x[:, r:]], dim=1)      # the registers retire before the last block

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transformer.resblocks[-1](self.run_to_last_block(images))
        pooled = self.ln_post(x[:, 0])
        return pooled @ self.proj if self.proj is not None else pooled

    def forward_intermediates(self, *args, **kwargs):
        raise NotImplementedError("LateClassTokenViT: open_clip's forward_intermediates does not know the late "
                                  "class token; use iim.features.encode_image")


def _patches_ignore_class_token(n: int, like: torch.Tensor) -> torch.Tensor:
    """Additive attention mask [n, n] over (class token, patches): the patch rows may not attend the class token."""
    mask = torch.zeros(n, n, dtype=like.dtype, device=like.device)
    mask[1:, 0] = float("-inf")
    return mask


def use_late_class_token(model, class_blocks: int = 1, registers: int = 0) -> None:
    """Turn ``model``'s open_clip ViT into a :class:`LateClassTokenViT` in place (same weights); the class
    token reads the patches in the last ``class_blocks`` blocks (1: the last block only). ``registers`` > 0
    adds that many register tokens, a new parameter ``visual.register_embedding`` drawn like open_clip draws
    the class embedding (a checkpoint's state dict then fills it)."""
    if type(model.visual) is not open_clip.transformer.VisionTransformer:
        raise IIMError(f"the late class token needs open_clip's VisionTransformer, not {type(model.visual).__name__}")
    depth = len(model.visual.transformer.resblocks)
    if not 1 <= class_blocks <= depth:
        raise IIMError(f"class_blocks must be between 1 and the tower's {depth} blocks, not {class_blocks}")
    if registers < 0:
        raise IIMError(f"registers must be >= 0, not {registers}")
    model.visual.__class__ = LateClassTokenViT
    model.visual.class_blocks = class_blocks
    model.visual.registers = registers
    if registers:
        cls = model.visual.class_embedding
        model.visual.register_embedding = torch.nn.Parameter(
            cls.shape[0] ** -0.5 * torch.randn(registers, cls.shape[0], dtype=cls.dtype, device=cls.device))


def late_class_tower(name: str, checkpoint: Path | None = None) -> tuple[int, int] | None:
    """The late-class-token tower of model ``name`` as ``(class_blocks, registers)`` (None: open_clip's ViT,
    the class token in every block): what ``checkpoint`` (a safetensors file written by
    ``scripts/train_demo_model.py``) records, else :data:`LATE_CLASS_TOKEN`. Metadata written before a key
    existed means its old value: ``class_blocks`` 1, no registers."""
    default = LATE_CLASS_TOKEN.get(name)
    if default is None or checkpoint is None or checkpoint.suffix != ".safetensors":
        return default
    from safetensors import safe_open
    with safe_open(str(checkpoint), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("iim_demo") or "{}")
    if "late_class_token" not in meta:
        return default
    return (int(meta.get("class_blocks", 1)), int(meta.get("registers", 0))) if meta["late_class_token"] else None


def model_config(name: str) -> dict | None:
    """open_clip's config of model ``name`` (the project's own included), None when it knows no such model."""
    register_model_configs()
    return open_clip.get_model_config(name)


def is_local_checkpoint(pretrained: str) -> bool:
    return pretrained not in (None, "", RANDOM_WEIGHTS) and Path(pretrained).expanduser().is_file()


def packaged_weights(name: str, pretrained: str) -> Path | None:
    """The file of a packaged tag (``create_model("iim-demo", "demo")``), else None."""
    entry = PACKAGED_WEIGHTS.get(pretrained)
    return entry[1] if entry is not None and entry[0] == name else None


def names_a_file(pretrained: str) -> bool:
    """Whether ``pretrained`` is a checkpoint file's name (a path or a file suffix), not a tag."""
    return "/" in str(pretrained) or bool(Path(str(pretrained)).suffix)


def weights_id(pretrained: str) -> str:
    """What identifies the weights in a manifest: the tag, or ``sha256:<hex>`` of a checkpoint file
    (``demo@sha256:<hex>`` for a packaged tag, so re-trained packaged weights never match old caches)."""
    if pretrained in PACKAGED_WEIGHTS and PACKAGED_WEIGHTS[pretrained][1].is_file() \
            and not is_local_checkpoint(pretrained):
        return f"{pretrained}@" + weights_id(str(PACKAGED_WEIGHTS[pretrained][1]))
    if is_local_checkpoint(pretrained):
        h = hashlib.sha256()
        with open(Path(pretrained).expanduser(), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()
    return pretrained


def _random_model(name: str, tower: tuple[int, int] | None):
    """open_clip's model ``name`` at random weights from :data:`RANDOM_SEED` (the late-class-token tower
    ``tower`` included, registers drawn from the same seed) and its evaluation preprocess."""
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # silence open_clip's "initialized randomly" warning: it is asked for
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
            if tower is not None:
                use_late_class_token(model, *tower)
    finally:
        root.setLevel(level)
    return model, preprocess


def create_model(name: str = "ViT-B-16", pretrained: str = "openai", *, device="cpu"):
    """Build a frozen open_clip model in eval mode and its evaluation preprocess.

    Returns ``(model, preprocess)``; ``model.visual.preprocess_cfg`` holds image size, mean and std.
    Never falls back to random weights: a tag whose weights cannot be obtained is an :class:`IIMError`.
    """
    register_model_configs()
    if name not in open_clip.list_models():
        raise IIMError(f"unknown model {name!r}; open_clip knows e.g. ViT-B-16, ViT-L-14, iim-test-tiny")
    if pretrained in (None, "", RANDOM_WEIGHTS):
        model, preprocess = _random_model(name, late_class_tower(name))
    else:
        packaged = packaged_weights(name, pretrained)
        if packaged is not None:
            if not packaged.is_file():
                raise IIMError(f"the packaged weights {packaged} are missing; reinstall iim")
            pretrained = str(packaged)
        path = Path(pretrained).expanduser()
        if names_a_file(pretrained) and not path.is_file():
            raise IIMError(f"checkpoint file not found: {pretrained}")
        tower = late_class_tower(name, path if path.is_file() else None)
        try:
            if tower is not None and tower[1] and path.is_file():
                # register tokens are a parameter open_clip's own ViT lacks: build the tower, then load
                model, preprocess = _random_model(name, tower)
                open_clip.load_checkpoint(model, str(path))
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=str(path) if path.is_file() else pretrained)
                if tower is not None:
                    use_late_class_token(model, *tower)
        except IIMError:
            raise
        except Exception as e:  # open_clip raises RuntimeError / OSError / HF errors when offline
            if path.is_file():
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                raise IIMError(f"cannot load checkpoint {pretrained} into {name} ({first}); is it a "
                               f"{name} checkpoint?") from None
            raise IIMError(
                f"could not obtain weights {pretrained!r} for {name} ({type(e).__name__}); without "
                f"network, pass a local checkpoint with --pretrained /path/to/weights "
                f"(set HF_HUB_OFFLINE=1 to fail fast instead of retrying)"
            ) from None
    model = model.to(device).eval().requires_grad_(False)
    model.iim_model_name = name          # lets the text side pick the model's own tokenizer
    return model, preprocess


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees a GPU), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a GPU that
    is not there, is a one-line :class:`IIMError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise IIMError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IIMError(f"--device {device}, but torch sees no CUDA GPU (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise IIMError(f"--device {device}, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def train_transform(model, *, scale=(0.08, 1.0)):
    """SPEC §1 train-time augmentation: RandomResizedCrop(image size, bicubic) + horizontal flip,
    then the model's own normalisation."""
    from torchvision import transforms as T

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    cfg = open_clip.get_model_preprocess_cfg(model)
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.Lambda(_to_rgb),   # a named function, not a lambda: DataLoader workers may pickle this
        T.ToTensor(),
        T.Normalize(cfg["mean"], cfg["std"]),
    ])


def _to_rgb(image):
    return image.convert("RGB")


def model_logit_scale(model) -> float:
    """The model's own training similarity scale ``logit_scale.exp()`` (100 for OpenAI CLIP; SPEC §3)."""
    return float(model.logit_scale.detach().float().exp())


def image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
