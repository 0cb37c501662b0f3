"""scripts/train_demo_model.py: a run stopped and resumed from its checkpoint ends bit for bit where an
uninterrupted run ends; the new loss pieces (caption matching, length-split text encoding) are exact."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"


@pytest.fixture(scope="module")
def tdm():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def test_resumed_run_equals_uninterrupted_run(tdm, tmp_path):
    torch.set_num_threads(1)
    args = ["--steps", "6", "--batch", "8", "--pool", "48", "--workers", "1", "--threads", "1",
            "--eval-per-class", "1", "--log-every", "100", "--checkpoint-every", "3"]
    full = tmp_path / "full.safetensors"
    tdm.main(args + ["--out", str(full), "--checkpoint", str(tmp_path / "a.ckpt")])
    # the uninterrupted run left its step-3 checkpoint: resume from it as a stopped run would
    resumed = tmp_path / "resumed.safetensors"
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=False)
    assert ckpt["step"] == 3
    tdm.main(args + ["--out", str(resumed), "--checkpoint", str(tmp_path / "a.ckpt"), "--resume"])
    a, b = _tensors(full), _tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a checkpoint of another recipe is refused
    with pytest.raises(SystemExit, match="another recipe"):
        tdm.main([*args[:1], "7", *args[2:], "--out", str(resumed), "--checkpoint", str(tmp_path / "a.ckpt"),
                  "--resume"])


def test_matches_marks_the_captions_that_describe_each_image(tdm):
    W = tdm.W
    cid = {c: i for i, c in enumerate(W.WEB_CONCEPTS)}
    images = torch.tensor([cid["red star"], cid["blue star"], cid["dotted texture"]])
    texts = ["red star", "blue circle", "star", "red", "blue", "circle", "dotted texture", "cluttered scene"]
    concept = torch.tensor([cid["red star"], cid["blue circle"], -1, -1, -1, -1, cid["dotted texture"],
                            cid["cluttered scene"]])
    colour = torch.tensor([-1, -1, -1, W.COLOURS.index("red"), W.COLOURS.index("blue"), -1, -1, -1])
    shape = torch.tensor([-1, -1, W.SHAPES.index("star"), -1, -1, W.SHAPES.index("circle"), -1, -1])
    got = tdm.matches(images, concept, colour, shape)
    words = {0: {"red star", "star", "red"}, 1: {"star", "blue"}, 2: {"dotted texture"}}
    for i in range(3):                       # brute force: a text matches if every word it names fits
        assert {t for t, m in zip(texts, got[i].tolist()) if m} == words[i]
    # the extra texts' descriptors agree with their prompts
    rng = __import__("numpy").random.default_rng(0)
    prompts = tdm.concept_prompts(rng) + tdm.attribute_prompts(rng)
    prompts += [tdm.id_prompt(c, tdm.N_CTX) for c in W.WEB_CONCEPTS]     # the context prompts, last
    assert len(prompts) == len(tdm.EXTRA_CONCEPT) == len(tdm.EXTRA_COLOUR) == len(tdm.EXTRA_SHAPE)
    for p, c, col, sh in zip(prompts, tdm.EXTRA_CONCEPT.tolist(), tdm.EXTRA_COLOUR.tolist(), tdm.EXTRA_SHAPE.tolist()):
        if c >= 0:
            assert W.WEB_CONCEPTS[c].split(" ")[0] in p
        else:
            assert (W.COLOURS[col] if col >= 0 else W.SHAPES[sh]) in p and (col < 0) != (sh < 0)


def test_encode_texts_equals_open_clip_encode_text(tdm):
    import open_clip
    from iim.demo import world as W
    model = tdm.build_model(0, "cpu").eval()
    tokens = tdm.Tokens(open_clip.get_tokenizer(tdm.MODEL))
    texts = [W.web_sample(1000, i).caption for i in range(12)]
    texts = texts + texts[:3] + ["a photo of a star."]
    with torch.no_grad():
        got = tdm.encode_texts(model, tokens, texts, "cpu", split=12)
        ref = model.encode_text(tokens(texts))
    assert torch.allclose(got, ref, atol=1e-5)
    assert math.isclose(float((got - ref).abs().max()), 0.0, abs_tol=1e-5)


def test_shape_loss_is_cross_entropy_over_the_images_own_colour(tdm):
    W = tdm.W
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 16, generator=g), torch.randn(len(W.WEB_CONCEPTS), 16, generator=g)
    cid = {c: i for i, c in enumerate(W.WEB_CONCEPTS)}
    concepts = torch.tensor([cid["red star"], cid["dotted texture"], cid["pink heart"], cid["blue circle"],
                             cid["cluttered scene"]])
    scale = torch.tensor(7.0)
    got = tdm.shape_loss(img, txt, concepts, scale)
    terms = []                                # brute force: by name, the 10 "<colour> <shape>" captions
    for i in (0, 2, 3):
        colour, shape = W.WEB_CONCEPTS[concepts[i]].split(" ")
        rows = [cid[f"{colour} {s}"] for s in W.SHAPES]
        cos = torch.stack([torch.cosine_similarity(img[i], txt[r], dim=0) for r in rows])
        terms.append(-torch.log_softmax(scale * cos, 0)[W.SHAPES.index(shape)])
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-5)
    assert tdm.shape_loss(img[[1, 4]], txt, concepts[[1, 4]], scale).item() == 0.0


def test_context_prompts_equal_the_prompt_learners_reference_encoding(tdm):
    from iim.text import encode_prompts_reference
    W = tdm.W
    model = tdm.build_model(0, "cpu").eval()
    import open_clip
    tokens = tdm.Tokens(open_clip.get_tokenizer(tdm.MODEL))
    ctx = torch.randn(tdm.N_CTX, model.token_embedding.weight.shape[1], generator=torch.Generator().manual_seed(3)) * 0.02
    with torch.no_grad():
        got = tdm.context_prompts(model, tokens, ctx, "cpu")
        ref, _ = encode_prompts_reference(model, list(W.WEB_CONCEPTS), ctx)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)


def test_token_dropping_keeps_the_cls_token_and_a_fraction_of_the_patches(tdm):
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 65 * 3, dtype=torch.float32).view(2, 65, 3)
    drop = tdm.KeepTokens(0.25, g).train()
    y = drop(x)
    assert y.shape == (2, 1 + 16, 3)
    for b in range(2):
        assert torch.equal(y[b, 0], x[b, 0])                       # CLS first, always
        rows = {tuple(r) for r in x[b, 1:].tolist()}
        kept = [tuple(r) for r in y[b, 1:].tolist()]
        assert len(set(kept)) == 16 and set(kept) <= rows          # distinct patch tokens of that image
    assert torch.equal(drop.eval()(x), x)                          # no dropping outside training


def test_vision_layers_sets_only_the_image_tower_depth(tdm):
    default, shallow = tdm.build_model(0, "cpu"), tdm.build_model(0, "cpu", 4)
    assert len(default.visual.transformer.resblocks) == 6 and len(shallow.visual.transformer.resblocks) == 4
    assert default.visual.transformer.width == shallow.visual.transformer.width
    a, b = default.state_dict(), shallow.state_dict()
    text = [k for k in a if not k.startswith("visual.")]
    assert text and all(k in b and a[k].shape == b[k].shape for k in text)   # the same text tower
    assert {k for k in a if k.startswith("visual.transformer.resblocks.4")} and \
        not {k for k in b if k.startswith("visual.transformer.resblocks.4")}


def test_the_script_trains_the_tower_iim_runs(tdm, tmp_path, capsys):
    """The script trains iim-demo with the late class token, as iim.models builds it; the recipe records it."""
    from iim.models import LateClassTokenViT, create_model
    assert isinstance(tdm.build_model(0, "cpu").visual, LateClassTokenViT)
    assert not isinstance(tdm.build_model(0, "cpu", late_class_token=False).visual, LateClassTokenViT)
    assert isinstance(create_model("iim-demo", "none")[0].visual, LateClassTokenViT)
    assert tdm.build_model(0, "cpu").visual.class_blocks == create_model("iim-demo", "none")[0].visual.class_blocks
    assert tdm.build_model(0, "cpu", class_blocks=1).visual.class_blocks == 1
    out = tmp_path / "m.safetensors"
    tdm.main(["--steps", "1", "--batch", "4", "--pool", "8", "--workers", "1", "--threads", "1",
              "--eval-per-class", "1", "--no-late-class-token", "--out", str(out)])
    from safetensors import safe_open
    import json
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["iim_demo"])
    assert meta["late_class_token"] is False and "--no-late-class-token" in meta["command"]
    # scripts/demo_clip_evidence.py reads the tower from the metadata and splits the evidence per patch kind
    spec = importlib.util.spec_from_file_location("demo_clip_evidence", SCRIPT.parent / "demo_clip_evidence.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    model, meta = ev.load(str(out))
    assert not isinstance(model.visual, LateClassTokenViT) and meta["steps"] == 1
    ev.evidence(model, per_class=1)
    lines = capsys.readouterr().out.splitlines()[-7:]
    assert [line.split()[0] for line in lines] == ["residual", "value", "local", "class", "local", "dominant",
                                                   "dominant"], lines
    shares = [float(w.rstrip("%")) for w in lines[4].split() if w.endswith("%") and w[0].isdigit()]
    assert len(shares) == 4 and abs(sum(shares) - 100) < 0.5, lines[4]      # object + border + distractor + background
    # a tower with register tokens: recorded, and rebuilt the same by the evidence script and by create_model
    out = tmp_path / "r.safetensors"
    tdm.main(["--steps", "1", "--batch", "4", "--pool", "8", "--workers", "1", "--threads", "1",
              "--eval-per-class", "1", "--class-blocks", "3", "--registers", "2", "--init-logit-scale", "100",
              "--out", str(out)])
    model, meta = ev.load(str(out))
    assert (meta["class_blocks"], meta["registers"], meta["init_logit_scale"]) == (3, 2, 100)
    assert 90 < model.logit_scale.exp().item() < 100.5        # one step from its start, clamped at 100 (stored fp16)
    assert (model.visual.class_blocks, model.visual.registers) == (3, 2)
    again = create_model("iim-demo", str(out))[0]
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(again.encode_image(images), model.encode_image(images))
    with pytest.raises(SystemExit, match="init-logit-scale"):
        tdm.main(["--steps", "1", "--batch", "4", "--pool", "8", "--workers", "1", "--init-logit-scale", "0",
                  "--out", str(tmp_path / "bad.safetensors")])
