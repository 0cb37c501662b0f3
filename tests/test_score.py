"""ood_scores and the sweep against straightforward float64 implementations of SPEC §4."""
import numpy as np
import pytest
import torch

from iim.errors import IIMError
from iim.score import evaluate, id_predictions, ood_scores, similarities, sweep_scores


def brute_scores(g, l, gp, tp, neg, k, alpha, T, double_exp=False):
    """SPEC §4 literally, image by image, in float64 numpy with e(v, t) = exp(cos / T); ``double_exp``:
    SPEC §9's official p[h, c] with e'(v, t) = exp(exp(cos / T) / T)."""
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    g, l, gp, tp = (unit(np.asarray(x, np.float64)) for x in (g, l, gp, tp))
    neg = None if neg is None else unit(np.asarray(neg, np.float64))
    hw, c = l.shape[1], tp.shape[0]
    topmean = lambda x: np.sort(x.ravel())[::-1][:k].mean()  # noqa: E731
    out = {key: [] for key in ("mcm", "gl_mcm", "r_mcm", "r_mcm_star", "s_mcm", "s_mcm_star",
                               "i2t", "i2t_star", "t2i", "pred")}
    for n in range(len(g)):
        e_g = np.exp(gp @ g[n] / T)
        mcm = np.max(e_g / e_g.sum())
        e = np.exp(l[n] @ tp.T / T)                          # [HW, C]
        p_star = e / e.sum(1, keepdims=True)
        q = e / e.sum(0, keepdims=True)
        i2t_star, t2i = topmean(p_star), hw / c * topmean(q)
        out["mcm"].append(mcm)
        out["gl_mcm"].append(mcm + p_star.max())
        out["i2t_star"].append(i2t_star)
        out["t2i"].append(t2i)
        out["r_mcm_star"].append(mcm + i2t_star)
        out["s_mcm_star"].append(mcm + i2t_star + alpha * t2i)
        if neg is not None:
            e_neg = np.exp(l[n] @ neg.T / T)
            if double_exp:
                e2, e2_neg = np.exp(e / T), np.exp(e_neg / T)
                p = e2 / (e2.sum(1, keepdims=True) + e2_neg.sum(1, keepdims=True))
            else:
                p = e / (e.sum(1, keepdims=True) + e_neg.sum(1, keepdims=True))
            out["i2t"].append(topmean(p))
            out["r_mcm"].append(mcm + topmean(p))
            out["s_mcm"].append(mcm + topmean(p) + alpha * t2i)
        kh = min(k, hw)
        cls = e_g / e_g.sum() + np.sort(p_star, axis=0)[::-1][:kh].mean(0)
        out["pred"].append(np.argmax(cls))
    return {key: np.array(v) for key, v in out.items() if v}


def random_inputs(n=6, hw=12, d=8, c=5, cn=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen) * 3  # noqa: E731   (not normalised)
    return r(n, d), r(n, hw, d), r(c, d), r(c, d), (r(cn, d) if cn else None)


@pytest.mark.parametrize("k,alpha,T,cn", [(5, 1.0, 1.0, 3), (1, 0.5, 0.1, 4), (60, 2.0, 1.0, 0),
                                          (20, 0.0, 0.05, 7), (12, 1.5, 2.0, 2)])
def test_ood_scores_match_brute_force(k, alpha, T, cn):
    g, l, gp, tp, neg = random_inputs(cn=cn, seed=k)
    got = ood_scores(g, l, gp, tp, neg, k=k, alpha=alpha, T=T)
    want = brute_scores(g, l, gp, tp, neg, k, alpha, T)
    assert set(got) == set(want) - {"pred"}
    for key in got:
        assert got[key].shape == (len(g),)
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=2e-5, atol=1e-7, err_msg=key)
    sims = similarities(g, l, gp, tp, neg, T=T)
    scores, p_star = evaluate(sims, k=k, alpha=alpha)
    assert torch.equal(id_predictions(sims, p_star, k), torch.from_numpy(want["pred"]))


@pytest.mark.parametrize("k,T,cn", [(5, 1.0, 3), (20, 0.5, 4), (7, 1.0, 0)])
def test_official_double_exponential_matches_brute_force(k, T, cn):
    g, l, gp, tp, neg = random_inputs(cn=cn, seed=k)
    got = ood_scores(g, l, gp, tp, neg, k=k, T=T, double_exp=True)
    want = brute_scores(g, l, gp, tp, neg, k, 1.0, T, double_exp=True)
    paper = ood_scores(g, l, gp, tp, neg, k=k, T=T)
    for key in got:
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=2e-5, atol=1e-7, err_msg=key)
        changed = not torch.allclose(got[key], paper[key])
        assert changed == (key in ("i2t", "r_mcm", "s_mcm")), key     # only p[h, c] differs
    sweep = sweep_scores(similarities(g, l, gp, tp, neg, T=T, double_exp=True), [k], [1.0])
    torch.testing.assert_close(sweep["s_mcm_star"][:, 0, 0], got["s_mcm_star"])
    if cn:
        torch.testing.assert_close(sweep["s_mcm"][:, 0, 0], got["s_mcm"])


def test_negatives_change_only_their_scores_and_empty_negatives_mean_none():
    g, l, gp, tp, neg = random_inputs()
    with_neg = ood_scores(g, l, gp, tp, neg)
    without = ood_scores(g, l, gp, tp, None)
    assert set(with_neg) - set(without) == {"r_mcm", "s_mcm", "i2t"}
    for key in without:
        assert torch.equal(with_neg[key], without[key])
    assert (with_neg["i2t"] < with_neg["i2t_star"]).all()        # negatives only enlarge denominators
    assert set(ood_scores(g, l, gp, tp, neg[:0])) == set(without)


def test_float16_inputs_and_scale_invariance():
    g, l, gp, tp, neg = random_inputs()
    a = ood_scores(g, l, gp, tp, neg)
    b = ood_scores(g.half() * 0.1, l.half() * 0.1, gp, tp * 7, neg)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=5e-3, atol=1e-4)


def test_float64_features_against_float32_prototypes():
    g, l, gp, tp, neg = random_inputs()
    want = brute_scores(g, l, gp, tp, neg, 50, 1.0, 1.0)
    got = ood_scores(g.double(), l.double(), gp, tp, neg)          # prototypes stay float32
    for key in got:
        assert got[key].dtype == torch.float64, key
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-6, err_msg=key)


def test_sweep_equals_point_by_point():
    g, l, gp, tp, neg = random_inputs(n=5, hw=16, c=6, cn=4, seed=3)
    ks, alphas = [1, 3, 10, 50, 96], [0.0, 0.25, 1.0, 1.75]
    grid = sweep_scores(similarities(g, l, gp, tp, neg, T=0.5), ks, alphas)
    for j, k in enumerate(ks):
        for a, alpha in enumerate(alphas):
            point = ood_scores(g, l, gp, tp, neg, k=k, alpha=alpha, T=0.5)
            for key, val in point.items():
                cell = grid[key] if grid[key].dim() == 1 else grid[key][:, j] if grid[key].dim() == 2 \
                    else grid[key][:, j, a]
                torch.testing.assert_close(cell, val, rtol=1e-5, atol=1e-7, msg=f"{key} k={k} alpha={alpha}")


def test_k_bounds_and_shape_errors():
    g, l, gp, tp, neg = random_inputs(hw=4, c=3)
    ood_scores(g, l, gp, tp, neg, k=12)                           # k = HW x C is the largest allowed
    with pytest.raises(IIMError, match=r"HW x C = 4 x 3 = 12"):
        ood_scores(g, l, gp, tp, neg, k=13)
    with pytest.raises(IIMError, match="1 <= k"):
        ood_scores(g, l, gp, tp, neg, k=0)
    with pytest.raises(IIMError, match="width D"):
        ood_scores(g, l, gp[:, :4], tp, neg)
    with pytest.raises(IIMError, match="local ID prototypes"):
        ood_scores(g, l, gp, tp[:2], neg)
