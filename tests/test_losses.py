"""IIM losses (Eq. 5-11) against a brute-force loop implementation written straight from SPEC §3."""
import itertools
import math

import pytest
import torch

from iim.errors import IIMError
from iim.train import diversity_loss, iim_losses
from iim.train.losses import total_loss


# ---------------------------------------------------------------------------------------------------
# Brute force: explicit loops over images, patches and prompts; exp and plain sums (no logsumexp),
# float64 scalar torch ops so that autograd also gives reference gradients.
def _cos(a, b):
    dot = sum(a[i] * b[i] for i in range(len(a)))
    na = torch.sqrt(sum(a[i] * a[i] for i in range(len(a))))
    nb = torch.sqrt(sum(b[i] * b[i] for i in range(len(b))))
    return dot / (na * nb)


def brute_losses(local, labels, idp, negp, *, k, scale, hnm=True, ood="next-k", official=False):
    B, HW, _ = local.shape
    C, Cn = idp.shape[0], negp.shape[0]
    prompts = [idp[c] for c in range(C)] + [negp[j] for j in range(Cn)]
    pos_total, neg_total = 0.0, 0.0
    for b in range(B):
        y = int(labels[b])
        cos = [[_cos(local[b, h], t) for t in prompts] for h in range(HW)]
        s = [[torch.exp(scale * cos[h][j]) for j in range(C + Cn)] for h in range(HW)]
        order = sorted(range(HW), key=lambda h: -cos[h][y].item())
        P = order[:k]
        N = order[k:2 * k] if ood == "next-k" else order[k:]
        S_k = []
        for c in range(C):
            if hnm or c == y:
                own = sorted(range(HW), key=lambda h: -s[h][c].item())[:k]
                S_k.append(sum(s[h][c] for h in own))
            else:
                S_k.append(sum(s[h][c] for h in P))
        S_t = [sum(s[p][j] for p in N) for j in range(C + Cn)]
        neg_sum = sum(S_t[C:]) if Cn else 0.0
        pos_den_neg, neg_den_id = neg_sum, sum(S_t[:C])
        if official:    # SPEC §9: negatives over their own top-k, ID classes over their own ranks k+1..2k
            def own(j, lo, hi):
                ranked = sorted(range(HW), key=lambda h: -cos[h][j].item())
                return sum(s[h][j] for h in ranked[lo:hi])
            pos_den_neg = sum(own(C + j, 0, k) for j in range(Cn)) if Cn else 0.0
            neg_den_id = sum(own(c, k, 2 * k if ood == "next-k" else HW) for c in range(C))
        pos_total = pos_total - torch.log(S_k[y] / (sum(S_k) + pos_den_neg))
        if Cn:
            neg_total = neg_total - torch.log(neg_sum / (neg_den_id + neg_sum))
    return pos_total / B, neg_total / B


def brute_diversity(idp, negp, diagonal=False):
    def term(t):
        n = t.shape[0]
        if n < 2:
            return 0.0
        if diagonal:    # SPEC §9: the whole matrix / (n (n - 1))
            return sum(_cos(t[i], t[j]) for i in range(n) for j in range(n)) / (n * (n - 1))
        pairs = [_cos(t[i], t[j]) for i in range(n) for j in range(i + 1, n)]
        return sum(pairs) / (n * (n - 1) / 2)
    return term(negp) + term(idp)


def random_inputs(B=3, HW=8, D=5, C=4, Cn=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    local = torch.randn(B, HW, D, generator=g, dtype=dtype) * 3.0
    idp = torch.randn(C, D, generator=g, dtype=dtype)
    negp = torch.randn(Cn, D, generator=g, dtype=dtype)
    labels = torch.randint(C, (B,), generator=g)
    return local, labels, idp, negp


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,hnm,ood,Cn,scale,official", [(*c, False) for c in [
    (2, True, "next-k", 3, 5.0),
    (2, False, "next-k", 3, 5.0),
    (2, True, "all-rest", 3, 5.0),
    (2, False, "all-rest", 3, 5.0),
    (1, True, "next-k", 3, 5.0),        # k at its lower bound
    (4, True, "next-k", 3, 5.0),        # 2k = HW
    (4, False, "all-rest", 3, 5.0),
    (3, True, "next-k", 0, 5.0),        # no negative prompts
    (2, True, "next-k", 3, 100.0),      # the real logit scale: float64 exp(100) is still exact enough
    (2, False, "all-rest", 2, 100.0),
]] + [(2, True, "next-k", 3, 5.0, True), (3, False, "next-k", 4, 15.0, True), (2, True, "all-rest", 3, 5.0, True),
      (4, True, "next-k", 3, 5.0, True), (2, True, "next-k", 0, 5.0, True), (2, True, "next-k", 3, 100.0, True)])
def test_losses_and_gradients_match_brute_force(k, hnm, ood, Cn, scale, official):
    local, labels, idp, negp = random_inputs(Cn=Cn, seed=k + 7 * Cn + int(scale))
    params = [x.clone().requires_grad_(True) for x in (local, idp, negp)]
    out = iim_losses(params[0], labels, params[1], params[2], k=k, logit_scale=scale,
                     hard_negative_mining=hnm, ood_patches=ood, denominators="official" if official else "paper")
    grads = torch.autograd.grad(out["pos"] + 3 * out["neg"], params)

    ref_params = [x.clone().requires_grad_(True) for x in (local, idp, negp)]
    pos, neg = brute_losses(ref_params[0], labels, ref_params[1], ref_params[2], k=k, scale=scale,
                            hnm=hnm, ood=ood, official=official)
    ref_total = pos + 3 * neg
    ref_grads = torch.autograd.grad(ref_total, ref_params, allow_unused=True)

    torch.testing.assert_close(out["pos"], pos.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["neg"], torch.as_tensor(neg, dtype=torch.float64).detach(),
                               rtol=1e-9, atol=1e-9)
    for g, rg in zip(grads, ref_grads):
        rg = torch.zeros_like(g) if rg is None else rg
        torch.testing.assert_close(g, rg, rtol=1e-7, atol=1e-9)
    if Cn == 0:
        assert out["neg"] == 0


def test_float32_at_logit_scale_100_matches_float64():
    local, labels, idp, negp = random_inputs(B=4, HW=16, D=8, C=5, Cn=4, seed=3)
    ref = iim_losses(local, labels, idp, negp, k=4)                   # float64 path, brute-checked above
    pos, neg = brute_losses(local, labels, idp, negp, k=4, scale=100.0)
    torch.testing.assert_close(ref["pos"], pos, rtol=1e-9, atol=1e-9)
    out = iim_losses(local.half(), labels, idp.float(), negp.float(), k=4)   # cache dtype in, float32
    assert out["pos"].dtype == torch.float32
    for key in ("pos", "neg"):
        assert torch.isfinite(out[key])
        assert abs(out[key].item() - ref[key].item()) < 5e-2 * max(1.0, abs(ref[key].item()))


def test_autocast_does_not_lower_the_loss_precision():
    local, labels, idp, negp = random_inputs(B=2, HW=16, D=8, C=5, Cn=4, seed=5, dtype=torch.float32)
    plain = iim_losses(local, labels, idp, negp, k=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = iim_losses(local, labels, idp, negp, k=4)
    for key in plain:
        assert auto[key].dtype == torch.float32
        torch.testing.assert_close(auto[key], plain[key])


def test_inputs_need_not_be_normalised():
    local, labels, idp, negp = random_inputs(seed=11)
    a = iim_losses(local, labels, idp, negp, k=2, logit_scale=10.0)
    b = iim_losses(local * 7.5, labels, idp * 0.01, negp * 40.0, k=2, logit_scale=10.0)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("k", [1, 4])
def test_finite_for_degenerate_inputs(k):
    """Identical prototypes, features equal to them (cos = 1: exp(100) everywhere), zero features."""
    D = 6
    t = torch.randn(D)
    idp = t.repeat(4, 1).requires_grad_(True)
    negp = t.repeat(3, 1).requires_grad_(True)
    for local in (t.repeat(2, 8, 1), torch.zeros(2, 8, D), -t.repeat(2, 8, 1)):
        labels = torch.tensor([0, 3])
        for hnm, ood in itertools.product((True, False), ("next-k", "all-rest")):
            out = iim_losses(local, labels, idp, negp, k=k, hard_negative_mining=hnm, ood_patches=ood)
            div = diversity_loss(idp, negp)
            loss = total_loss(out["pos"], out["neg"], div)
            g = torch.autograd.grad(loss, [idp, negp])
            assert torch.isfinite(loss) and all(torch.isfinite(x).all() for x in g)
            # every similarity alike: S_k[c] = k e^x, S~[j] = |N| e^x, so L_pos = log(C + Cn |N| / k)
            n_ood = k if ood == "next-k" else 8 - k
            assert out["pos"].item() == pytest.approx(math.log(4 + 3 * n_ood / k), rel=1e-5)
            assert out["neg"].item() == pytest.approx(math.log(7 / 3), rel=1e-5)


@pytest.mark.parametrize("HW,k", [(7, 4), (8, 5), (8, 0)])
def test_too_few_patches_for_k_is_a_clear_error(HW, k):
    local, labels, idp, negp = random_inputs(HW=HW)
    with pytest.raises(IIMError, match="2k"):
        iim_losses(local, labels, idp, negp, k=k)


def test_bad_labels_and_option_are_refused():
    local, labels, idp, negp = random_inputs()
    with pytest.raises(IIMError, match="labels"):
        iim_losses(local, torch.tensor([0, 1, 4]), idp, negp, k=2)
    with pytest.raises(IIMError, match="ood_patches"):
        iim_losses(local, labels, idp, negp, k=2, ood_patches="everything")


@pytest.mark.parametrize("C,Cn", [(5, 4), (1, 3), (4, 1), (0, 0), (2, 2)])
def test_diversity_matches_brute_force(C, Cn):
    g = torch.Generator().manual_seed(C * 10 + Cn)
    idp = torch.randn(C, 5, generator=g, dtype=torch.float64) * 2
    negp = torch.randn(Cn, 5, generator=g, dtype=torch.float64) + 1
    for diagonal in (False, True):
        ref = brute_diversity(idp, negp, diagonal=diagonal)
        torch.testing.assert_close(diversity_loss(idp, negp, diagonal=diagonal),
                                   torch.as_tensor(ref, dtype=torch.float64))


def test_full_matrix_diversity_has_the_same_gradient():
    g = torch.Generator().manual_seed(1)
    idp, negp = (torch.randn(n, 5, generator=g, dtype=torch.float64).requires_grad_(True) for n in (4, 6))
    a = torch.autograd.grad(diversity_loss(idp, negp), (idp, negp))
    b = torch.autograd.grad(diversity_loss(idp, negp, diagonal=True), (idp, negp))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_total_loss_is_eq_11():
    assert total_loss(1.0, 2.0, 3.0) == 1.0 + 5 * 2.0 + 0.5 * 3.0
    assert total_loss(1.0, 2.0, 3.0, lambda_neg=0, lambda_div=0) == 1.0
