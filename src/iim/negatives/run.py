"""``iim negatives`` as a library function: vocabulary -> prompts -> packed text features -> NegMining
(SPEC §10) for NegLabel's set and CSP's pool -> the NEG folder (:mod:`iim.negatives.store`).

    summary = mine_negatives("cache/in1k", "wordnet", "neg/in1k")     # keep 0.15, quantile 0.95
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..cache import open_cache
from ..cache.fingerprint import fingerprint
from ..errors import IIMError
from ..models import resolve_device
from ..text import global_prototypes
from .encode import ADJ_PROMPT, NOUN_PROMPT, adj_prompt, encode_texts, noun_prompt
from .mining import check_keep, quantile_similarity, select_lowest
from .store import FORMAT, NegativeSet, write_negatives
from .vocab import read_vocabulary


def csp_pool(nouns, adjectives):
    """CSP's candidate texts (:func:`iim.score.csp.csp_candidates`), or None where that module is absent."""
    try:
        from ..score.csp import csp_candidates
    except ImportError:
        return None
    return list(csp_candidates(list(nouns), list(adjectives)))


def mine_set(feats, parts, words, id_prompts, *, keep: float, quantile: float) -> NegativeSet:
    """Rank the candidates (text features ``feats [M, D]``) by their quantile similarity to the ID
    prompts and keep the lowest fraction per part of speech (SPEC §10)."""
    d = quantile_similarity(feats, id_prompts, q=quantile)
    chosen = select_lowest(d, parts, keep=keep)
    return NegativeSet(list(words), list(parts), d.numpy(), chosen.numpy(), feats[chosen].numpy())


def mine_negatives(cache, vocab, out, *, keep: float = 0.15, quantile: float = 0.95, device: str = "auto",
                   pretrained: str | None = None, overwrite: bool = False, log=lambda msg: None) -> dict:
    """Mine the negatives of ``cache``'s ID classes from ``vocab`` (a folder or ``"wordnet"``) into the
    folder ``out``; returns the manifest written (plus ``seconds``). Bad input is refused before the
    model is loaded, and nothing is written unless everything succeeded."""
    from ..cache_model import load_cache_model       # the cache's model, its weights verified

    t0 = time.perf_counter()
    check_keep(keep)
    if not 0 <= quantile <= 1:
        raise IIMError(f"--quantile must lie in [0, 1], got {quantile}")
    words = read_vocabulary(vocab)
    cache = open_cache(cache)
    if not cache.classnames:
        raise IIMError(f"cache {cache.root} records no ID classes")
    dev = resolve_device(device)
    log(f"Vocabulary {words.source}: {len(words.nouns)} nouns, {len(words.adjectives)} adjectives; "
        f"model {cache.manifest.get('model')} on {dev}")
    model = load_cache_model(cache, dev, pretrained, note=log)[0]
    id_prompts = cache.global_prototypes() if cache.has_global_prototypes() else \
        global_prototypes(model, cache.classnames)
    noun_feats = encode_texts(model, [noun_prompt(w) for w in words.nouns])
    adj_texts = [adj_prompt(w) for w in words.adjectives]
    parts = ["noun"] * len(words.nouns) + ["adj"] * len(words.adjectives)
    feats = torch.cat([noun_feats, encode_texts(model, adj_texts)])
    sets = {"neglabel": mine_set(feats, parts, words.nouns + words.adjectives, id_prompts,
                                 keep=keep, quantile=quantile)}
    pool = csp_pool(words.nouns, words.adjectives)
    if pool is not None:        # CSP: the nouns as NegLabel's, the adjectives replaced by its pool
        feats = torch.cat([noun_feats, encode_texts(model, pool)])
        sets["csp"] = mine_set(feats, ["noun"] * len(words.nouns) + ["csp"] * len(pool), words.nouns + pool,
                               id_prompts, keep=keep, quantile=quantile)
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cache": str(cache.root),
        "cache_fingerprint": fingerprint(dict(cache.manifest, classnames=list(cache.classnames))),
        "vocab": {"source": words.source, "sha256": words.sha256, "files": list(words.files),
                  "nouns": len(words.nouns), "adjectives": len(words.adjectives)},
        "settings": {"keep": keep, "quantile": quantile},
        "prompts": {"noun": NOUN_PROMPT, "adj": ADJ_PROMPT},
        "sets": {name: {"candidates": len(s.words), "selected": int(np.sum(s.chosen)),
                        "per_part": {p: int(sum(c for q, c in zip(s.parts, s.chosen) if q == p))
                                     for p in dict.fromkeys(s.parts)}} for name, s in sets.items()},
    }
    write_negatives(out, manifest, sets, overwrite=overwrite)
    return dict(manifest, seconds=time.perf_counter() - t0)
