"""The demo: the generated world (deterministic, the stated properties), the packaged demo CLIP, the pipeline."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from iim.demo import world as W
from iim.errors import IIMError


# ---- the world ---------------------------------------------------------------------------------
def _same(a: W.Sample, b: W.Sample) -> bool:
    return np.array_equal(a.image, b.image) and a.objects == b.objects and a.caption == b.caption


def test_world_is_deterministic_by_seed():
    draws = [lambda seed: W.id_sample(seed, "test", 3, 7), lambda seed: W.web_sample(seed, 11)]
    draws += [lambda seed, n=n: W.ood_sample(seed, n, 2) for n in W.OOD_SETS]
    for draw in draws:
        assert _same(draw(0), draw(0))
        assert not np.array_equal(draw(0).image, draw(1).image)
    # an image does not depend on which images were drawn before it
    later = W.id_sample(0, "test", 5, 2)
    for i in range(5):
        W.id_sample(0, "test", i, 2)
    assert _same(later, W.id_sample(0, "test", 5, 2))


def _colour_error(s: W.Sample, obj_index: int) -> float:
    """Distance of the mean colour of the pixels fully covered by an object from its nominal colour."""
    inside = s.coverage[obj_index] > 0.99
    assert inside.sum() >= 4
    return float(np.abs(s.image[inside].astype(float).mean(0) - W.RGB[s.objects[obj_index].colour]).max())


def test_id_images_hold_2_to_4_objects_and_the_dominant_one_is_the_class():
    for c, name in enumerate(W.ID_CLASSES):
        for i in range(4):
            s = W.id_sample(0, "test", i, c)
            assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
            assert s.kind == "object" and 2 <= len(s.objects) <= 4
            dom = s.dominant
            assert dom is s.objects[-1] and dom.concept == name
            assert dom.radius > max(o.radius for o in s.objects[:-1])
            visible = s.coverage.sum((1, 2))
            assert visible.argmax() == len(s.objects) - 1          # the dominant object is the most visible
            assert all(o.concept not in W.ID_CLASSES for o in s.objects[:-1])   # distractors: never a class
            assert _colour_error(s, -1) < 30                        # the pixels show the stated colour
            labels = s.patch_labels()
            assert len(labels) == 64 and labels.count(name) >= 4 and f"{s.texture} texture" in labels


def test_ood_sets_are_what_they_say_and_hold_no_id_class():
    for i in range(10):
        shapes, colours = W.ood_sample(0, "novel_shapes", i), W.ood_sample(0, "novel_colours", i)
        assert shapes.dominant.shape in W.NOVEL_SHAPES and shapes.dominant.colour in W.ID_COLOURS
        assert colours.dominant.shape in W.ID_SHAPES and colours.dominant.colour in W.NOVEL_COLOURS
        scene, texture = W.ood_sample(0, "scenes", i), W.ood_sample(0, "textures", i)
        assert scene.kind == "scene" and 5 <= len(scene.objects) <= 8
        assert texture.kind == "texture" and texture.objects == []
        for s in (shapes, colours, scene, texture):
            assert not any(o.concept in W.ID_CLASSES for o in s.objects)
    with pytest.raises(ValueError):
        W.ood_sample(0, "nope", 0)


def test_shapes_are_distinct():
    masks = {s: W.shape_mask(W.Obj(s, "red", 18.0, 32.0, 32.0, 0.0)) > 0.5 for s in W.SHAPES}
    for a in W.SHAPES:
        for b in W.SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)


def test_world_folder_is_written_once_losslessly(tmp_path, monkeypatch):
    from iim.data.benchmarks import load_benchmark
    from iim.demo.benchmark import CLASSNAMES, MARKER, class_dir, ensure_world

    root = ensure_world(tmp_path / "w", n_train=2, n_test=1, n_ood=2, progress=False)
    pngs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(pngs) == 20 * 3 + 4 * 2
    name = CLASSNAMES[3]
    on_disk = np.asarray(Image.open(root / "test" / class_dir(name) / "00000.png"))
    assert np.array_equal(on_disk, W.id_sample(0, "test", 0, W.ID_CLASSES.index(name)).image)
    stamp = (root / MARKER).stat().st_mtime_ns
    assert ensure_world(root, progress=False) == root and (root / MARKER).stat().st_mtime_ns == stamp
    with pytest.raises(IIMError, match="different demo world"):
        ensure_world(root, n_train=3, progress=False)

    monkeypatch.setenv("IIM_DEMO_DATA", str(root))
    bench = load_benchmark("demo")                                   # through the benchmark registry
    assert bench.classnames == CLASSNAMES == sorted(W.ID_CLASSES)
    assert bench.test.path() == root / "test" and set(bench.ood) == set(W.OOD_SETS)


# ---- the packaged demo CLIP --------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_model():
    from iim.models import create_model
    return create_model("iim-demo", "demo")


def _metadata() -> dict:
    from safetensors import safe_open
    from iim.models import PACKAGED_WEIGHTS
    path = PACKAGED_WEIGHTS["demo"][1]
    assert path.stat().st_size <= 20e6
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["iim_demo"])


def test_demo_weights_load_offline_with_64_patch_tokens(demo_model):
    from iim.features import encode_image
    from iim.models import weights_id
    model, preprocess = demo_model
    image = W.id_sample(0, "test", 0, 0).image
    x = preprocess(Image.fromarray(image))[None]
    # the training script feeds (x / 255 - mean) / std: the same input as the eval preprocess
    cfg = model.visual.preprocess_cfg
    manual = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(cfg["mean"])[:, None, None]) \
        / torch.tensor(cfg["std"])[:, None, None]
    assert torch.allclose(x[0], manual, atol=1e-5)
    g, l = encode_image(model, x)
    assert l.shape == (1, 64, 128) and g.shape == (1, 128)
    assert weights_id("demo").startswith("demo@sha256:")


def test_demo_model_zero_shot_accuracy_matches_the_record(demo_model):
    import torch.nn.functional as F
    from iim.text import global_prototypes
    model, preprocess = demo_model
    meta = _metadata()
    per_class = 5
    images, labels = [], []
    for c in range(len(W.ID_CLASSES)):
        for i in range(per_class):   # the first images of the stream the training script evaluated on
            s = W.id_sample(meta["eval"]["seed"], meta["eval"]["stream"], i, c)
            images.append(preprocess(Image.fromarray(s.image)))
            labels.append(c)
    with torch.no_grad():
        g = F.normalize(model.encode_image(torch.stack(images)), dim=-1)
    protos = F.normalize(global_prototypes(model, list(W.ID_CLASSES)), dim=-1)
    acc = ((g @ protos.T).argmax(1) == torch.tensor(labels)).float().mean().item()
    chance = 1 / len(W.ID_CLASSES)
    assert acc > 4 * chance, acc
    assert abs(acc - meta["zero_shot_acc"]) < 0.15, (acc, meta["zero_shot_acc"])


# ---- the pipeline ------------------------------------------------------------------------------
def test_demo_pipeline_end_to_end_on_a_small_world(tmp_path):
    from iim.demo.benchmark import ensure_world
    from iim.demo.run import DemoSettings, run_demo

    world = ensure_world(tmp_path / "world", n_train=4, n_test=2, n_ood=6, progress=False)
    lines = []
    summary = run_demo([1], out=tmp_path / "runs", cache=tmp_path / "cache", world=world, device="cpu",
                       settings=replace(DemoSettings(), views=2, epochs=2, baseline_epochs=1), plots=False,
                       progress=False,
                       echo=lines.append)
    methods = [r["method"] for r in summary["rows"]]
    assert methods[0] == "MCM (0-shot)" and methods[-1] == "IIM official + S-MCM (4-shot)"
    assert "IIM + S-MCM (4-shot)" in methods
    assert (tmp_path / "runs" / "official-shots4-seed1-views2" / "results.json").is_file()
    official = json.loads((tmp_path / "runs" / "official-shots4-seed1-views2" / "results.json").read_text())
    assert official["settings"]["recipe"] == "official" and official["run_config"]["train_projection"]
    assert set(summary["diagnostics"]) == {"iim", "official", "coop", "locoop", "localprompt"}
    assert summary["diagnostics"]["iim"][1]["chance"] > 0
    assert summary["ood_sets"] == sorted(W.OOD_SETS) + ["average"]
    for r in summary["rows"]:
        for cell in r["cells"].values():
            assert 0 <= cell["auroc"]["mean"] <= 100 and 0 <= cell["fpr95"]["mean"] <= 100
    text = "\n".join(lines)
    assert "IIM + S-MCM (4-shot)" in text
    for label in ("CoOp + GL-MCM (4-shot)", "LoCoOp + GL-MCM (4-shot)", "Local-Prompt + R-MCM (4-shot)"):
        assert label in methods and label in text
    assert (tmp_path / "runs" / "localprompt-shots4-seed1-views2" / "results.json").is_file()
    assert (tmp_path / "runs" / "iim-shots4-seed1-views2" / "checkpoint.pt").is_file()
    assert (tmp_path / "runs" / "iim-shots4-seed1-views2" / "results.json").is_file()
    assert (tmp_path / "runs" / "summary.md").read_text().startswith("| Method |")
