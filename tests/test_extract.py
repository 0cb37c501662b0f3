"""Stage one in-process: cache layout, features, views, reuse, refusal, bad images, resume."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import zarr

from imagegen import make_world, truncate, write_image
from iim.cache import open_cache
from iim.cache.verify import check_cache
from iim.data import load_benchmark
from iim.data.folders import load_rgb
from iim.errors import IIMError
from iim.extract import run as R
from iim.extract.run import extract
from iim.features import FEATURE_VERSION, encode_image
from iim.models import create_model
from iim.lock import folder_lock
from iim.text import global_prototypes

TINY = dict(model="iim-test-tiny", pretrained="none", workers=0, progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def cache(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "toy"
    return extract(str(world["toml"]), out, shots=[2], seeds=[1], batch_size=5, **TINY)


def test_cache_layout_and_manifest(cache, world):
    m = json.loads((cache.root / "manifest.json").read_text())
    assert {k: m[k] for k in ("model", "pretrained", "weights", "image_size", "feature_version", "benchmark",
                              "embed_dim", "num_patches")} == dict(
        model="iim-test-tiny", pretrained="none", weights="none", image_size=32,
        feature_version=FEATURE_VERSION, benchmark="toy", embed_dim=32, num_patches=64)
    assert m["classnames"] == ["ant", "bee", "cat"] and m["iim_version"] and m["created"]
    assert m["orientation"] == "exif" and all(s["orientation"] == "exif" for s in m["splits"].values())
    tiny = create_model("iim-test-tiny", "none")[0]
    assert m["logit_scale"] == pytest.approx(float(tiny.logit_scale.exp()))   # the model's own tau (SPEC §3)
    assert cache.splits() == ["ood_noise", "ood_stripes", "test", "train_shots2_seed1"]
    n = {"train_shots2_seed1": 6, "test": 12, "ood_noise": 5, "ood_stripes": 4}
    root = zarr.open_group(str(cache.root), mode="r")
    for name, rows in n.items():
        g = root[name]
        assert g.attrs["complete"] is True and m["splits"][name]["complete"] is True
        assert g["global"].dtype == np.float16 and g["global"].shape == (rows, 1, 32)
        assert g["local"].dtype == np.float16 and g["local"].shape == (rows, 1, 64, 32)
        assert g["label"].dtype == np.int64 and g["label"].shape == (rows,) and g["path"].shape == (rows,)
        assert m["splits"][name]["n"] == rows and m["splits"][name]["skipped"] == []
    test = cache.split("test")
    assert test.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert test.paths[:4] == ["ant/000.png", "ant/001.jpg", "ant/002.JPEG", "ant/003.png"]
    assert cache.split("ood_noise").labels.tolist() == [-1] * 5
    train = cache.split("train_shots2_seed1")
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and train.attrs["shots"] == 2
    assert train.attrs["files_sha256"] == m["splits"]["train_shots2_seed1"]["files_sha256"]
    assert all(os.path.isfile(world["train"] / p) for p in train.paths)


def test_features_equal_a_direct_encoding(cache, world, tiny_model):
    model, preprocess = tiny_model
    split = cache.split("test")
    images = torch.stack([preprocess(load_rgb(world["test"] / p)) for p in split.paths])
    g, l = encode_image(model, images)
    cg, cl = split.read(view=0)
    torch.testing.assert_close(torch.from_numpy(cg).float(), g, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.from_numpy(cl).float(), l, atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(cg, g.half().numpy())   # float16 rounding of the same numbers


def test_global_prototypes_are_stored(cache, tiny_model):
    model, _ = tiny_model
    torch.testing.assert_close(cache.global_prototypes(), global_prototypes(model, cache.classnames))


def test_more_splits_reuse_test_and_ood(cache, world):
    before = cache.split("test").attrs["finished"]
    logs = []
    c = extract(str(world["toml"]), cache.root, shots=[1, 2], seeds=[1, 2], **dict(TINY, log=logs.append))
    assert set(c.train_splits()) == {"train_shots1_seed1", "train_shots1_seed2", "train_shots2_seed1", "train_shots2_seed2"}
    assert c.split("test").attrs["finished"] == before
    assert "test: complete, skipped" in logs and "train_shots2_seed1: complete, skipped" in logs
    k1, k2 = c.split("train_shots1_seed1").paths, c.split("train_shots2_seed1").paths
    assert set(k1) <= set(k2)                             # nested shots, one extraction each
    logs.clear()
    extract(str(world["toml"]), cache.root, shots=[1], seeds=[2], **dict(TINY, log=logs.append))
    assert logs == [f"{cache.root}: every requested split is complete (train_shots1_seed2, test, ood_noise, ood_stripes)"]


@pytest.mark.parametrize("change, match", [
    (dict(model="ViT-B-16"), "made with model='iim-test-tiny', not 'ViT-B-16'"),
    (dict(feature_version="other-v2"), "made with feature_version="),
])
def test_refuses_a_different_model_or_feature_definition(cache, world, monkeypatch, change, match):
    if "feature_version" in change:
        monkeypatch.setattr(R, "FEATURE_VERSION", change.pop("feature_version"))
    monkeypatch.setattr(R, "create_model", lambda *a, **k: pytest.fail("refuse before loading the model"))
    with pytest.raises(IIMError, match=match):
        extract(str(world["toml"]), cache.root, splits=["test"], **dict(TINY, **change))


def test_refuses_other_weights(cache, world, tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"not really weights")
    with pytest.raises(IIMError, match="made with weights='none', not 'sha256:"):
        extract(str(world["toml"]), cache.root, splits=["test"], **dict(TINY, pretrained=str(ckpt)))


def test_augmented_views_are_reproducible(world, tmp_path):
    a = extract(str(world["toml"]), tmp_path / "a", splits=["train"], shots=[2], seeds=[1], views=3,
                batch_size=6, **TINY)
    b = extract(str(world["toml"]), tmp_path / "b", splits=["train"], shots=[2], seeds=[1], views=3,
                batch_size=6, **dict(TINY, workers=1))
    assert a.train_splits() == ["train_shots2_seed1_views3"]
    ga, la = a.split("train_shots2_seed1_views3").read()
    gb, lb = b.split("train_shots2_seed1_views3").read()
    assert ga.shape == (6, 3, 32) and la.shape == (6, 3, 64, 32)
    np.testing.assert_array_equal(ga, gb)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(ga[:, 0], ga[:, 1])         # the views differ from each other


def test_crop_scale_is_recorded_used_and_never_mixed(world, tmp_path, monkeypatch):
    from iim.data.benchmarks import IMAGENET_VARIANTS
    assert IMAGENET_VARIANTS["imagenet"].crop_scale == 0.85 and IMAGENET_VARIANTS["imagenet100"].crop_scale == 0.65
    used = []
    real = R.train_transform
    monkeypatch.setattr(R, "train_transform", lambda model, scale: used.append(scale) or real(model, scale=scale))
    args = dict(splits=["train"], shots=[2], views=2, batch_size=6, **TINY)
    c = extract(str(world["toml"]), tmp_path / "c", seeds=[1], **args)                 # benchmark default
    assert used == [(0.85, 1.0)] and c.split("train_shots2_seed1_views2").attrs["crop_scale"] == 0.85
    assert c.manifest["splits"]["train_shots2_seed1_views2"]["crop_scale"] == 0.85
    extract(str(world["toml"]), tmp_path / "c", seeds=[2], crop_scale=0.85, **args)    # same value: fine
    with pytest.raises(IIMError, match=r"--crop-scale 0.85 .*never mixes crop scales.*--crop-scale 0.08"):
        extract(str(world["toml"]), tmp_path / "c", seeds=[3], crop_scale=0.08, **args)
    assert "train_shots2_seed3_views2" not in c.split_names()
    d = extract(str(world["toml"]), tmp_path / "d", seeds=[1], crop_scale=0.08, **args)
    assert used[-1] == (0.08, 1.0) and d.split("train_shots2_seed1_views2").attrs["crop_scale"] == 0.08
    for bad in (0.0, 1.5):
        with pytest.raises(IIMError, match="--crop-scale"):
            extract(str(world["toml"]), tmp_path / "e", seeds=[1], crop_scale=bad, **args)


def test_interrupted_split_resumes_to_equal_arrays(world, tmp_path, monkeypatch):
    args = dict(splits=["test"], batch_size=2, chunk_bytes=3 * 64 * 32 * 2, **TINY)   # 2-row chunks
    full = extract(str(world["toml"]), tmp_path / "full", **args)
    real = R.ImageRows.__getitem__

    def dies_at_row_7(self, row):
        if row == 7:
            raise KeyboardInterrupt
        return real(self, row)

    monkeypatch.setattr(R.ImageRows, "__getitem__", dies_at_row_7)
    with pytest.raises(KeyboardInterrupt):
        extract(str(world["toml"]), tmp_path / "cut", **args)
    cut = open_cache(tmp_path / "cut")
    assert not cut.is_complete("test") and cut.split_status("test")["rows_written"] == 6
    assert not (tmp_path / "cut" / ".extract.lock").exists()
    monkeypatch.setattr(R.ImageRows, "__getitem__", real)
    logs = []
    done = extract(str(world["toml"]), tmp_path / "cut", **dict(args, log=logs.append))
    assert "test: resuming at row 6 of 12" in logs
    for x, y in zip(full.split("test").read(), done.split("test").read()):
        np.testing.assert_array_equal(x, y)


def test_unreadable_images_stop_or_are_skipped(tmp_path):
    world = make_world(tmp_path / "w")
    truncate(write_image(world["test"] / "bee" / "broken.jpg", 1))
    (world["test"] / "cat" / "fake.png").write_text("not an image")
    with pytest.raises(IIMError, match=r"cannot read image .*bee/broken\.jpg .*--skip-bad"):
        extract(str(world["toml"]), tmp_path / "c", splits=["test"], **TINY)
    c = open_cache(tmp_path / "c")
    assert not c.is_complete("test")
    c = extract(str(world["toml"]), tmp_path / "c", splits=["test"], skip_bad=True, **TINY)
    split = c.split("test")
    assert split.n == 12 and "bee/broken.jpg" not in split.paths and "cat/fake.png" not in split.paths
    assert c.manifest["splits"]["test"]["skipped"] == ["bee/broken.jpg", "cat/fake.png"]
    assert c.manifest["class_dirs"] and check_cache(c) == []      # labels match their recorded folders
    raw = zarr.open_group(str(c.root), mode="r")["test"]
    bad = [i for i, p in enumerate(raw["path"][:]) if str(p) in ("bee/broken.jpg", "cat/fake.png")]
    assert len(bad) == 2 and not np.asarray(raw["local"][bad]).any()


def test_plan_splits_selection(world):
    bench = load_benchmark(str(world["toml"]))
    names = lambda plans: [p.name for p in plans]   # noqa: E731
    assert names(R.plan_splits(bench)) == ["test", "ood_noise", "ood_stripes"]
    assert names(R.plan_splits(bench, shots=[4], seeds=[1, 2])) == [
        "train_shots4_seed1", "train_shots4_seed2", "test", "ood_noise", "ood_stripes"]
    assert names(R.plan_splits(bench, ["ood_stripes", "test", "test"])) == ["ood_stripes", "test"]
    with pytest.raises(IIMError, match="the train split needs --shots"):
        R.plan_splits(bench, ["train"])
    with pytest.raises(IIMError, match="unknown split 'val'; choose from train, test, ood, ood_noise"):
        R.plan_splits(bench, ["val"])
    with pytest.raises(IIMError, match="has no OOD set 'sun'"):
        R.plan_splits(bench, ["ood_sun"])


def test_chunks_hold_whole_batches():
    assert R.chunk_rows_for(100, 8, chunk_bytes=2000) == 16     # 20 rows fit -> 2 batches of 8
    assert R.chunk_rows_for(100, 8, chunk_bytes=500) == 8       # at least one batch
    assert R.chunk_rows_for(200 * 1024, 128) % 128 == 0


def test_one_writer_per_cache(tmp_path):
    (tmp_path / ".extract.lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    with pytest.raises(IIMError, match="another 'iim extract'"):
        with folder_lock(tmp_path, ".extract.lock", "iim extract"):
            pass
    (tmp_path / ".extract.lock").write_text(f"{socket.gethostname()} 999999999")   # owner is gone
    with folder_lock(tmp_path, ".extract.lock", "iim extract"):
        assert (tmp_path / ".extract.lock").read_text().endswith(str(os.getpid()))
    assert not (tmp_path / ".extract.lock").exists()


def test_faults_found_in_review(world, tmp_path):
    """A kill between finishing a split and recording it, a split killed while being created, and
    prototypes rewritten: each heals on the next run, and a train split never skips a bad image."""
    out = tmp_path / "c"
    c = extract(str(world["toml"]), out, splits=["test"], **TINY)
    c.update_manifest(splits={"test": dict(c.manifest["splits"]["test"], complete=False)})
    c = extract(str(world["toml"]), out, splits=["test"], **TINY)
    assert c.manifest["splits"]["test"]["complete"] is True

    zarr.open_group(str(out), mode="a").create_group("ood_noise")      # killed right after create_group
    assert c.split_status("ood_noise")["uninitialised"]
    c = extract(str(world["toml"]), out, splits=["ood_noise"], **TINY)
    assert c.split("ood_noise").n == 5

    protos = c.global_prototypes()
    c.write_global_prototypes(protos.numpy() * 2)
    torch.testing.assert_close(open_cache(out).global_prototypes(), protos * 2)
    assert "global_proto.partial" not in os.listdir(out)

    fresh = make_world(tmp_path / "w2")
    truncate(next(p for p in sorted((fresh["train"] / "ant").iterdir()) if p.suffix == ".jpg"))
    with pytest.raises(IIMError, match="few-shot split must hold K images"):
        extract(str(fresh["toml"]), tmp_path / "t", splits=["train"], shots=[6], seeds=[1],   # every image
                skip_bad=True, **TINY)
