"""The IIM training loop on a small synthetic cache (tiny model, CPU)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from iim.cache import create_cache, open_cache, train_split_name
from iim.errors import IIMError
from iim.features import FEATURE_VERSION
from iim.models import create_model
from iim.text import global_prototypes
from iim.train import loop
from iim.train.checkpoint import load_checkpoint
from iim.train.loop import TrainConfig, build_encoder, epoch_batches, epoch_draw, lr_at_epoch, train

CLASSES = ["apple", "boat", "cat", "dog"]


def tiny_manifest(**overrides) -> dict:
    return {"model": "iim-test-tiny", "pretrained": "none", "weights": "none", "image_size": 32,
            "feature_version": FEATURE_VERSION, "benchmark": "synthetic", "classnames": CLASSES,
            **overrides}


def make_train_cache(path, *, shots=8, seeds=(1,), views=2, hw=64, dim=32, data_seed=0, manifest=None,
                     finish=True, views_in_name=False):
    """A cache with train splits ``train_split_name(shots, seed)`` (``_views{views}`` appended if ``views_in_name``)
    whose patches are learnable: a third of each view's patches are the image's class direction plus
    noise, the rest one of 3 background directions."""
    cache = create_cache(path, manifest or tiny_manifest())
    rng = np.random.default_rng(data_seed)
    C = len(cache.classnames)
    dirs, background = rng.standard_normal((C, dim)), rng.standard_normal((3, dim))
    n = C * shots
    labels = np.repeat(np.arange(C), shots)
    for seed in seeds:
        local = background[rng.integers(3, size=(n, views, hw))] + 0.3 * rng.standard_normal((n, views, hw, dim))
        for i in range(n):
            for v in range(views):
                fg = rng.choice(hw, size=hw // 3, replace=False)
                local[i, v, fg] = dirs[labels[i]] + 0.3 * rng.standard_normal((len(fg), dim))
        name = train_split_name(shots, seed, views if views_in_name else 1)
        w = cache.writer(name, n=n, views=views, hw=hw, dim=dim, labels=labels,
                         paths=[f"img{i}.png" for i in range(n)])
        w.append(local.mean(2), local)
        if finish:
            w.finish()
    return cache


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "cache"
    make_train_cache(path)
    return path


def config(cache_dir, out, **kw) -> TrainConfig:
    opts = dict(cache=str(cache_dir), split="train_shots8_seed1", out=str(out), k=8, n_neg=6, n_ctx=4, epochs=3,
                batch_size=8, lr=1e-3, logit_scale=100.0)     # None: the model's own (tested below)
    return TrainConfig(**{**opts, **kw})


def quiet(*args):
    pass


# ---- the loop ------------------------------------------------------------------------------------
def test_loss_decreases_and_checkpoint_follows_the_run_contract(cache_dir, tmp_path):
    ckpt = train(config(cache_dir, tmp_path / "run", epochs=10, lr=2.5e-4), progress=False, log=quiet)
    losses = [h["loss"] for h in ckpt["history"]]
    assert all(math.isfinite(x) for x in losses)
    # epoch 1 is the warm-up at lr 1e-5 (about the initial loss); 100 x cos logits make the next
    # epochs bumpy on random text weights, but training settles far lower
    assert np.mean(losses[-2:]) < 0.5 * losses[0], losses

    saved = load_checkpoint(tmp_path / "run")
    assert saved["epoch"] == 10 and saved["complete"] is True
    cfg = saved["config"]
    for key in ("cache", "split", "model", "weights", "classnames", "k", "n_neg", "class_specific",
                "seed", "epochs"):
        assert key in cfg
    assert cfg["cache"] == str(Path(cache_dir).resolve()) and cfg["classnames"] == CLASSES
    protos = saved["prototypes"]
    assert protos["global"].shape == (4, 32) and protos["local"].shape == (4, 32)
    assert protos["neg"].shape == (6, 32)
    assert all(p.dtype == torch.float32 for p in protos.values())

    # the saved prototypes are the text features of the saved contexts
    model, _ = create_model("iim-test-tiny", "none")
    enc = build_encoder(model, CLASSES, config(cache_dir, tmp_path))
    with torch.no_grad():
        enc.ctx.copy_(saved["contexts"]["ctx"])
        enc.neg_ctx.copy_(saved["contexts"]["neg_ctx"])
        id_f, neg_f = enc()
    torch.testing.assert_close(protos["local"], id_f)
    torch.testing.assert_close(protos["neg"], neg_f)
    with pytest.raises(IIMError):                          # none in this cache: computed from the model
        open_cache(cache_dir).global_prototypes()
    torch.testing.assert_close(protos["global"], global_prototypes(model, CLASSES))
    assert (tmp_path / "run" / "config.json").is_file()


def test_same_seed_same_contexts_other_seed_not(cache_dir, tmp_path):
    runs = [train(config(cache_dir, tmp_path / f"r{i}", epochs=2, seed=s), progress=False, log=quiet)
            for i, s in enumerate((1, 1, 2))]
    assert torch.equal(runs[0]["contexts"]["ctx"], runs[1]["contexts"]["ctx"])
    assert torch.equal(runs[0]["contexts"]["neg_ctx"], runs[1]["contexts"]["neg_ctx"])
    assert not torch.equal(runs[0]["contexts"]["ctx"], runs[2]["contexts"]["ctx"])


def test_streamed_features_train_exactly_like_loaded_ones(cache_dir, tmp_path):
    a = train(config(cache_dir, tmp_path / "a", epochs=2, features_in="device"), progress=False, log=quiet)
    b = train(config(cache_dir, tmp_path / "b", epochs=2, features_in="stream"), progress=False, log=quiet)
    assert torch.equal(a["contexts"]["ctx"], b["contexts"]["ctx"])


@pytest.mark.parametrize("kw", [
    dict(hard_negative_mining=False), dict(ood_patches="all-rest"), dict(n_neg=0), dict(lambda_neg=0.0),
    dict(lambda_div=0.0), dict(class_specific=True), dict(k=32),
])
def test_ablations_and_options_train(cache_dir, tmp_path, kw):
    ckpt = train(config(cache_dir, tmp_path / "r", epochs=2, **kw), progress=False, log=quiet)
    assert all(math.isfinite(h["loss"]) for h in ckpt["history"])
    assert ckpt["prototypes"]["neg"].shape == (kw.get("n_neg", 6), 32)
    if kw.get("n_neg") == 0:
        assert all(h["neg"] == 0 for h in ckpt["history"])
    if kw.get("class_specific"):
        assert ckpt["contexts"]["ctx"].shape == (4, 4, 64)


def test_ablation_switches_change_the_result(cache_dir, tmp_path):
    base = train(config(cache_dir, tmp_path / "base", epochs=2), progress=False, log=quiet)
    for i, kw in enumerate([dict(hard_negative_mining=False), dict(ood_patches="all-rest"),
                            dict(lambda_neg=0.0), dict(lambda_div=0.0)]):
        other = train(config(cache_dir, tmp_path / f"o{i}", epochs=2, **kw), progress=False, log=quiet)
        assert not torch.equal(base["contexts"]["ctx"], other["contexts"]["ctx"]), kw


# ---- schedule and sampling ----------------------------------------------------------------------
def test_lr_schedule_is_dassl_constant_warmup_then_cosine():
    """Dassl: ConstantWarmupScheduler(cons_lr) for 1 epoch, then CosineAnnealingLR(T_max=epochs),
    the successor stepped once per epoch after the warm-up."""
    epochs, lr = 50, 2.5e-4
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    expected = [1e-5]
    for _ in range(1, epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        cosine.step()
    got = [lr_at_epoch(e, lr=lr, epochs=epochs) for e in range(epochs)]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert got[1] == lr and got[-1] < 0.01 * lr


def test_epoch_draw_is_a_pure_function_of_seed_and_epoch():
    v1, o1 = epoch_draw(1, 3, 100, 4)
    v2, o2 = epoch_draw(1, 3, 100, 4)
    assert torch.equal(v1, v2) and torch.equal(o1, o2)
    assert sorted(o1.tolist()) == list(range(100)) and set(v1.tolist()) == {0, 1, 2, 3}
    v3, o3 = epoch_draw(1, 4, 100, 4)
    v4, _ = epoch_draw(2, 3, 100, 4)
    assert not torch.equal(o1, o3) and not torch.equal(v1, v3) and not torch.equal(v1, v4)
    sizes = [len(b) for b in epoch_batches(torch.arange(70), 32)]
    assert sizes == [32, 32]                                   # Dassl drops the incomplete batch
    assert [len(b) for b in epoch_batches(torch.arange(20), 32)] == [20]


# ---- faults -------------------------------------------------------------------------------------
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cache_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = loop.steps.iim_losses

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 6:                    # 4 steps per epoch: epoch 2, step 2
            out["pos"] = out["pos"] * float("nan")
        return out

    monkeypatch.setattr(loop.steps, "iim_losses", poisoned)
    with pytest.raises(IIMError, match=r"non-finite loss at epoch 2, step 2.*epoch 1"):
        train(config(cache_dir, tmp_path / "r", epochs=3), progress=False, log=quiet)
    kept = load_checkpoint(tmp_path / "r")
    assert kept["epoch"] == 1 and not kept["complete"]
    assert torch.isfinite(kept["contexts"]["ctx"]).all()


def test_incomplete_split_is_refused(tmp_path):
    make_train_cache(tmp_path / "c", finish=False, shots=2)
    with pytest.raises(IIMError, match="incomplete"):
        train(config(tmp_path / "c", tmp_path / "r", split="train_shots2_seed1"), progress=False, log=quiet)


def test_k_too_large_for_the_patches_is_refused(cache_dir, tmp_path):
    with pytest.raises(IIMError, match="2k <= 64"):
        train(config(cache_dir, tmp_path / "r", k=33), progress=False, log=quiet)


def test_existing_run_needs_resume_or_overwrite(cache_dir, tmp_path):
    out = tmp_path / "r"
    first = train(config(cache_dir, out, epochs=1), progress=False, log=quiet)
    with pytest.raises(IIMError, match="--resume.*--overwrite"):
        train(config(cache_dir, out, epochs=1), progress=False, log=quiet)
    (out / "results.json").write_text("{}")
    again = train(config(cache_dir, out, epochs=1), overwrite=True, progress=False, log=quiet)
    assert torch.equal(first["contexts"]["ctx"], again["contexts"]["ctx"])
    assert not (out / "results.json").exists()             # stale scores of the old run are removed
    done = train(config(cache_dir, out, epochs=1), resume=True, progress=False, log=quiet)
    assert done["epoch"] == 1                              # complete: nothing to do


def test_resume_refuses_other_options_classes_or_model(cache_dir, tmp_path):
    out = tmp_path / "r"
    train(config(cache_dir, out, epochs=2), progress=False, log=quiet)
    ckpt = load_checkpoint(out)
    ckpt["complete"], ckpt["epoch"] = False, 1
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.raises(IIMError, match="--k 8"):
        train(config(cache_dir, out, epochs=2, k=4), resume=True, progress=False, log=quiet)
    with pytest.raises(IIMError, match="--epochs 2"):
        train(config(cache_dir, out, epochs=3), resume=True, progress=False, log=quiet)

    other = tmp_path / "other_classes"
    make_train_cache(other, manifest=tiny_manifest(classnames=["apple", "boat", "cat", "eel"]))
    with pytest.raises(IIMError, match="other classes"):
        train(config(other, out, epochs=2), resume=True, progress=False, log=quiet)
    other_model = tmp_path / "other_model"
    make_train_cache(other_model, manifest=tiny_manifest(model="iim-test-tiny-2"))
    with pytest.raises(IIMError, match="model='iim-test-tiny'"):
        train(config(other_model, out, epochs=2), resume=True, progress=False, log=quiet)
    # the run itself is untouched and resumes with its own options
    ckpt = train(config(cache_dir, out, epochs=2), resume=True, progress=False, log=quiet)
    assert ckpt["complete"]


def test_weights_file_must_match_the_cache(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"not the weights")
    make_train_cache(tmp_path / "c", shots=2,
                     manifest=tiny_manifest(pretrained=str(tmp_path / "gone.bin"), weights="sha256:" + "0" * 64))
    cfg = config(tmp_path / "c", tmp_path / "r", split="train_shots2_seed1")
    with pytest.raises(IIMError, match="is not there any more; pass that file with --pretrained FILE"):
        train(cfg, progress=False, log=quiet)
    cfg.pretrained = str(weights)
    with pytest.raises(IIMError, match=r"\(sha256:[0-9a-f]{12}\.\.\.\) are not the weights cache .* was extracted "
                                       r"with \(sha256:000000000000\.\.\.\)"):
        train(cfg, progress=False, log=quiet)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_global_prototypes_come_from_the_cache_when_stored(tmp_path):
    cache = make_train_cache(tmp_path / "c", shots=2)
    stored = torch.randn(4, 32)
    cache.write_global_prototypes(stored.numpy())
    ckpt = train(config(tmp_path / "c", tmp_path / "r", split="train_shots2_seed1", epochs=1), progress=False,
                 log=quiet)
    assert torch.equal(ckpt["prototypes"]["global"], stored)


def test_compiled_step_trains_like_the_eager_one(cache_dir, tmp_path):
    """--compile (torch.compile of prompt encoder + losses, backward included) changes speed, not the
    result: the same contexts to float32 rounding after two epochs."""
    a = train(config(cache_dir, tmp_path / "a", epochs=2), progress=False, log=quiet)
    from torch._dynamo.utils import counters
    graphs = counters["stats"]["unique_graphs"]
    b = train(config(cache_dir, tmp_path / "b", epochs=2, compile="default"), progress=False, log=quiet)
    assert b["config"]["compile"] == "default"
    assert counters["stats"]["unique_graphs"] > graphs       # it did compile, not fall back to eager
    for key in ("ctx", "neg_ctx"):
        torch.testing.assert_close(b["contexts"][key], a["contexts"][key], atol=1e-5, rtol=1e-4)


def test_flex_attention_is_refused_on_cpu(cache_dir, tmp_path):
    with pytest.raises(IIMError, match="flex trains on CUDA only"):
        train(config(cache_dir, tmp_path / "r", attention="flex"), progress=False, log=quiet)


class InductorError(RuntimeError):     # stands for torch._inductor.exc.InductorError
    pass


InductorError.__module__ = "torch._inductor.exc"


def test_a_failing_compile_is_a_one_line_error(cache_dir, tmp_path, monkeypatch):
    def compile_raising(error):
        def broken_compile(fn, **kwargs):
            def run(*args):
                raise error
            return run
        return broken_compile
    monkeypatch.setattr(torch, "compile", compile_raising(
        InductorError("backend 'inductor' failed: no C compiler\n(long traceback)")))
    with pytest.raises(IIMError, match=r"torch.compile failed \(InductorError: backend 'inductor' failed: "
                                       r"no C compiler\); train without --compile"):
        train(config(cache_dir, tmp_path / "r", compile="default"), progress=False, log=quiet)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    # any other error of the first step is not blamed on the compiler
    monkeypatch.setattr(torch, "compile", compile_raising(MemoryError("out of memory")))
    with pytest.raises(MemoryError, match="out of memory"):
        train(config(cache_dir, tmp_path / "r2", compile="default"), progress=False, log=quiet)


def test_refusals_come_before_overwrite_deletes_the_run(cache_dir, tmp_path):
    first = train(config(cache_dir, tmp_path / "r", epochs=1), progress=False, log=quiet)
    with pytest.raises(IIMError, match="flex trains on CUDA only"):
        train(config(cache_dir, tmp_path / "r", epochs=1, attention="flex"), overwrite=True,
              progress=False, log=quiet)
    kept = load_checkpoint(tmp_path / "r")
    assert torch.equal(kept["contexts"]["ctx"], first["contexts"]["ctx"])


def test_attention_kernels_train_alike(cache_dir, tmp_path):
    """--attention changes how attention is computed, not what: the same contexts (N(0, 0.02) at the
    start) up to rounding, amplified over 2 epochs to ~2e-5 at most (a non-causal mask: by ~1)."""
    runs = [train(config(cache_dir, tmp_path / a, epochs=2, attention=a), progress=False, log=quiet)
            for a in ("auto", "bmm", "blocks")]
    for other in runs[1:]:
        for key in ("ctx", "neg_ctx"):
            torch.testing.assert_close(other["contexts"][key], runs[0]["contexts"][key], atol=1e-4, rtol=0)


# ---- the training logit scale (SPEC §3) ----------------------------------------------------------
def test_logit_scale_is_the_models_own_unless_overridden_and_resume_keeps_it(cache_dir, tmp_path):
    tiny = float(create_model("iim-test-tiny", "none")[0].logit_scale.exp())
    assert abs(tiny - 100) > 1                                      # the test would not tell otherwise
    run = train(config(cache_dir, tmp_path / "a", epochs=1, logit_scale=None), progress=False, log=quiet)
    assert run["config"]["logit_scale"] == pytest.approx(tiny)     # cache without a record: the weights'
    recorded = tmp_path / "recorded"
    make_train_cache(recorded, manifest=tiny_manifest(logit_scale=42.0))
    run = train(config(recorded, tmp_path / "b", epochs=2, logit_scale=None), progress=False, log=quiet)
    assert run["config"]["logit_scale"] == 42.0                    # the manifest's record
    run = train(config(recorded, tmp_path / "c", epochs=1, logit_scale=7.5), progress=False, log=quiet)
    assert run["config"]["logit_scale"] == 7.5                     # --logit-scale overrides

    ckpt = load_checkpoint(tmp_path / "b")
    ckpt["complete"], ckpt["epoch"] = False, 1
    torch.save(ckpt, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(IIMError, match="--logit-scale 42.0"):
        train(config(recorded, tmp_path / "b", epochs=2, logit_scale=100.0), resume=True, progress=False,
              log=quiet)
    resumed = train(config(recorded, tmp_path / "b", epochs=2, logit_scale=None), resume=True, progress=False,
                    log=quiet)
    assert resumed["complete"]


def test_logit_scale_changes_the_training(cache_dir, tmp_path):
    a = train(config(cache_dir, tmp_path / "a", epochs=2, logit_scale=100.0), progress=False, log=quiet)
    b = train(config(cache_dir, tmp_path / "b", epochs=2, logit_scale=10.0), progress=False, log=quiet)
    assert not torch.allclose(a["contexts"]["ctx"], b["contexts"]["ctx"])


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_logit_scale_is_refused(cache_dir, tmp_path, bad):
    with pytest.raises(IIMError, match="--logit-scale"):
        train(config(cache_dir, tmp_path / "r", logit_scale=bad), progress=False, log=quiet)
    assert not (tmp_path / "r").exists()


# ---- recipes (SPEC §9) ---------------------------------------------------------------------------
def test_recipes_set_their_switches_and_an_explicit_switch_wins():
    from iim.train.config import RECIPES, resolve_recipe
    base = dict(cache="c", split="s", out="o")
    assert resolve_recipe(TrainConfig(**base)).class_specific is False
    official = resolve_recipe(TrainConfig(**base, recipe="official"))
    assert {k: getattr(official, k) for k in RECIPES["official"]} == dict(
        class_specific=True, train_projection=True, denominators="official", div_diagonal=True)
    ablation = resolve_recipe(TrainConfig(**base, recipe="official", class_specific=False))
    assert ablation.class_specific is False and ablation.train_projection is True
    with pytest.raises(IIMError, match="--recipe 'bogus'"):          # before the cache is even opened
        train(TrainConfig(**base, recipe="bogus"), progress=False, log=quiet)


def test_trainable_projection_is_used_for_local_and_negative_prompts_only(cache_dir, tmp_path, monkeypatch):
    from iim.text import encode_prompts_reference
    run = train(config(cache_dir, tmp_path / "r", epochs=2, train_projection=True), progress=False, log=quiet)
    model, _ = create_model("iim-test-tiny", "none")
    proj = run["contexts"]["projection"]
    assert proj.shape == model.text_projection.shape
    assert not torch.allclose(proj, model.text_projection.detach())          # it learned
    trained = create_model("iim-test-tiny", "none")[0]
    with torch.no_grad():
        trained.text_projection.copy_(proj)
    id_f, neg_f = encode_prompts_reference(trained, CLASSES, run["contexts"]["ctx"], run["contexts"]["neg_ctx"])
    torch.testing.assert_close(run["prototypes"]["local"], id_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run["prototypes"]["neg"], neg_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run["prototypes"]["global"], global_prototypes(model, CLASSES))   # frozen

    # resuming restores the projection too: 1 + 1 epochs == 2 epochs
    real_save = loop.save

    def save_then_stop(*args, **kw):
        real_save(*args, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(loop.epochs, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(config(cache_dir, tmp_path / "split", epochs=2, train_projection=True), progress=False, log=quiet)
    monkeypatch.setattr(loop.epochs, "save", real_save)
    resumed = train(config(cache_dir, tmp_path / "split", epochs=2, train_projection=True), resume=True,
                    progress=False, log=quiet)
    assert torch.equal(resumed["contexts"]["projection"], proj)


def test_official_recipe_trains_and_records_its_switches(cache_dir, tmp_path):
    run = train(config(cache_dir, tmp_path / "o", epochs=2, recipe="official"), progress=False, log=quiet)
    cfg = run["config"]
    assert cfg["recipe"] == "official" and cfg["class_specific"] and cfg["train_projection"]
    assert cfg["denominators"] == "official" and cfg["div_diagonal"]
    assert run["contexts"]["ctx"].shape == (4, 4, 64) and "projection" in run["contexts"]
    paper = train(config(cache_dir, tmp_path / "p", epochs=2), progress=False, log=quiet)
    assert paper["config"]["recipe"] == "paper" and "projection" not in paper["contexts"]
    # each loss switch alone changes the result
    for kw in (dict(denominators="official"), dict(div_diagonal=True)):
        other = train(config(cache_dir, tmp_path / str(kw), epochs=2, **kw), progress=False, log=quiet)
        assert other["history"][-1]["loss"] != paper["history"][-1]["loss"], kw


# ---- --ctx-init (CoOp) ---------------------------------------------------------------------------
def test_ctx_init_starts_from_the_words_so_the_prompt_is_the_hand_written_one(cache_dir, tmp_path):
    model, _ = create_model("iim-test-tiny", "none")
    enc = build_encoder(model, CLASSES, config(cache_dir, tmp_path, n_ctx=4, ctx_init="a photo of a"))
    with torch.no_grad():
        id_f, _ = enc()
    torch.testing.assert_close(id_f, global_prototypes(model, CLASSES), atol=1e-5, rtol=1e-5)   # exactly CoOp's

    longer = build_encoder(model, CLASSES, config(cache_dir, tmp_path, n_ctx=6, ctx_init="a photo of a"))
    plain = build_encoder(model, CLASSES, config(cache_dir, tmp_path, n_ctx=6))
    torch.testing.assert_close(longer.ctx[2:], enc.ctx)                  # the words end the context
    assert torch.equal(longer.ctx[:2], plain.ctx[:2])                    # the rest: N(0, 0.02) as without
    assert torch.equal(longer.neg_ctx, plain.neg_ctx)                    # negatives keep their init
    csc = build_encoder(model, CLASSES, config(cache_dir, tmp_path, n_ctx=4, ctx_init="a photo of a",
                                               class_specific=True))
    assert all(torch.equal(csc.ctx[c], enc.ctx) for c in range(len(CLASSES)))


def test_ctx_init_longer_than_n_ctx_is_refused_before_any_work(cache_dir, tmp_path):
    with pytest.raises(IIMError, match=r"--ctx-init 'a photo of a' is 4 tokens, longer than --n-ctx 3"):
        train(config(cache_dir, tmp_path / "r", n_ctx=3, ctx_init="a photo of a"), progress=False, log=quiet)
    assert not (tmp_path / "r").exists()
    run = train(config(cache_dir, tmp_path / "ok", epochs=1, ctx_init="a photo of a"), progress=False, log=quiet)
    assert run["config"]["ctx_init"] == "a photo of a"
