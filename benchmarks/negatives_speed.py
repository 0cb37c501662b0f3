"""Mining speed: ``iim negatives`` (packed prompts: EOT cut, shared prefix once) against open_clip's
``encode_text`` on 77-token prompts, both followed by the same NegMining (SPEC §10), in this process.

A synthetic vocabulary of N candidates (default 10,000: 70 % nouns, 30 % adjectives, like WordNet's mix;
one- to three-word phrases drawn with a fixed seed from the tokenizer's own word list) is mined against
the 1,000 ImageNet class prompts (encoded, untimed, by the packed path) of ViT-B-16 with random weights (the cost does not depend on them).
The packed path encodes all N; the reference, slow on a CPU, a seeded subset (``--ref-words``), whose
features are checked against the packed ones. Prints words per second of each and their ratio.

    python benchmarks/negatives_speed.py                      # CPU: 10,000 words, reference on 500
    python benchmarks/negatives_speed.py --device cuda --ref-words 10000
"""
from __future__ import annotations

import argparse
import platform
import random
import time

import open_clip
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from iim.models import create_model
from iim.negatives.encode import adj_prompt, encode_texts, noun_prompt
from iim.negatives.mining import quantile_similarity, select_lowest
from iim.text import tokenize


def vocabulary(n: int, seed: int = 0):
    """``(words, parts)``: n distinct 1-3 word phrases from the BPE word list, 70 % nouns."""
    rng = random.Random(seed)
    pool = sorted(w[:-4] for w in open_clip.tokenizer.SimpleTokenizer().encoder
                  if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6)
    words = {}
    while len(words) < n:
        words[" ".join(rng.choice(pool) for _ in range(rng.choice((1, 1, 1, 2, 2, 3))))] = None
    words = list(words)
    return words, ["noun" if i < int(0.7 * n) else "adj" for i in range(n)]


def prompts(words, parts):
    return [noun_prompt(w) if p == "noun" else adj_prompt(w) for w, p in zip(words, parts)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mine(feats, parts, ids):
    return select_lowest(quantile_similarity(feats, ids, q=0.95).cpu(), parts, keep=0.15)


@torch.no_grad()
def reference_features(model, texts, device, batch: int = 500):
    out = [model.encode_text(tokenize(model, texts[i:i + batch]).to(device)).float()
           for i in range(0, len(texts), batch)]
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--words", type=int, default=10_000)
    p.add_argument("--ref-words", type=int, default=500, help="words the reference encodes (a seeded subset)")
    p.add_argument("--C", type=int, default=1000, help="ID classes (the first C ImageNet class names)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, fp32")
    model, _ = create_model(args.model, "none", device=device)
    model.eval()
    ids = encode_texts(model, [noun_prompt(c) for c in IMAGENET_CLASSNAMES[:args.C]]).to(device)  # not timed
    words, parts = vocabulary(args.words)
    texts = prompts(words, parts)
    sub = sorted(random.Random(1).sample(range(args.words), min(args.ref_words, args.words)))
    lengths = tokenize(model, texts).argmax(-1) + 1
    print(f"{args.model} random weights, {args.words} candidates ({parts.count('noun')} nouns), C={args.C}; "
          f"tokens: {int(lengths.sum())} up to EOT vs {77 * args.words} at 77 per prompt")

    encode_texts(model, texts[:64])              # warm-up
    reference_features(model, texts[:64], device)
    sync(device)
    t0 = time.perf_counter()
    feats = torch.cat([encode_texts(model, [t for t, q in zip(texts, parts) if q == part])   # per template,
                       for part in ("noun", "adj")]).to(device)                                # as iim negatives
    chosen = mine(feats, parts, ids)
    sync(device)
    packed_s = time.perf_counter() - t0

    sub_texts, sub_parts = [texts[i] for i in sub], [parts[i] for i in sub]
    sync(device)
    t0 = time.perf_counter()
    ref = reference_features(model, sub_texts, device)
    mine(ref, sub_parts, ids)
    sync(device)
    ref_s = time.perf_counter() - t0
    diff = (ref - feats[sub]).abs().max().item()
    print(f"max |packed - encode_text| over the {len(sub)} checked features: {diff:.2e} "
          f"({int(chosen.sum())} negatives chosen)")
    packed_rate, ref_rate = args.words / packed_s, len(sub) / ref_s
    print(f"packed (iim negatives): {packed_rate:,.0f} words/s ({packed_s:.1f} s for {args.words})")
    print(f"open_clip encode_text:  {ref_rate:,.0f} words/s ({ref_s:.1f} s for {len(sub)})")
    print(f"speed-up {packed_rate / ref_rate:.1f}x (target >= 5x on CPU)")


if __name__ == "__main__":
    main()
