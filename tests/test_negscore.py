"""NegLabel, CSP and AdaNeg scores (iim.score.neglabel / csp / adaneg) against straightforward loop
implementations written here, independently of the library code."""
import math
import random

import pytest
import torch

from iim.errors import IIMError
from iim.score.adaneg import adaneg_scores
from iim.score.csp import POOL_PROMPT, SUPERCLASSES, csp_candidates, csp_phrases
from iim.score.neglabel import NegativesError, neglabel_score


# ----------------------------------------------------------------------------- straightforward references

def unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def ref_perm(m, groups, seed):
    return list(range(m)) if groups == 1 else \
        torch.randperm(m, generator=torch.Generator().manual_seed(seed)).tolist()


def ref_grouped(id_logits, neg_logits, perm, groups):
    """Mean over groups of the softmax mass on the ID columns, written out with math.exp."""
    size = len(perm) // groups
    total = 0.0
    for g in range(groups):
        cols = [neg_logits[j] for j in perm[g * size:(g + 1) * size]]
        top = max(id_logits + cols)
        e_id = sum(math.exp(z - top) for z in id_logits)
        e_all = e_id + sum(math.exp(z - top) for z in cols)
        total += e_id / e_all
    return total / groups


def ref_neglabel(image, id_text, neg_text, scale, groups, seed):
    perm = ref_perm(len(neg_text), groups, seed)
    ids = [unit(t) for t in id_text.tolist()]
    negs = [unit(t) for t in neg_text.tolist()]
    out = []
    for x in image.tolist():
        x = unit(x)
        z_id, z_neg = [scale * dot(x, t) for t in ids], [scale * dot(x, t) for t in negs]
        out.append(ref_grouped(z_id, z_neg, perm, groups))
    return out


def entropy_of(logits):
    top = max(logits)
    e = [math.exp(z - top) for z in logits]
    s = sum(e)
    return -sum(v / s * math.log(v / s) for v in e)


def ref_adaneg(image, id_text, neg_text, *, scale, order, groups, seed, memory, threshold, gap, weight,
               beta, sample_adaptive, batch_size, stats):
    c = len(id_text)
    perm = ref_perm(len(neg_text), groups, seed)
    protos = [unit(t) for t in id_text.tolist()] + [unit(t) for t in neg_text.tolist()]
    mem = [[] for _ in protos]              # per slot: list of [feature, entropy]
    xs = [unit(x) for x in image.tolist()]
    out = [None] * len(xs)
    order = list(order)
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        vanilla = {}
        for r in rows:
            z = [scale * dot(xs[r], p) for p in protos]
            vanilla[r] = ref_grouped(z[:c], z[c:], perm, groups)
        for r in rows:
            z = [scale * dot(xs[r], p) for p in protos]
            if vanilla[r] > threshold + gap * (1 - threshold):
                part = list(range(c))
            elif vanilla[r] < threshold - gap * threshold:
                part = list(range(c, len(protos)))
            else:
                continue
            best = max(part, key=lambda j: z[j])
            h = entropy_of([z[j] for j in part])
            if len(mem[best]) < memory:
                mem[best].append([xs[r], h])
                stats["stored"] += 1
            else:
                worst = max(range(memory), key=lambda i: (mem[best][i][1], -i))
                if h < mem[best][worst][1]:
                    mem[best][worst] = [xs[r], h]
                    stats["replaced"] += 1
        for r in rows:
            z = []
            for j, p in enumerate(protos):
                feats = [p] + [f for f, _ in mem[j]]
                w = [math.exp(-beta * (1 - dot(xs[r], f))) if sample_adaptive else 1.0 for f in feats]
                proxy = unit([sum(wi * f[d] for wi, f in zip(w, feats)) for d in range(len(p))])
                z.append(scale * dot(xs[r], proxy))
            out[r] = ref_grouped(z[:c], z[c:], perm, groups) + weight * vanilla[r]
    return out


def features(n=24, d=6, c=3, m=10, seed=0, dtype=torch.float64):
    """Images near an ID prompt, near a negative, or in between, so that AdaNeg stores both ways."""
    g = torch.Generator().manual_seed(seed)
    id_text = torch.randn(c, d, generator=g, dtype=dtype)
    neg_text = torch.randn(m, d, generator=g, dtype=dtype)
    anchors = torch.cat([id_text, neg_text])
    pick = torch.randint(len(anchors), (n,), generator=g)
    image = anchors[pick] / anchors[pick].norm(dim=1, keepdim=True) + 0.6 * torch.randn(n, d, generator=g,
                                                                                          dtype=dtype)
    return image, id_text, neg_text


# ----------------------------------------------------------------------------- NegLabel

@pytest.mark.parametrize("groups,seed", [(1, 0), (3, 0), (3, 7), (10, 1)])
def test_neglabel_matches_loops(groups, seed):
    image, id_text, neg_text = features()
    scores, perm = neglabel_score(image, id_text, neg_text, logit_scale=10.0, groups=groups, seed=seed)
    ref = ref_neglabel(image, id_text, neg_text, 10.0, groups, seed)
    assert perm.tolist() == ref_perm(len(neg_text), groups, seed)
    assert torch.allclose(scores, torch.tensor(ref, dtype=scores.dtype), atol=1e-12, rtol=0)


def test_neglabel_grouping_drops_the_remainder_of_the_permutation():
    image, id_text, neg_text = features(m=10)
    scores, perm = neglabel_score(image, id_text, neg_text, logit_scale=10.0, groups=3, seed=0)
    kept = perm[:9]
    # three groups of three from perm[:9]; not the ungrouped score of the same nine
    again, _ = neglabel_score(image, id_text, neg_text[kept], logit_scale=10.0, groups=1)
    assert not torch.allclose(scores, again)
    by_hand = torch.stack([neglabel_score(image, id_text, neg_text[kept[3 * g:3 * g + 3]],
                                          logit_scale=10.0)[0] for g in range(3)]).mean(0)
    assert torch.allclose(scores, by_hand, atol=1e-12, rtol=0)
    moved = neg_text.clone()
    moved[perm[9]] = id_text[0]                 # the dropped negative: even an ID prompt changes nothing
    other, _ = neglabel_score(image, id_text, moved, logit_scale=10.0, groups=3)
    assert torch.allclose(scores, other, atol=1e-12, rtol=0)


def test_neglabel_is_norm_and_batch_invariant_and_float32_close():
    image, id_text, neg_text = features()
    ref, _ = neglabel_score(image, id_text, neg_text, logit_scale=100.0, groups=2)
    scaled, _ = neglabel_score(3 * image, 0.5 * id_text, 7 * neg_text, logit_scale=100.0, groups=2,
                               batch_size=5)
    assert torch.allclose(ref, scaled, atol=1e-12, rtol=0)
    f32, _ = neglabel_score(image.half(), id_text.float(), neg_text.float(), logit_scale=100.0, groups=2)
    assert f32.dtype == torch.float32 and torch.allclose(f32.double(), ref, atol=2e-2)
    assert ((ref >= 0) & (ref <= 1)).all()


def test_neglabel_ranks_id_above_negatives():
    _, id_text, neg_text = features()
    scores, _ = neglabel_score(torch.cat([id_text, neg_text]), id_text, neg_text, logit_scale=50.0)
    assert scores[:3].min() > scores[3:].max()


@pytest.mark.parametrize("groups", [0, 11])
def test_bad_groups_are_one_line_errors(groups):
    image, id_text, neg_text = features(m=10)
    with pytest.raises(NegativesError) as e:
        neglabel_score(image, id_text, neg_text, logit_scale=10.0, groups=groups)
    assert isinstance(e.value, ValueError) and isinstance(e.value, IIMError)
    assert "\n" not in str(e.value) and "groups" in str(e.value)


# ----------------------------------------------------------------------------- CSP

def test_csp_phrases_draw_one_superclass_per_adjective_as_csps_seeded_random():
    adjectives = [f"adj{i}" for i in range(40)]
    random.seed(3)
    expected = [a + " " + random.choice(list(SUPERCLASSES)) for a in adjectives]
    assert csp_phrases(adjectives, seed=3) == expected
    assert csp_phrases(adjectives, seed=3) != csp_phrases(adjectives, seed=4)
    assert len(SUPERCLASSES) == 14 and "creature" in SUPERCLASSES


def test_csp_candidates_prompt_the_pool_and_count_every_word_once():
    nouns = ["dog", "light"]
    adjectives = ["sunny", "light", "striped", "sunny", "wet"]
    pool = csp_candidates(nouns, adjectives, seed=0)
    kept = ["sunny", "striped", "wet"]          # "light" is a noun already, the second "sunny" a repeat
    assert pool == [POOL_PROMPT.format(p) for p in csp_phrases(kept, seed=0)]
    assert all(p.startswith("a nice photo of ") for p in pool)
    assert csp_candidates([], ["big"], prompt="{}") == csp_phrases(["big"])
    assert csp_candidates(nouns, []) == []


# ----------------------------------------------------------------------------- AdaNeg

@pytest.mark.parametrize("sample_adaptive", [True, False])
@pytest.mark.parametrize("groups,batch_size,memory", [(1, 1, 2), (3, 4, 2), (2, 24, 3), (5, 7, 1)])
def test_adaneg_matches_loops(sample_adaptive, groups, batch_size, memory):
    image, id_text, neg_text = features()
    order = torch.randperm(len(image), generator=torch.Generator().manual_seed(5))
    kw = dict(groups=groups, seed=1, memory=memory, threshold=0.5, gap=0.3, weight=0.1, beta=5.0,
              sample_adaptive=sample_adaptive, batch_size=batch_size)
    scores = adaneg_scores(image, id_text, neg_text, logit_scale=10.0, order=order, **kw)
    stats = {"stored": 0, "replaced": 0}
    ref = ref_adaneg(image, id_text, neg_text, scale=10.0, order=order.tolist(), stats=stats, **kw)
    assert stats["stored"] > 0 and (memory > 2 or stats["replaced"] > 0)    # the memory is exercised
    assert torch.allclose(scores, torch.tensor(ref, dtype=scores.dtype), atol=1e-10, rtol=0)


def test_adaneg_depends_on_order_and_reduces_to_neglabel_without_stores():
    image, id_text, neg_text = features()
    a = adaneg_scores(image, id_text, neg_text, logit_scale=10.0, order=torch.arange(24), batch_size=4)
    b = adaneg_scores(image, id_text, neg_text, logit_scale=10.0, order=torch.arange(24).flip(0),
                      batch_size=4)
    assert not torch.allclose(a, b)
    # gap 1: the store thresholds are 1 and 0, nothing is ever stored -> (1 + weight) * NegLabel's score
    never = adaneg_scores(image, id_text, neg_text, logit_scale=10.0, order=torch.arange(24).flip(0), gap=1.0,
                          groups=2, weight=0.25)
    base, _ = neglabel_score(image, id_text, neg_text, logit_scale=10.0, groups=2)
    assert torch.allclose(never, 1.25 * base, atol=1e-12, rtol=0)


def test_adaneg_float32_and_scale_invariance():
    image, id_text, neg_text = features()
    order = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    ref = adaneg_scores(image, id_text, neg_text, logit_scale=10.0, order=order)
    f32 = adaneg_scores(2 * image.float(), id_text.float(), 3 * neg_text.float(), logit_scale=10.0,
                        order=order)
    assert f32.dtype == torch.float32 and torch.allclose(f32.double(), ref, atol=1e-4)


@pytest.mark.parametrize("bad", [dict(order=torch.arange(23)), dict(order=torch.zeros(24, dtype=torch.long)),
                                 dict(memory=0), dict(gap=1.5), dict(groups=11)])
def test_adaneg_bad_input_is_one_line(bad):
    image, id_text, neg_text = features()
    kw = dict(order=torch.arange(24), **{k: v for k, v in bad.items() if k != "order"})
    kw["order"] = bad.get("order", kw["order"])
    with pytest.raises(NegativesError) as e:
        adaneg_scores(image, id_text, neg_text, logit_scale=10.0, **kw)
    assert "\n" not in str(e.value)
