"""``iim negatives``: mine negative labels for a cache's ID classes from a vocabulary (SPEC §10)."""
from __future__ import annotations

import click

from .options import cache_option, device_option, out_option


@click.command("negatives")
@cache_option("Feature cache whose ID classes (and model) the negatives are mined for.", required=True)
@click.option("--vocab", required=True, metavar="DIR|wordnet",
              help="A folder of noun.*.txt / adj.*.txt files (NegLabel's / CSP's layout), or 'wordnet' "
                   "(WordNet through nltk; needs its data: python -m nltk.downloader wordnet).")
@out_option("The NEG folder to write (selected.txt, candidates.csv, embeddings.npz, manifest.json).")
@click.option("--keep", type=float, default=0.15, show_default=True,
              help="Fraction of the candidate nouns (and, separately, adjectives) kept, in (0, 1].")
@click.option("--quantile", type=float, default=0.95, show_default=True,
              help="Quantile over the ID classes of a candidate's cosine to their prompts (NegMining).")
@click.option("--pretrained", default=None, help="The cache model's weights, where the manifest's are not at hand.")
@click.option("--overwrite", is_flag=True, help="Replace an existing NEG folder.")
@device_option
def negatives(cache, vocab, out, keep, quantile, pretrained, overwrite, device):
    """Mine negative labels (NegLabel's NegMining; CSP's pool too) for the cache's ID classes.

    \b
    iim negatives --cache cache/imagenet --vocab wordnet --out neg/imagenet
    iim negatives --cache cache/demo --vocab src/iim/demo/vocab --out neg/demo
    iim score --zero-shot --cache cache/demo --negatives neg/demo --out results/demo-0shot-neg
    """
    from ..errors import IIMError
    from ..negatives.run import mine_negatives

    if out is None:
        raise IIMError("iim negatives needs --out DIR (the NEG folder to write)")
    m = mine_negatives(cache, vocab, out, keep=keep, quantile=quantile, device=device, pretrained=pretrained,
                       overwrite=overwrite, log=click.echo)
    for name, s in m["sets"].items():
        parts = ", ".join(f"{n} {p}" for p, n in s["per_part"].items())
        click.echo(f"{name}: {s['selected']} of {s['candidates']} candidates kept ({parts})")
    click.echo(f"Wrote {out}/ (vocabulary sha256 {m['vocab']['sha256'][:12]}..., {m['seconds']:.1f} s)")
