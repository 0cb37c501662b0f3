"""The one loader of a cache's model (iim.cache_model.load_cache_model): the weights are checked against
the manifest before the model is built, with one set of rules and messages for every caller."""
import pytest
import torch

import iim.cache_model as cm
from iim.cache import create_cache
from iim.cache_model import load_cache_model
from iim.errors import IIMError
from iim.models import create_model, weights_id
from iim.text import global_prototypes

from helpers import CLASSNAMES, random_manifest

CLASSES = CLASSNAMES[:4]


def cache_with(tmp_path, name="c", protos_of=None, **manifest):
    """A cache holding only a manifest (the tiny model's, ``manifest`` overriding) and global prototypes:
    ``protos_of``'s, or random ones."""
    cache = create_cache(tmp_path / name, random_manifest(4, **manifest))
    protos = global_prototypes(protos_of, CLASSES) if protos_of is not None else torch.randn(4, 32)
    cache.write_global_prototypes(protos.numpy())
    return cache


def saved(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


def perturbed():
    """A model of the same architecture with other weights."""
    other = create_model("iim-test-tiny", "none")[0]
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    return other


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a model is built: a refused weights id is refused before any loading."""
    def refuse(*a, **kw):
        raise AssertionError("create_model was called")
    monkeypatch.setattr(cm, "create_model", refuse)


def test_the_recorded_weights_load(tmp_path, tiny_model):
    model, _ = load_cache_model(cache_with(tmp_path), "cpu")          # the manifest's own: random, seeded
    assert same_weights(model, tiny_model[0])
    file = saved(perturbed(), tmp_path / "w.pt")
    cache = cache_with(tmp_path, "file", pretrained=file, weights=weights_id(file))
    model, _ = load_cache_model(cache, "cpu")
    assert same_weights(model, create_model("iim-test-tiny", file)[0])
    model, _ = load_cache_model(cache, "cpu", pretrained=file)        # the same file, given
    assert same_weights(model, create_model("iim-test-tiny", file)[0])


def test_a_mismatching_weights_fingerprint_is_refused_before_loading(tmp_path, tiny_model, no_build):
    file = saved(tiny_model[0], tmp_path / "w.pt")
    cache = cache_with(tmp_path, pretrained=str(tmp_path / "old.pt"), weights="sha256:" + "0" * 64)
    with pytest.raises(IIMError) as e:
        load_cache_model(cache, "cpu", pretrained=file)
    assert str(e.value) == (f"weights {file} (sha256:{weights_id(file)[7:19]}...) are not the weights cache "
                            f"{cache.root} was extracted with (sha256:000000000000...); pass the weights the "
                            f"cache was extracted with")
    # the recorded file is there but changed since the extraction
    changed = cache_with(tmp_path, "changed", pretrained=file, weights="sha256:" + "0" * 64)
    with pytest.raises(IIMError, match=r"the packaged or local weights changed since the extraction: re-extract "
                                       r"the cache \(and retrain\), or pass the old weights with --pretrained FILE"):
        load_cache_model(changed, "cpu")
    # a tag for a cache of a file, another tag for a tag
    with pytest.raises(IIMError, match=r"weights none \(none\) are not the weights cache"):
        load_cache_model(cache, "cpu", pretrained="none")
    with pytest.raises(IIMError, match=r"weights openai \(openai\) are not the weights cache .* \(none\)"):
        load_cache_model(cache_with(tmp_path, "tag"), "cpu", pretrained="openai")


def test_missing_files_and_manifests_name_the_fix(tmp_path, no_build):
    gone = str(tmp_path / "gone.pt")
    cache = cache_with(tmp_path, pretrained=gone, weights="sha256:" + "ab" * 32)
    with pytest.raises(IIMError) as e:
        load_cache_model(cache, "cpu")
    assert str(e.value) == (f"the checkpoint file {gone} that cache {cache.root} was extracted with is not there "
                            f"any more; pass that file with --pretrained FILE (it must have sha256:abababababab...)")
    with pytest.raises(IIMError, match="checkpoint file not found: .*nope.pt"):
        load_cache_model(cache, "cpu", pretrained=str(tmp_path / "nope.pt"))
    bare = create_cache(tmp_path / "bare", {"benchmark": "random", "classnames": CLASSES})
    with pytest.raises(IIMError, match="the manifest does not name its model and weights; re-extract"):
        load_cache_model(bare, "cpu")


def test_a_file_for_a_tag_is_checked_by_its_text_prototypes(tmp_path, tiny_model):
    """No hash to compare with a tag: the file's text prototypes must be the cache's."""
    cache = cache_with(tmp_path, protos_of=tiny_model[0], pretrained="openai", weights="openai")
    same = saved(tiny_model[0], tmp_path / "same.pt")
    notes = []
    model, _ = load_cache_model(cache, "cpu", pretrained=same, note=notes.append)
    assert same_weights(model, tiny_model[0])
    assert notes == [f"Weights {same}: accepted for tag 'openai' (same text prototypes as the cache)"]
    other = saved(perturbed(), tmp_path / "other.pt")
    with pytest.raises(IIMError, match=r"weights .*other.pt are not the 'openai' weights cache .* was extracted "
                                       r"with \(its text prototypes differ\); pass those weights"):
        load_cache_model(cache, "cpu", pretrained=other)
    # a file for a hashed id is compared by its hash, never by prototypes
    hashed = cache_with(tmp_path, "hashed", protos_of=tiny_model[0], pretrained="demo",
                        weights="demo@sha256:" + "0" * 64)
    with pytest.raises(IIMError, match="are not the weights cache"):
        load_cache_model(hashed, "cpu", pretrained=same)


def test_another_image_size_is_refused(tmp_path):
    with pytest.raises(IIMError, match=r"iim-test-tiny: image size 32 differs from cache .*'s \(224\)"):
        load_cache_model(cache_with(tmp_path, image_size=224), "cpu")


def test_training_and_predict_use_the_same_rule(tmp_path, monkeypatch):
    """Both callers go through the loader (a wrong weights id refused alike by train and the Detector)."""
    import iim.predict.detector
    import iim.train.loop.resources as resources
    calls = []
    real = cm.load_cache_model

    def spy(*a, **kw):
        calls.append(a[0].root)
        return real(*a, **kw)
    monkeypatch.setattr(resources, "load_cache_model", spy)
    monkeypatch.setattr(cm, "load_cache_model", spy)       # the Detector imports it when it builds the encoder
    cache = cache_with(tmp_path)
    resources.Resources().model(cache, "cpu", None)
    det = iim.predict.detector.Detector.__new__(iim.predict.detector.Detector)
    det.cache, det.device, det.pretrained, det.notes = cache, torch.device("cpu"), None, []
    det.load_encoder()
    assert calls == [cache.root, cache.root]
