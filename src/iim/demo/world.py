"""The demo world: a procedural image world in which an offline CLIP can be trained and IIM can be tested.

Everything here is numpy + PIL and deterministic: image ``i`` of a stream is drawn from its own
``SeedSequence([seed, stream, i])``, so any image can be regenerated alone, in any order, in any process.

The design below was fixed before any OOD number was computed (see the README "Demo" section).

Images (64 x 64 RGB, the demo model's input size; 64 patches of 8 x 8)
----------------------------------------------------------------------
* A **background**: a muted, low-contrast texture (two tones of low saturation) from one of six
  families -- striped, checkered, dotted, wavy, zigzag, marbled -- at a random scale and angle.
* **Objects**: a filled shape of one colour, at a size, position and rotation (within +-30 degrees).
  Ten shapes (circle, square, triangle, star, cross | heart, crescent, arrow, ring, bowtie) and eight
  saturated colours (red, green, blue, yellow | purple, orange, cyan, pink), each jittered a little.
* An **object image** holds 2-4 objects: ONE dominant object (radius 14-21 px, drawn last, on top)
  and 1-3 small distractors (radius 4.5-7.5 px) placed mostly around it. The dominant object gives
  the class and the caption, e.g. "a photo of a red star.". Because an image mixes a dominant object,
  small objects of other kinds and a textured background, its patches carry different meanings --
  what Intra-Image Mining exploits.
* Mild Gaussian pixel noise (sigma 3) on every image.

The benchmark ``demo`` (ID classes and OOD sets)
------------------------------------------------
* **ID**: 20 classes = 5 ID shapes (circle, square, triangle, star, cross) x 4 ID colours (red, green,
  blue, yellow), named "red circle", ..., "yellow cross". Distractors in benchmark images are never
  an ID class (an ID shape in an ID colour), so the dominant object alone decides the label -- just as
  the OOD benchmarks of the paper were curated to hold no ImageNet class.
* **OOD**, four sets, like the paper's four, none holding any ID-class object anywhere:
    - ``novel_shapes`` (near OOD, the iNaturalist analogue -- new kinds of object): an object image whose
      dominant object has a novel shape (heart, crescent, arrow, ring, bowtie) in an ID colour, so
      colour alone does not tell it apart.
    - ``novel_colours`` (near OOD in the other attribute): the dominant object has an ID shape in a novel
      colour (purple, orange, cyan, pink).
    - ``scenes`` (the SUN / Places analogue -- scenes without one main object): 5-8 small non-ID objects
      (radius 5-9 px) scattered on a background, no dominant object.
    - ``textures`` (far OOD, the Texture/DTD analogue): a full-frame bold texture (saturated, high
      contrast) of one of the six families, no object.

The CLIP training data ("the web", :func:`web_sample`)
-------------------------------------------------------
The demo CLIP is trained on a broader world than the benchmark, as real CLIP knows iNaturalist and
Places: 75 % object images whose dominant object is any of the 80 shape x colour concepts (distractors
any concept too), 10 % scenes, 15 % bold textures, captioned from small template sets, e.g.
"a picture of a purple heart.", "a photo of a red star and a small cyan ring.", "a photo of a blue
square on a striped background.", "a photo of a cluttered scene.", "a photo of a dotted texture.",
and -- for 40 % of object images and half the scenes -- a long caption naming every object and the
background (:func:`long_caption`, up to ~50 tokens); with the "and a small ..." captions (30 %), 70 % of
the object captions name a distractor, as web captions name more than the main subject, so the
image-level loss needs evidence of where each object is (issue #23; before: 30 % + 20 %). The long captions were added after the first
evaluation of a provisional model showed why they are needed: with short captions only, the text
tower never trained positions beyond ~15 tokens, and a learned prompt (16 context tokens before the
class name, SPEC §2) puts the class name there, so the learned ID prototypes collapsed onto one vector.
Training images come from a different stream than the benchmark's, so no benchmark image is ever seen.

Each rendered :class:`Sample` also carries per-patch labels (which object, or the background, covers
each 8 x 8 patch): the demo model's training never uses them (it learns from whole images and
captions only, as CLIP does); its evaluation and the tests use them to check the stated properties.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
PATCH = 8
SUPERSAMPLE = 4          # shapes are drawn at 4x and box-filtered: anti-aliased coverage masks
NOISE_SIGMA = 3.0

ID_SHAPES = ("circle", "square", "triangle", "star", "cross")
NOVEL_SHAPES = ("heart", "crescent", "arrow", "ring", "bowtie")
SHAPES = ID_SHAPES + NOVEL_SHAPES
ID_COLOURS = ("red", "green", "blue", "yellow")
NOVEL_COLOURS = ("purple", "orange", "cyan", "pink")
COLOURS = ID_COLOURS + NOVEL_COLOURS
RGB = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 75, 215), "yellow": (235, 210, 45),
    "purple": (135, 55, 185), "orange": (245, 135, 30), "cyan": (40, 200, 210), "pink": (245, 125, 185),
}
TEXTURES = ("striped", "checkered", "dotted", "wavy", "zigzag", "marbled")

ID_CLASSES = tuple(f"{c} {s}" for c in ID_COLOURS for s in ID_SHAPES)      # 20 classes
OOD_SETS = ("novel_shapes", "novel_colours", "scenes", "textures")
CONCEPTS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)               # 80 object concepts

DOMINANT_RADIUS = (14.0, 21.0)
DISTRACTOR_RADIUS = (4.5, 7.5)
SCENE_RADIUS = (5.0, 9.0)
MAX_ANGLE = 30.0

# CLIP-training caption templates
OBJECT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.",
                    "a photo of the {}.", "a photo of a big {}.")
SCENE_CAPTIONS = ("a photo of a cluttered scene.", "a photo of many small shapes.",
                  "a picture of a cluttered scene.", "a scene with many small shapes.")
TEXTURE_TEMPLATES = ("a photo of a {} texture.", "a {} pattern.", "a picture of a {} texture.",
                     "a close-up photo of a {} texture.")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    radius: float      # pixels; the shape fits in a circle of this radius
    cx: float
    cy: float
    angle: float       # degrees

    @property
    def concept(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Sample:
    """One rendered image and what is in it."""
    image: np.ndarray                  # uint8 [64, 64, 3]
    kind: str                          # "object" | "scene" | "texture"
    texture: str                       # background / texture family
    objects: list[Obj] = field(default_factory=list)   # in drawing order; objects[-1] is dominant
    coverage: np.ndarray | None = None  # float32 [n_objects, 64, 64] visible coverage of each object
    caption: str = ""

    @property
    def dominant(self) -> Obj | None:
        return self.objects[-1] if self.kind == "object" else None

    def patch_coverage(self) -> np.ndarray:
        """Visible fraction of each 8 x 8 patch covered by each object: float32 ``[n_objects, 64]``."""
        n, g = len(self.objects), IMAGE_SIZE // PATCH
        if n == 0:
            return np.zeros((0, g * g), np.float32)
        return self.coverage.reshape(n, g, PATCH, g, PATCH).mean(axis=(2, 4)).reshape(n, g * g)

    def patch_labels(self, *, min_cover: float = 0.4) -> list[str]:
        """Per patch (row-major), the concept of the object covering most of it (at least ``min_cover``),
        else ``"{texture} texture"`` (the background)."""
        cov = self.patch_coverage()
        bg = f"{self.texture} texture"
        if len(cov) == 0:
            return [bg] * (IMAGE_SIZE // PATCH) ** 2
        best, frac = cov.argmax(0), cov.max(0)
        return [self.objects[b].concept if f >= min_cover else bg for b, f in zip(best, frac)]


# --------------------------------------------------------------------------------------------------
# random streams

def rng_for(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``stream`` (a name) under ``seed``: independent of all others."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(stream.encode()), int(index)]))


# --------------------------------------------------------------------------------------------------
# shapes: polygons in unit coordinates (radius 1, y down); ops of (polygon, keep) with keep=False erasing

def _circle(r=1.0, dx=0.0, dy=0.0, n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([dx + r * np.cos(t), dy + r * np.sin(t)], 1)


def _star(points=5, outer=1.0, inner=0.42):
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart(n=60):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    p = np.stack([x, y + 2.5], 1)
    return p / np.abs(p).max()


_A = 0.34  # half width of the cross arms
SHAPE_OPS = {
    "circle": [(_circle(0.92), True)],
    "square": [(np.array([[-0.72, -0.72], [0.72, -0.72], [0.72, 0.72], [-0.72, 0.72]]), True)],
    "triangle": [(np.array([[0.0, -1.0], [0.866, 0.5], [-0.866, 0.5]]) * 1.05 + [0, 0.2], True)],
    "star": [(_star(), True)],
    "cross": [(np.array([[-_A, -0.9], [_A, -0.9], [_A, -_A], [0.9, -_A], [0.9, _A], [_A, _A], [_A, 0.9],
                         [-_A, 0.9], [-_A, _A], [-0.9, _A], [-0.9, -_A], [-_A, -_A]]), True)],
    "heart": [(_heart(), True)],
    "crescent": [(_circle(0.92), True), (_circle(0.78, dx=0.42, dy=-0.18), False)],
    "arrow": [(np.array([[-0.95, -0.25], [0.15, -0.25], [0.15, -0.7], [0.95, 0.0], [0.15, 0.7],
                         [0.15, 0.25], [-0.95, 0.25]]), True)],
    "ring": [(_circle(0.92), True), (_circle(0.52), False)],
    "bowtie": [(np.array([[-0.95, -0.8], [0.0, -0.12], [0.95, -0.8], [0.95, 0.8], [0.0, 0.12],
                          [-0.95, 0.8]]), True)],
}


def shape_mask(obj: Obj, size: int = IMAGE_SIZE) -> np.ndarray:
    """Anti-aliased coverage (float32 ``[size, size]`` in 0..1) of ``obj`` drawn alone."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    a = math.radians(obj.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    for poly, keep in SHAPE_OPS[obj.shape]:
        pts = (poly @ rot.T) * obj.radius + [obj.cx, obj.cy]
        draw.polygon([tuple(p) for p in (pts * s).tolist()], fill=255 if keep else 0)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# textures

def _hsv_to_rgb(h, s, v):
    import colorsys
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))) * 255


def texture_pattern(rng: np.random.Generator, family: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """A two-tone pattern of ``family`` at a random scale/angle/phase: float32 ``[size, size]`` in 0..1."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    th = rng.uniform(0, np.pi)
    u = x * np.cos(th) + y * np.sin(th) + rng.uniform(0, 100)
    w = -x * np.sin(th) + y * np.cos(th) + rng.uniform(0, 100)
    period = rng.uniform(6.0, 14.0)
    if family == "striped":
        p = np.sin(2 * np.pi * u / period) > 0
    elif family == "checkered":
        p = (np.floor(u / period) + np.floor(w / period)) % 2 == 0
    elif family == "dotted":
        du, dw = (u % period) - period / 2, (w % period) - period / 2
        p = du * du + dw * dw < (period * rng.uniform(0.22, 0.32)) ** 2
    elif family == "wavy":
        amp, wl = rng.uniform(1.5, 4.0), rng.uniform(14.0, 30.0)
        p = np.sin(2 * np.pi * (u + amp * np.sin(2 * np.pi * w / wl)) / period) > 0
    elif family == "zigzag":
        amp, wl = rng.uniform(2.0, 5.0), rng.uniform(8.0, 16.0)
        tri = amp * (2 * np.abs(2 * ((w / wl) % 1.0) - 1) - 1)
        p = np.sin(2 * np.pi * (u + tri) / period) > 0
    elif family == "marbled":
        f = np.zeros_like(x)
        for _ in range(4):
            a, k = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.18)
            f += np.sin(k * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 2 * np.pi))
        p = np.sin(f * rng.uniform(1.5, 2.5)) > 0
    else:
        raise ValueError(f"unknown texture family {family!r}")
    return p.astype(np.float32)


def texture_image(rng: np.random.Generator, family: str, *, bold: bool) -> np.ndarray:
    """A texture as float32 RGB ``[64, 64, 3]`` in 0..255: muted and low-contrast (backgrounds) or
    saturated and high-contrast (the ``textures`` OOD set, texture training images)."""
    pattern = texture_pattern(rng, family)
    h = rng.uniform()
    if bold:
        c1 = _hsv_to_rgb(h, rng.uniform(0.5, 0.9), rng.uniform(0.75, 1.0))
        c2 = _hsv_to_rgb(h + rng.uniform(0.15, 0.85), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.5))
    else:
        s, v = rng.uniform(0.05, 0.25), rng.uniform(0.45, 0.8)
        c1 = _hsv_to_rgb(h, s, v)
        c2 = _hsv_to_rgb(h + rng.uniform(-0.05, 0.05), s, v + rng.choice([-1, 1]) * rng.uniform(0.08, 0.15))
    return (pattern[..., None] * c1 + (1 - pattern[..., None]) * c2).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# object placement and rendering

def _colour_rgb(rng, colour):
    return np.clip(np.array(RGB[colour], np.float32) + rng.uniform(-18, 18, 3), 0, 255)


def _random_obj(rng, shape, colour, radius_range, *, avoid=(), margin=0.8, tries=30) -> Obj:
    """An object whose centre keeps it mostly inside the frame and away from the objects in ``avoid``."""
    r = rng.uniform(*radius_range)
    lo, hi = r * margin, IMAGE_SIZE - r * margin
    best, best_gap = None, -np.inf
    for _ in range(tries):
        cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
        gap = min((math.hypot(cx - o.cx, cy - o.cy) - (r + o.radius) for o in avoid), default=np.inf)
        if gap > best_gap:
            best, best_gap = (cx, cy), gap
        if gap >= 0:
            break
    angle = 0.0 if shape in ("circle", "ring") else rng.uniform(-MAX_ANGLE, MAX_ANGLE)
    return Obj(shape, colour, float(r), float(best[0]), float(best[1]), float(angle))


def render(rng: np.random.Generator, kind: str, texture: str, objects: list[Obj], *,
           bold: bool = False, caption: str = "") -> Sample:
    """Draw ``objects`` in order (later on top) on a ``texture`` background; record visible coverage."""
    img = texture_image(rng, texture, bold=bold)
    masks = []
    for o in objects:
        m = shape_mask(o)
        for prev in masks:          # what o covers is no longer visible below it
            prev *= (1.0 - m)
        masks.append(m)
        img = img * (1.0 - m[..., None]) + _colour_rgb(rng, o.colour) * m[..., None]
    img = img + rng.normal(0.0, NOISE_SIGMA, img.shape)
    cov = np.stack(masks) if masks else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return Sample(np.clip(np.rint(img), 0, 255).astype(np.uint8), kind, texture, list(objects),
                  cov.astype(np.float32), caption)


def _non_id_concept(rng) -> tuple[str, str]:
    """A (shape, colour) that is not an ID class: a novel shape in any colour or any shape in a novel colour."""
    while True:
        shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
        if not (shape in ID_SHAPES and colour in ID_COLOURS):
            return shape, colour


def _any_concept(rng) -> tuple[str, str]:
    return SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]


def object_image(rng, shape: str, colour: str, *, distractor=_non_id_concept, caption="") -> Sample:
    """An object image: 1-3 small distractors around one dominant ``colour shape`` (drawn last)."""
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    dom = _random_obj(rng, shape, colour, DOMINANT_RADIUS, margin=0.9)
    objs: list[Obj] = []
    for _ in range(int(rng.integers(1, 4))):
        objs.append(_random_obj(rng, *distractor(rng), DISTRACTOR_RADIUS, avoid=[dom, *objs]))
    return render(rng, "object", texture, objs + [dom], caption=caption or f"a photo of a {colour} {shape}.")


def scene_image(rng, *, concept=_non_id_concept, caption="a photo of a cluttered scene.") -> Sample:
    """5-8 small objects scattered on a background, none dominant."""
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    objs: list[Obj] = []
    for _ in range(int(rng.integers(5, 9))):
        objs.append(_random_obj(rng, *concept(rng), SCENE_RADIUS, avoid=objs))
    return render(rng, "scene", texture, objs, caption=caption)


def bold_texture_image(rng, family: str | None = None, caption="") -> Sample:
    family = family or TEXTURES[rng.integers(len(TEXTURES))]
    return render(rng, "texture", family, [], bold=True, caption=caption or f"a photo of a {family} texture.")


# --------------------------------------------------------------------------------------------------
# the benchmark

def id_sample(seed: int, stream: str, index: int, class_index: int) -> Sample:
    """ID image ``index`` of class ``ID_CLASSES[class_index]`` in ``stream`` (e.g. "train", "test")."""
    rng = rng_for(seed, f"{stream}/{ID_CLASSES[class_index]}", index)
    colour, shape = ID_CLASSES[class_index].split(" ")
    return object_image(rng, shape, colour)


def ood_sample(seed: int, name: str, index: int) -> Sample:
    """OOD image ``index`` of the set ``name`` (one of :data:`OOD_SETS`)."""
    rng = rng_for(seed, f"ood/{name}", index)
    if name == "novel_shapes":
        return object_image(rng, NOVEL_SHAPES[rng.integers(5)], ID_COLOURS[rng.integers(4)])
    if name == "novel_colours":
        return object_image(rng, ID_SHAPES[rng.integers(5)], NOVEL_COLOURS[rng.integers(4)])
    if name == "scenes":
        return scene_image(rng)
    if name == "textures":
        return bold_texture_image(rng)
    raise ValueError(f"unknown OOD set {name!r}; known: {', '.join(OOD_SETS)}")


# --------------------------------------------------------------------------------------------------
# the CLIP-training world

def long_caption(s: Sample) -> str:
    """Every object of an image, in drawing order, and its background: "a photo of a small cyan ring,
    a small purple heart and a big red star on a striped background." (up to ~50 tokens)."""
    size = "big" if s.kind == "object" else "small"
    parts = [f"a small {o.concept}" for o in s.objects[:-1]] + \
            ([f"a {size} {s.objects[-1].concept}"] if s.objects else [])
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    prefix = "a photo of a cluttered scene with " if s.kind == "scene" else "a photo of "
    return f"{prefix}{listing} on a {s.texture} background."


def web_sample(seed: int, index: int) -> Sample:
    """Training image ``index`` for the demo CLIP, with a caption (see the module docstring)."""
    rng = rng_for(seed, "web", index)
    u = rng.uniform()
    if u < 0.75:
        shape, colour = _any_concept(rng)
        s = object_image(rng, shape, colour, distractor=_any_concept)
        c = f"{colour} {shape}"
        v = rng.uniform()
        if v < 0.3:
            d = s.objects[int(rng.integers(len(s.objects) - 1))]
            s.caption = f"a photo of a {c} and a small {d.concept}."
        elif v < 0.4:
            s.caption = f"a photo of a {c} on a {s.texture} background."
        elif v < 0.8:
            s.caption = long_caption(s)
        else:
            s.caption = OBJECT_TEMPLATES[rng.integers(len(OBJECT_TEMPLATES))].format(c)
    elif u < 0.85:
        s = scene_image(rng, concept=_any_concept, caption=SCENE_CAPTIONS[rng.integers(len(SCENE_CAPTIONS))])
        if rng.uniform() < 0.5:
            s.caption = long_caption(s)
    else:
        s = bold_texture_image(rng)
        s.caption = TEXTURE_TEMPLATES[rng.integers(len(TEXTURE_TEMPLATES))].format(s.texture)
    return s


def web_concept(s: Sample) -> str:
    """What a training caption is about: the dominant concept, "cluttered scene" or "<family> texture"."""
    if s.kind == "object":
        return s.dominant.concept
    return "cluttered scene" if s.kind == "scene" else f"{s.texture} texture"


WEB_CONCEPTS = CONCEPTS + ("cluttered scene",) + tuple(f"{t} texture" for t in TEXTURES)   # 87
