"""`iim score --negatives NEG`: NegLabel / CSP / AdaNeg wiring and R-MCM / S-MCM with every source of ID
and OOD prototypes, against straightforward per-image implementations written here."""
import json

import numpy as np
import pytest
import torch

from helpers import make_fake_run, make_random_cache, random_manifest
from test_negatives import write_vocab
from test_score_cli import run_cli

K, ALPHA = 10, 0.5
WORDS = {"noun.x.txt": ["dog", "tree", "car", "house", "cup", "sun", "hill", "road", "lamp", "rope"],
         "adj.y.txt": ["red", "big", "soft", "old", "wet", "cold"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("negscore")
    cache = make_random_cache(root / "cache")
    run = make_fake_run(root / "run", cache)
    vocab = write_vocab(root / "vocab", WORDS)
    return root, cache, run, vocab


@pytest.fixture(scope="module")
def neg(world):
    root, cache, _, vocab = world
    from iim.negatives import mine_negatives
    mine_negatives(cache.root, vocab, root / "NEG", keep=0.5)     # 5 nouns + 3 adjectives
    return root / "NEG"


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def topk_mean(x, k):
    return np.sort(x.ravel())[::-1][:k].mean()


def reference_smcm(g, loc, glob, id_proto, neg_proto, k, alpha):
    """Per image, SPEC §4 by hand: (R-MCM, S-MCM); neg_proto None = the starred scores."""
    r, s = [], []
    for vg, vl in zip(unit(g), unit(loc)):
        e_g = np.exp(unit(glob) @ vg)
        mcm = e_g.max() / e_g.sum()
        e_id = np.exp(vl @ unit(id_proto).T)                               # [HW, C]
        z_neg = 0 if neg_proto is None else np.exp(vl @ unit(neg_proto).T).sum(1, keepdims=True)
        p = e_id / (e_id.sum(1, keepdims=True) + z_neg)
        q = e_id / e_id.sum(0, keepdims=True)
        i2t, t2i = topk_mean(p, k), vl.shape[0] / e_id.shape[1] * topk_mean(q, k)
        r.append(mcm + i2t)
        s.append(mcm + i2t + alpha * t2i)
    return np.array(r), np.array(s)


def reference_neglabel(g, glob, neg, tau, perm, groups):
    """NegLabel (SPEC §10) by hand, given the recorded permutation."""
    size = len(neg) // groups
    out = []
    for v in unit(g):
        vals = []
        for j in range(groups):
            cols = np.concatenate([unit(glob), unit(neg)[perm[j * size:(j + 1) * size]]])
            e = np.exp(tau * (cols @ v))
            vals.append(e[:len(glob)].sum() / e.sum())
        out.append(np.mean(vals))
    return np.array(out)


def read_split(cache, name):
    g, loc = cache.split(name).read(view=0)
    return g.astype(np.float32), loc.astype(np.float32)


def test_run_scored_with_every_source_of_prototypes(world, neg, capsys, tmp_path):
    root, cache, run, _ = world
    out = tmp_path / "scored"
    code, stdout, err = run_cli(capsys, "score", "--run", run, "--negatives", neg, "--groups", 2, "--k", K,
                                "--alpha", ALPHA, "--no-plots", "--no-knn", "--out", out)
    assert code == 0, err
    assert "S-MCM [learned / learned+mined]" in stdout and "NegLabel" in stdout
    ck = torch.load(run / "checkpoint.pt", weights_only=False)["prototypes"]
    glob, learned, learned_neg = (ck[n].numpy() for n in ("global", "local", "neg"))
    mined = np.load(neg / "embeddings.npz")["neglabel"]
    sources_id = {"hand": glob, "learned": learned}
    sources_ood = {"none": None, "learned": learned_neg, "mined": mined,
                   "learned_mined": np.concatenate([learned_neg, mined])}
    order = np.load(out / "negatives_order.npz")
    perm = order["neglabel_permutation"]
    assert sorted(perm.tolist()) == list(range(len(mined)))
    results = json.loads((out / "results.json").read_text())
    tau = results["negatives"]["logit_scale"]
    assert results["settings"]["groups"] == 2 and results["settings"]["neg_seed"] == 0
    assert results["negatives"]["vocab_sha256"] == json.loads((neg / "manifest.json").read_text())["vocab"]["sha256"]
    for split in ("test", "ood_far"):
        g, loc = read_split(cache, split)
        got = np.load(out / f"scores_{split}.npz")
        for i, ip in sources_id.items():
            for o, op in sources_ood.items():
                r, s = reference_smcm(g, loc, glob, ip, op, K, ALPHA)
                np.testing.assert_allclose(got[f"r_mcm_{i}_{o}"], r, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(got[f"s_mcm_{i}_{o}"], s, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["s_mcm_learned_learned"], got["s_mcm"], rtol=1e-6)   # the same score
        np.testing.assert_allclose(got["neglabel"], reference_neglabel(g, glob, mined, tau, perm, 2),
                                   rtol=1e-4, atol=1e-6)
        csp = np.load(neg / "embeddings.npz")["csp"]            # CSP: NegLabel's score on its own mined set
        np.testing.assert_allclose(got["csp"], reference_neglabel(g, glob, csp, tau, order["csp_permutation"], 2),
                                   rtol=1e-4, atol=1e-6)
    rows = (out / "results.csv").read_text()
    assert "s_mcm_learned_learned_mined,average,fpr95" in rows and "adaneg,average,auroc" in rows


def test_zero_shot_adaneg_order_and_report(world, neg, capsys, tmp_path):
    root, cache, _, _ = world
    outs = []
    for seed in (0, 0, 1):
        out = tmp_path / f"zs{len(outs)}"
        code, _, err = run_cli(capsys, "score", "--zero-shot", "--cache", cache.root, "--negatives", neg,
                               "--groups", 1, "--neg-seed", seed, "--k", K, "--no-plots", "--no-knn", "--out", out)
        assert code == 0, err
        outs.append(out)
    z = np.load(outs[0] / "scores_test.npz")
    assert "s_mcm_hand_mined" in z.files and not any(f.startswith("s_mcm_learned") for f in z.files)
    np.testing.assert_allclose(z["s_mcm_hand_none"], z["s_mcm_star"], rtol=1e-6)
    o = [np.load(p / "negatives_order.npz") for p in outs]
    np.testing.assert_array_equal(o[0]["adaneg_order"], o[1]["adaneg_order"])      # seeded
    assert not np.array_equal(o[0]["adaneg_order"], o[2]["adaneg_order"])
    np.testing.assert_array_equal(o[0]["neglabel_permutation"], np.arange(8))      # ungrouped
    # AdaNeg is fed every scored image (test, then the OOD sets) in the recorded order
    from iim.negatives.scores import ADANEG
    from iim.score.adaneg import adaneg_scores
    names = ["test", "ood_far", "ood_near"]
    feats = torch.from_numpy(np.concatenate([read_split(cache, n)[0] for n in names]))
    sizes = [cache.split(n).n for n in names]
    order = torch.from_numpy(o[0]["adaneg_order"])
    assert sorted(order.tolist()) == list(range(sum(sizes)))
    split_of = np.repeat(names, sizes)[order.numpy()]
    np.testing.assert_array_equal(o[0]["adaneg_order_split"], split_of)
    tau = json.loads((outs[0] / "results.json").read_text())["negatives"]["logit_scale"]
    want = adaneg_scores(feats, cache.global_prototypes(), torch.from_numpy(np.load(neg / "embeddings.npz")["neglabel"]),
                         logit_scale=tau, order=order, seed=0, **ADANEG).numpy()
    got = np.concatenate([np.load(outs[0] / f"scores_{n}.npz")["adaneg"] for n in names])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # iim report: the 0-shot group shows the peers and S-MCM with mined negatives
    code, stdout, err = run_cli(capsys, "report", outs[0])
    assert code == 0, err
    assert "NegLabel" in stdout and "AdaNeg" in stdout and "S-MCM [hand / mined]" in stdout


def test_bad_negatives_input_one_line_nothing_written(world, neg, capsys, tmp_path):
    root, cache, run, vocab = world
    other = make_random_cache(tmp_path / "other", classes=3, manifest=random_manifest(3))
    other_model = make_random_cache(tmp_path / "other_model", manifest=random_manifest(4, weights="sha256:" + "0" * 64))
    base = ["--no-plots", "--no-knn", "--k", K]
    cases = [
        (["--zero-shot", "--cache", other.root, "--negatives", neg], "mined for another cache"),
        (["--zero-shot", "--cache", other_model.root, "--negatives", neg], "mined for another cache"),
        (["--zero-shot", "--cache", cache.root, "--negatives", neg, "--groups", 9], "1 <= G <= 8"),
        (["--zero-shot", "--cache", cache.root, "--groups", 2], "needs --negatives"),
        (["--zero-shot", "--cache", cache.root, "--negatives", tmp_path / "nope"], "not a negatives folder"),
        (["--zero-shot", "--cache", cache.root, "--negatives", neg, "--k", "5,10"], "not in a sweep"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        code, _, err = run_cli(capsys, "score", *base, *args, "--out", out)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
        assert not out.exists(), args


def test_report_puts_the_papers_reported_numbers_apart(tmp_path, capsys):
    from iim.negatives import mine_negatives
    vocab = write_vocab(tmp_path / "vocab", WORDS)
    for bench in ("imagenet", "random"):
        cache = make_random_cache(tmp_path / bench, manifest=random_manifest(4, benchmark=bench))
        mine_negatives(cache.root, vocab, tmp_path / f"neg-{bench}", keep=0.5)
        out = tmp_path / f"zs-{bench}"
        code, _, err = run_cli(capsys, "score", "--zero-shot", "--cache", cache.root, "--negatives",
                               tmp_path / f"neg-{bench}", "--groups", 2, "--k", K, "--no-plots", "--no-knn", "--out", out)
        assert code == 0, err
        code, stdout, err = run_cli(capsys, "report", out, "--out", out)
        assert code == 0, err
        md = (out / "summary.md").read_text()
        if bench == "imagenet":
            assert "reported: NegLabel (ICLR 2024) 25.40 / 94.21" in stdout
            assert "| reported: NegLabel (ICLR 2024) | – | – | 25.40 / 94.21 |" in md
            assert "reported: AdaNeg (NeurIPS 2024) 18.92 / –" in stdout
        else:
            assert "reported" not in stdout and "reported" not in md
