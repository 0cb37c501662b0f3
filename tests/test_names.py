"""The split-name pair and the one fingerprint comparison every refusal uses."""
from iim.cache.fingerprint import compare
from iim.cache.names import (is_ood, ood_set_name, ood_split_name, parse_train_split, train_split_name,
                             without_seed)


def test_train_split_names_round_trip():
    for shots, seed, views in [(1, 1, 1), (16, 3, 1), (4, 2, 16), (16, 4294967295, 2)]:
        name = train_split_name(shots, seed, views)
        assert parse_train_split(name) == (name, shots, seed, views)
    assert train_split_name(16, 2) == "train_k16_s2" and train_split_name(16, 2, 4) == "train_k16_s2_v4"
    for other in ("test", "ood_textures", "train_k16", "train_k16_s2_v", "xtrain_k1_s1"):
        assert parse_train_split(other) is None
    assert without_seed("train_k16_s2_v16") == "train_k16_v16" and without_seed("train_k4_s1") == "train_k4"


def test_ood_split_names_round_trip():
    assert ood_split_name("inaturalist") == ood_split_name("ood_inaturalist") == "ood_inaturalist"
    assert ood_set_name("ood_inaturalist") == "inaturalist" and ood_set_name("test") == "test"
    assert is_ood("ood_x") and not is_ood("test") and not is_ood("train_k1_s1")


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
