"""Benchmarks registry, layout variants, user TOML benchmarks and portable few-shot sampling."""
import os
import random

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from imagegen import make_image_folder, make_ood_folder, make_world, write_image
from iim.data import benchmarks as B
from iim.data import folders
from iim.data.benchmarks import imagenet_wnids, load_benchmark, register_benchmark
from iim.data.folders import list_images
from iim.data.splits import few_shot, plan_ood, plan_test, plan_train
from iim.errors import IIMError


def reference_few_shot(files, shots, seed, class_dir):
    """The documented rule, written out plainly: one random() key per file in sorted order."""
    rng = random.Random(f"{seed}/{class_dir}")
    keys = {f: rng.random() for f in sorted(files)}
    return sorted(sorted(files, key=keys.__getitem__)[:shots])


# --- listing and sampling ----------------------------------------------------------------------
def test_list_images_sorted_by_extension_case_insensitive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JPEG", "sub/d.webp", ".hidden.jpg", "notes.txt", ".git/e.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path) == ["a.jpg", "b.PNG", "c.JPEG", "sub/d.webp"]
    assert list_images(tmp_path, recursive=False) == ["a.jpg", "b.PNG", "c.JPEG"]


def test_few_shot_matches_documented_rule_nested_and_seeded():
    files = [f"dog/{i:04d}.jpg" for i in range(40)]
    shuffled = random.Random(5).sample(files, len(files))
    for seed in (1, 2, 3):
        for k in (1, 2, 4, 8, 16):
            got = few_shot(shuffled, k, seed, "dog")
            assert got == reference_few_shot(files, k, seed, "dog") and len(got) == k
        assert set(few_shot(files, 4, seed, "dog")) <= set(few_shot(files, 16, seed, "dog"))  # nested
    assert few_shot(files, 8, 1, "dog") != few_shot(files, 8, 2, "dog")
    assert few_shot(files, 8, 1, "dog") != few_shot(files, 8, 1, "cat")   # classes draw independently


def test_few_shot_independent_of_directory_listing_order(tmp_path, monkeypatch):
    world = make_world(tmp_path / "w", train_per_class=9)
    bench = load_benchmark(str(world["toml"]))
    plain = plan_train(bench, 3, seed=7)

    real_walk, real_scandir = os.walk, os.scandir

    def reversed_walk(top, **kw):              # the filesystem returns entries in another order
        for dirpath, dirnames, filenames in real_walk(top, **kw):
            dirnames.reverse()
            yield dirpath, dirnames, filenames[::-1]

    class ReversedScandir:                     # os.scandir's interface, entries in reverse order
        def __init__(self, path):
            with real_scandir(path) as it:
                self.entries = iter(sorted(it, key=lambda e: e.name, reverse=True))

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(folders.os, "walk", reversed_walk)
    monkeypatch.setattr(folders.os, "scandir", ReversedScandir)
    again = plan_train(load_benchmark(str(world["toml"])), 3, seed=7)
    assert again.files == plain.files and again.labels == plain.labels
    assert again.attrs["files_sha256"] == plain.attrs["files_sha256"]
    assert plain.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(f.startswith(bench.class_dirs[c] + "/") for f, c in zip(plain.files, plain.labels))


def test_same_split_from_a_copy_made_in_another_order(tmp_path):
    names = [f"{i:03d}.png" for i in range(12)]
    for root, order in ((tmp_path / "a", names), (tmp_path / "b", names[::-1])):
        for n in order:
            write_image(root / "train" / "cls" / n, 0)
        (root / "b.toml").write_text('name = "x"\ntrain = "train"\n')
    a = plan_train(load_benchmark(str(tmp_path / "a" / "b.toml")), 5, seed=3)
    b = plan_train(load_benchmark(str(tmp_path / "b" / "b.toml")), 5, seed=3)
    assert a.files == b.files


def test_k_larger_than_a_class_names_the_class(tmp_path):
    world = make_world(tmp_path, train_per_class=3)
    with pytest.raises(IIMError, match="class 'ant' has 3 images, fewer than --shots 4"):
        plan_train(load_benchmark(str(world["toml"])), 4, seed=1)


def test_empty_class_and_empty_ood_set_are_errors(tmp_path):
    world = make_world(tmp_path)
    (world["test"] / "bee").rename(tmp_path / "moved")
    (world["test"] / "bee").mkdir()
    (world["train"] / "bee").rename(tmp_path / "moved2")
    (world["train"] / "bee").mkdir()
    bench = load_benchmark(str(world["toml"]))
    with pytest.raises(IIMError, match="bee.* holds no images"):
        plan_test(bench)
    empty = tmp_path / "ood" / "noise"
    for f in list_images(empty):
        (empty / f).unlink()
    with pytest.raises(IIMError, match="noise.*holds no images"):
        plan_ood(bench, "noise")


# --- the ImageNet family -------------------------------------------------------------------------
def fake_imagenet(root, wnids, *, val_per_class=1, train_per_class=2, layout="imagenet"):
    for w in wnids:
        make_image_folder(root / layout / "train", {w: train_per_class}, seed=1)
        make_image_folder(root / layout / "val", {w: val_per_class}, seed=2)


def test_imagenet_variants_classes_in_sorted_wnid_order(tmp_path):
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids == sorted(wnids)
    easy = load_benchmark("imagenet500-easy", tmp_path)
    hard = load_benchmark("imagenet500-hard", tmp_path)
    full = load_benchmark("imagenet", tmp_path)
    assert easy.class_dirs == wnids[:500] and hard.class_dirs == wnids[500:] and full.class_dirs == wnids
    assert easy.classnames == list(IMAGENET_CLASSNAMES[:500])
    assert hard.classnames == list(IMAGENET_CLASSNAMES[500:])
    i100 = load_benchmark("imagenet100", tmp_path)
    listed = (B.resources.files("iim.data") / "imagenet100_wnids.txt").read_text().split()
    assert i100.class_dirs == sorted(listed) and len(i100.class_dirs) == 100
    assert i100.classnames == [IMAGENET_CLASSNAMES[wnids.index(w)] for w in sorted(listed)]
    assert i100.test.expected == 5000 and full.test.expected == 50000
    assert {k: f.expected for k, f in full.ood.items()} == {
        "inaturalist": 10000, "sun": 10000, "places": 10000, "texture": 5640}


@pytest.mark.parametrize("layout", ["imagenet", "ILSVRC2012", "ILSVRC/Data/CLS-LOC"])
def test_imagenet100_layouts_and_count_warning(tmp_path, layout):
    bench = load_benchmark("imagenet100", tmp_path)
    fake_imagenet(tmp_path, bench.class_dirs, layout=layout)
    warnings = []
    test = plan_test(bench, warn=warnings.append)
    assert test.n == 100 and test.labels == list(range(100))
    assert test.files[0] == f"{bench.class_dirs[0]}/000.png"
    assert len(warnings) == 1 and "has 100 images, expected 5000" in warnings[0]
    train = plan_train(bench, 2, seed=1)
    assert train.n == 200 and train.root == (tmp_path / layout / "train").resolve()


def test_ood_layout_variants_case_insensitive(tmp_path):
    make_ood_folder(tmp_path / "inaturalist" / "images", 3)     # lower case, nested
    make_ood_folder(tmp_path / "SUN", 2)
    make_ood_folder(tmp_path / "dtd" / "images", 4)             # DTD's own layout
    (tmp_path / "dtd" / "labels").mkdir()
    (tmp_path / "dtd" / "labels" / "labels.txt").write_text("not an image")
    bench = load_benchmark("imagenet", tmp_path)
    warnings = []
    assert plan_ood(bench, "inaturalist", warn=warnings.append).n == 3
    texture = plan_ood(bench, "texture", warn=warnings.append)
    assert texture.n == 4 and texture.root == (tmp_path / "dtd" / "images").resolve()
    assert texture.name == "ood_texture" and set(texture.labels) == {-1}
    assert "expected 5640" in warnings[-1]
    make_ood_folder(tmp_path / "Texture" / "images", 2)          # Texture/images is preferred
    assert plan_ood(bench, "texture").root == (tmp_path / "Texture" / "images").resolve()
    with pytest.raises(IIMError, match=r"OOD set places not found \(looked for .*Places"):
        plan_ood(bench, "places")


def test_flat_val_folder_is_a_clear_error(tmp_path):
    bench = load_benchmark("imagenet500-easy", tmp_path)
    make_image_folder(tmp_path / "imagenet" / "val", {"x": 3}, flat=True)
    with pytest.raises(IIMError, match="holds images directly, not in class folders"):
        plan_test(bench)


def test_missing_class_folder_is_named(tmp_path):
    bench = load_benchmark("imagenet100", tmp_path)
    fake_imagenet(tmp_path, bench.class_dirs[:-1])
    with pytest.raises(IIMError, match=f"class folder '{bench.class_dirs[-1]}' missing"):
        plan_test(bench)


def test_data_root_from_environment_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("IIM_DATA_ROOT", raising=False)
    with pytest.raises(IIMError, match="no data root: pass --data-root"):
        load_benchmark("imagenet")
    with pytest.raises(IIMError, match="is not a folder"):
        load_benchmark("imagenet", tmp_path / "nope")
    monkeypatch.setenv("IIM_DATA_ROOT", str(tmp_path))
    assert load_benchmark("imagenet").test.candidates[0][0] == tmp_path
    with pytest.raises(IIMError, match="unknown benchmark 'imagenet-1k'; known: .*imagenet100"):
        load_benchmark("imagenet-1k")


def test_register_benchmark(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))
    world = make_world(tmp_path)
    register_benchmark("mine", lambda data_root=None: B.load_toml_benchmark(world["toml"]), description="x")
    assert "mine" in B.known_benchmarks() and load_benchmark("mine").name == "toy"
    with pytest.raises(ValueError):
        register_benchmark("mine", lambda data_root=None: None)
    register_benchmark("lazy", "iim.nonexistent_module:resolver")
    with pytest.raises(IIMError, match="not available"):
        load_benchmark("lazy")


# --- user benchmarks (TOML) ------------------------------------------------------------------------
def test_toml_benchmark_paths_relative_to_the_file(tmp_path, monkeypatch):
    world = make_world(tmp_path / "data")
    monkeypatch.chdir(tmp_path)                  # not the TOML's folder
    bench = load_benchmark(str(world["toml"]))
    assert bench.name == "toy" and bench.classnames == ["ant", "bee", "cat"] == bench.class_dirs
    assert bench.test.path() == world["test"].resolve() and sorted(bench.ood) == ["noise", "stripes"]
    assert plan_ood(bench, "noise").files[0].startswith("part0/")   # searched recursively


@pytest.mark.parametrize("extra, match", [
    ('classnames = ["an ant", "a bee", "a cat"]', None),
    ('classnames = { bee = "honey bee" }', None),
    ('classnames = ["one"]', "1 classnames for 3 class folders"),
    ('classnames = { wasp = "w" }', "'wasp', which is not a class folder"),
    ('classnames = ["a", "a", "b"]', "classnames must differ; 'a' names folders ant, bee"),
    ('classnames = { bee = "cat" }', "'cat' names folders bee, cat"),
    ('colour = "red"', "unknown key 'colour'"),
])
def test_toml_classnames_and_validation(tmp_path, extra, match):
    world = make_world(tmp_path)
    text = world["toml"].read_text().replace('name = "toy"', f'name = "toy"\n{extra}')
    world["toml"].write_text(text)
    if match:
        with pytest.raises(IIMError, match=match):
            load_benchmark(str(world["toml"]))
    else:
        names = load_benchmark(str(world["toml"])).classnames
        assert names in (["an ant", "a bee", "a cat"], ["ant", "honey bee", "cat"])


@pytest.mark.parametrize("text, match", [
    ('train = "train"\n', "'name' must be"),
    ('name = "x y"\ntest = "test"\n', "'name' must be"),
    ('name = "x"\n', "at least one of 'train' and 'test'"),
    ('name = "x"\ntest = "nowhere"\n', "x test folder not found"),
    ('name = "x"\ntest = "test"\n[ood]\n"bad name" = "ood"\n', "OOD set name 'bad name'"),
    ('name = "x"\ntest = \n', "invalid TOML"),
])
def test_toml_errors(tmp_path, text, match):
    make_world(tmp_path)
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(IIMError, match=match):
        load_benchmark(str(tmp_path / "b.toml"))
    with pytest.raises(IIMError, match="benchmark file not found"):
        load_benchmark(str(tmp_path / "missing.toml"))


def test_toml_train_and_test_classes_must_agree(tmp_path):
    world = make_world(tmp_path)
    make_image_folder(world["train"], {"dog": 2})
    with pytest.raises(IIMError, match="different class folders \\('dog' only in train\\)"):
        load_benchmark(str(world["toml"]))


def test_folder_link_loops_end_and_each_file_is_listed_once(tmp_path):
    for name in ("a.png", "sub/b.png"):
        write_image(tmp_path / "ood" / name, 0)
    (tmp_path / "ood" / "sub" / "loop").symlink_to("..")              # ln -s .. ood/sub/loop
    (tmp_path / "ood" / "again").symlink_to("sub")                     # the same folder twice
    assert list_images(tmp_path / "ood") == ["a.png", "again/b.png"]
