"""The split-name pair and the one fingerprint comparison every refusal uses."""
from iim.cache.fingerprint import compare
from iim.cache.names import (is_ood, old_grid_tag, ood_set_name, ood_split_name, parse_train_split, run_name,
                             same_split, split_tag, stored_name, train_split_name, without_seed)


def test_train_split_names_round_trip():
    for shots, seed, views in [(1, 1, 1), (16, 3, 1), (4, 2, 16), (16, 4294967295, 2)]:
        name = train_split_name(shots, seed, views)
        assert parse_train_split(name) == (name, shots, seed, views)
    assert train_split_name(16, 2) == "train_shots16_seed2" and train_split_name(16, 2, 4) == "train_shots16_seed2_views4"
    for other in ("test", "ood_textures", "train_shots16", "train_shots16_seed2_views", "xtrain_shots1_seed1",
                  "train_k16", "train_k16_s2_v", "xtrain_k1_s1", "train_shots1_s1", "train_k1_seed1"):
        assert parse_train_split(other) is None
    assert without_seed("train_shots16_seed2_views16") == "train_shots16_views16"
    assert without_seed("train_shots4_seed1") == "train_shots4" and without_seed("test") == "test"


def test_names_written_before_shots_were_spelled_out_still_parse():
    """``train_k{K}_s{S}[_v{V}]`` (older caches) parses to the same split as the new spelling."""
    for shots, seed, views in [(1, 1, 1), (16, 3, 1), (4, 2, 16)]:
        old = f"train_k{shots}_s{seed}" + (f"_v{views}" if views > 1 else "")
        assert parse_train_split(old) == (old, shots, seed, views)
        assert same_split(old, train_split_name(shots, seed, views))
        assert without_seed(old) == without_seed(train_split_name(shots, seed + 1, views))
    assert not same_split("train_k16_s1", "train_shots16_seed2") and not same_split("train_k4_s1_v4", "train_k4_s1")
    assert same_split("test", "test") and not same_split("test", "ood_x")


def test_stored_name_is_the_spelling_the_cache_holds():
    held = ["ood_x", "test", "train_k16_s1", "train_shots16_seed2"]
    assert stored_name("train_shots16_seed1", held) == "train_k16_s1"     # the older spelling on disk
    assert stored_name("train_k16_s1", held) == "train_k16_s1"
    assert stored_name("train_k16_s2", held) == "train_shots16_seed2"     # and the other way round
    assert stored_name("train_shots16_seed3", held) == "train_shots16_seed3"   # held by no spelling
    assert stored_name("train_shots16_seed1_views4", held) == "train_shots16_seed1_views4"
    assert stored_name("test", held) == "test" and stored_name("ood_y", held) == "ood_y"


def test_run_folder_and_grid_names_write_shots_as_shots():
    assert split_tag(16, 1) == "shots16-seed1" and split_tag(4, 2, 4) == "shots4-seed2-views4"
    assert run_name("in1k", 16, 1, 1, "iim") == "in1k-shots16-seed1-iim"
    assert run_name("in1k", 16, 3, 16, "locoop") == "in1k-shots16-seed3-views16-locoop"
    assert run_name("official", 4, 1, 4) == "official-shots4-seed1-views4"
    assert old_grid_tag(1, 2) == "seed2" and old_grid_tag(1, 2, 4) == "seed2-views4"
    assert old_grid_tag(4, 2, 4) == split_tag(4, 2, 4)


def test_ood_split_names_round_trip():
    assert ood_split_name("inaturalist") == ood_split_name("ood_inaturalist") == "ood_inaturalist"
    assert ood_set_name("ood_inaturalist") == "inaturalist" and ood_set_name("test") == "test"
    assert is_ood("ood_x") and not is_ood("test") and not is_ood("train_shots1_seed1")


def test_compare_names_the_differences_in_order():
    a = {"model": "m", "weights": "w", "classnames": ["a", "b", "c"]}
    assert compare(a, dict(a)) == []
    diff = compare(a, dict(a, weights="v", classnames=["a", "x", "c"]))
    assert [d.key for d in diff] == ["weights", "classnames"]
    assert str(diff[0]) == "weights: 'w' vs 'v'"
    assert str(diff[1]) == "class names: #1 is 'b' vs 'x'"
    assert str(compare(a, dict(a, classnames=["a"]))[0]) == "classes: 3 vs 1 classes"
    # an older file without a key: a difference unless missing_ok
    assert [d.key for d in compare({"model": "m"}, a, ("model", "weights"))] == ["weights"]
    assert compare({"model": "m"}, a, ("model", "weights"), missing_ok=True) == []
