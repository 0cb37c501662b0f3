"""The comparison methods' losses (SPEC §8) against brute-force loops written from the peers' descriptions:
explicit loops over images, patches, classes and views, plain exp and sums, float64."""
import math

import pytest
import torch

from iim.errors import IIMError
from iim.train import baselines as bl


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def _data(seed, b=3, hw=12, c=5, n_neg=4, d=6, views=5):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(glob=r(b, d), local=r(b, hw, d), local2=r(b, hw, d), views=r(b, views, d), idp=r(c, d),
                negp=r(n_neg, d), gp=r(c, d), labels=torch.randint(c, (b,), generator=g))


def brute_coop(glob, labels, idp, scale):
    total = 0.0
    for i in range(len(glob)):
        logits = [scale * _cos(glob[i], t) for t in idp]
        total += -math.log(_softmax(logits)[int(labels[i])])
    return total / len(glob)


def brute_locoop_entropy(local, labels, idp, scale, top_k):
    k = min(top_k, len(idp))
    ents = []
    for i in range(local.shape[0]):
        for h in range(local.shape[1]):
            logits = [scale * _cos(local[i, h], t) for t in idp]
            ranked = sorted(range(len(idp)), key=lambda c: -logits[c])[:k]
            if int(labels[i]) not in ranked:
                p = _softmax(logits)
                ents.append(-sum(q * math.log(q + 1e-5) for q in p))
    return -sum(ents) / len(ents) if ents else 0.0


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_coop_loss_matches_brute_force(scale):
    x = _data(0)
    got = bl.coop_loss(x["glob"], x["labels"], x["idp"], logit_scale=scale)
    assert float(got) == pytest.approx(brute_coop(x["glob"], x["labels"], x["idp"], scale), rel=1e-9)


@pytest.mark.parametrize("top_k", [1, 2, 3, 200])     # 200 > C = 5: K = C, no patch is OOD
def test_locoop_entropy_matches_brute_force_including_small_c(top_k):
    x = _data(1, hw=20)
    got = bl.locoop_entropy(x["local"], x["labels"], x["idp"], logit_scale=5.0, top_k=top_k)
    want = brute_locoop_entropy(x["local"], x["labels"], x["idp"], 5.0, top_k)
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)
    if top_k >= 5:
        assert float(got) == 0.0 and bl.locoop_top_k(5, top_k) == 5
    else:
        assert want != 0.0                             # the test exercises the selected patches


def test_locoop_entropy_gradient_and_mask():
    x = _data(2, hw=30)
    idp = x["idp"].clone().requires_grad_()
    bl.locoop_entropy(x["local"], x["labels"], idp, logit_scale=5.0, top_k=2).backward()
    assert idp.grad.abs().sum() > 0
    logits = 5.0 * torch.nn.functional.normalize(x["local"], dim=-1) @ torch.nn.functional.normalize(
        x["idp"], dim=-1).T
    mask = bl.locoop_ood_patches(logits, x["labels"], 2)
    for i in range(mask.shape[0]):
        for h in range(mask.shape[1]):
            top2 = sorted(range(5), key=lambda c: -float(logits[i, h, c]))[:2]
            assert bool(mask[i, h]) == (int(x["labels"][i]) not in top2)


def brute_select(views, labels, gp, n_pos):
    pos, neg = [], []
    for i in range(views.shape[0]):
        sims = [_cos(views[i, v], gp[int(labels[i])]) for v in range(views.shape[1])]
        order = sorted(range(len(sims)), key=lambda v: -sims[v])
        pos.append(order[:n_pos])
        neg.append(order[-1])
    return pos, neg


@pytest.mark.parametrize("n_pos", [1, 2, 4])
def test_select_views_matches_brute_force(n_pos):
    x = _data(3, b=6, views=5)
    pos, neg = bl.select_views(x["views"], x["labels"], x["gp"], n_pos)
    want_pos, want_neg = brute_select(x["views"], x["labels"], x["gp"], n_pos)
    assert pos.tolist() == want_pos and neg.tolist() == want_neg


def test_select_views_refuses_too_few_views():
    x = _data(3, views=2)
    with pytest.raises(IIMError, match="positive views"):
        bl.select_views(x["views"], x["labels"], x["gp"], 2)


def brute_localprompt(pos, neg_view, labels, idp, negp, k, scale):
    C, Cn, HW = len(idp), len(negp), pos.shape[1]
    prompts = list(idp) + list(negp)

    def own_topk_sum(s, j):                     # sum over column j's own top-k patches of exp(logit)
        return sum(sorted((s[h][j] for h in range(HW)), reverse=True)[:k])

    l_local = l_neg = 0.0
    for i in range(pos.shape[0]):
        y = int(labels[i])
        s = [[math.exp(scale * _cos(pos[i, h], t)) for t in prompts] for h in range(HW)]
        den = sum(own_topk_sum(s, j) for j in range(C + Cn))
        l_local += -math.log(own_topk_sum(s, y) / den)
        s = [[math.exp(scale * _cos(neg_view[i, h], t)) for t in prompts] for h in range(HW)]
        top = sorted(range(HW), key=lambda h: -s[h][y])[:k]
        num = sum(s[h][C + j] for h in top for j in range(Cn))
        l_neg += -math.log(num / (num + sum(own_topk_sum(s, c) for c in range(C))))
    div = sum(_cos(a, b) for a in negp for b in negp) / (Cn * (Cn - 1))
    b = pos.shape[0]
    return l_local / b, l_neg / b, div


@pytest.mark.parametrize("k", [1, 4, 12])
def test_localprompt_losses_match_brute_force(k):
    x = _data(4)
    got = bl.localprompt_losses(x["local"], x["local2"], x["labels"], x["idp"], x["negp"], k=k, logit_scale=10.0)
    want = brute_localprompt(x["local"], x["local2"], x["labels"], x["idp"], x["negp"], k, 10.0)
    for key, w in zip(("local", "neg", "div"), want):
        assert float(got[key]) == pytest.approx(w, rel=1e-9), key


def test_localprompt_losses_stable_at_clip_scale_and_refuse_large_k():
    x = _data(5)
    got = bl.localprompt_losses(x["local"].float(), x["local2"].float(), x["labels"], x["idp"].float(),
                                x["negp"].float(), k=4, logit_scale=100.0)
    assert all(torch.isfinite(v) for v in got.values())
    with pytest.raises(IIMError, match="top-k"):
        bl.localprompt_losses(x["local"], x["local2"], x["labels"], x["idp"], x["negp"], k=13)
