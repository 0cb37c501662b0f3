"""``iim score --negatives NEG``: the scores that mined negative labels add, computed beside the usual
evaluators while :func:`iim.score.pipeline.stream_split` streams the cache (:class:`NegativeScores` is
the pipeline's ``job.extras`` hook).

Keys (higher = more ID): ``neglabel`` (NegLabel, SPEC §10, on the global feature, the ID prompts and the
mined set, in G groups), ``csp`` (CSP's score on its mined pool), ``adaneg`` (AdaNeg, streaming over every
scored image, test then the OOD sets, in a seeded order), and R-MCM / S-MCM with every source of ID and
OOD prototypes, ``{r_mcm|s_mcm}_{ID}_{OOD}`` (:mod:`iim.score.sources`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import IIMError
from ..score.sources import source_scores

ORDER_FILE = "negatives_order.npz"
ADANEG = {"groups": 5, "memory": 9, "batch_size": 256}   # iim.score.adaneg's defaults, recorded in results.json

class NegativeScores:
    """The per-chunk and end-of-stream hook that adds the negatives' scores to a scoring job.

    Args:
        negatives: a :class:`iim.negatives.store.Negatives` (checked against the cache by the caller).
        logit_scale: tau of NegLabel / CSP / AdaNeg (the model's own, SPEC §10).
        groups: NegLabel's G (1 = ungrouped); seed: the grouping permutation's and AdaNeg's order's seed.
    """

    def __init__(self, negatives, *, logit_scale: float, groups: int = 100, seed: int = 0):
        from ..score.neglabel import neglabel_score
        self.neg, self.tau, self.groups, self.seed = negatives, float(logit_scale), int(groups), int(seed)
        self.benchmark = (negatives.manifest.get("cache_fingerprint") or {}).get("benchmark")
        self._neglabel = neglabel_score
        self.mined = negatives.embeddings["neglabel"]
        self.columns = 2 * len(self.mined)         # extra logit columns per patch (mined, learned+mined)
        self.perms = {}                            # set name -> the grouping permutation used
        self.global_feats = {}                     # split -> [N, D] float32 (AdaNeg streams over all at the
                                                   # end: ~0.2 GB for ImageNet's 50,000 + 35,640 images)
        for name, emb in negatives.embeddings.items():     # bad --groups: refused before any image is read
            if not 1 <= self.groups <= len(emb):
                raise IIMError(f"--groups {self.groups}: NegLabel splits the {len(emb)} {name} negatives of "
                               f"{negatives.root} into G equal groups, so 1 <= G <= {len(emb)}")
        if len(self.mined) < ADANEG["groups"]:
            raise IIMError(f"AdaNeg groups the mined negatives in {ADANEG['groups']} (its authors' setting); "
                           f"{negatives.root} holds only {len(self.mined)}: mine more (--keep) or a larger vocabulary")

    def _grouped(self, g, id_proto, name):
        scores, perm = self._neglabel(g, id_proto, self.neg.embeddings[name].to(g.device),
                                      logit_scale=self.tau, groups=self.groups, seed=self.seed)
        self.perms[name] = perm.cpu().numpy()
        return scores

    def chunk(self, split_name, sims, global_feats, local_feats, job, *, k, alpha) -> dict:
        """The chunk's scores: NegLabel, CSP and every prototype-source combination."""
        g = global_feats.float()
        self.global_feats.setdefault(split_name, []).append(g.cpu())
        glob = job.global_proto.to(g.device)
        out = {name: self._grouped(g, glob, name) for name in ("neglabel", "csp") if name in self.neg.embeddings}
        out.update(source_scores(sims, local_feats, hand_proto=glob, mined=self.mined.to(g.device),
                                 learned_neg=job.neg_proto, k=k, alpha=alpha, zero_shot=job.zero_shot))
        return out

    def finish(self, scores: dict, job) -> None:
        """Add ``adaneg`` to every split's scores (``{split name: {key: numpy [N]}}``, test first): AdaNeg
        streams once over all of them, in the seeded order :attr:`order` records."""
        from ..score.adaneg import adaneg_scores
        names = list(scores)
        feats = [torch.cat(self.global_feats.pop(n)) for n in names]
        sizes = [len(f) for f in feats]
        self.order = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(self.seed))
        self.order_splits = np.repeat(np.array(names), sizes)[self.order.numpy()]
        self.order_rows = np.concatenate([np.arange(n) for n in sizes])[self.order.numpy()]
        s = adaneg_scores(torch.cat(feats), job.global_proto, self.mined, logit_scale=self.tau, order=self.order,
                          seed=self.seed, **ADANEG)
        s = s.float().cpu().numpy()
        for n, part in zip(names, np.split(s, np.cumsum(sizes)[:-1])):
            scores[n]["adaneg"] = part

    def record(self) -> dict:
        """What results.json records of the negatives."""
        man = self.neg.manifest
        return {"folder": str(self.neg.root), "benchmark": self.benchmark, "vocab_sha256": man["vocab"]["sha256"], "vocab": man["vocab"]["source"],
                "settings": man["settings"], "sizes": {n: int(len(e)) for n, e in self.neg.embeddings.items()},
                "groups": self.groups, "neg_seed": self.seed, "logit_scale": self.tau, "adaneg": ADANEG,
                "order_file": ORDER_FILE}

    def arrays(self) -> dict:
        """The grouping permutations and AdaNeg's order, for :data:`ORDER_FILE`."""
        out = {f"{n}_permutation": p for n, p in self.perms.items()}
        if hasattr(self, "order"):
            out.update(adaneg_order=self.order.numpy(), adaneg_order_split=self.order_splits,
                       adaneg_order_row=self.order_rows)
        return out



def attach_negatives(job, folder, *, groups: int = 100, seed: int = 0, pretrained=None) -> NegativeScores:
    """Read the NEG ``folder``, check it against the job's cache and add its scores to ``job``."""
    from .store import check_negatives, read_negatives
    neg = read_negatives(folder)
    check_negatives(neg, job.cache)
    tau = job.cache.manifest.get("logit_scale")
    if tau is None:                         # caches extracted before the logit scale was recorded
        from ..models import model_logit_scale
        from ..cache_model import load_cache_model
        tau = model_logit_scale(load_cache_model(job.cache, "cpu", pretrained, note=job.notes.append)[0])
    extra = NegativeScores(neg, logit_scale=tau, groups=groups, seed=seed)
    job.extras.append(extra)
    sizes = ", ".join(f"{n} {len(e)}" for n, e in neg.embeddings.items())
    job.notes.append(f"Negatives {neg.root} ({sizes}; vocabulary {neg.manifest['vocab']['source']}): NegLabel "
                     f"with {groups} group(s), seed {seed}, logit scale {float(tau):.4g}")
    return extra
