"""The NEG folder that ``iim negatives`` writes and ``iim score --negatives`` reads.

    NEG/
      manifest.json     vocabulary (source, sha256, files), settings (keep, quantile), the cache's model
                        fingerprint, prompt templates, and per negative set its size
      selected.txt      NegLabel's chosen words, one per line ("csp_selected.txt": CSP's pool)
      candidates.csv    word, pos, d (the quantile similarity), chosen  ("csp_candidates.csv")
      embeddings.npz    per set ("neglabel", "csp") the chosen prompts' text features, float32 [M, D]

The folder is written under a temporary name beside NEG and renamed onto it at the end, so NEG is never
half-written; it is refused by a cache whose model, weights or classes differ from the one mined for.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache.fingerprint import compare
from ..errors import IIMError
from ..spreadsheet import csv_text

FORMAT = "iim-negatives-v1"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npz"
MATCH = ("model", "weights", "classnames")      # what the mined words depend on (with the vocabulary)
FILES = {"neglabel": ("selected.txt", "candidates.csv"), "csp": ("csp_selected.txt", "csp_candidates.csv")}


@dataclass
class NegativeSet:
    """One mined set: every candidate (text, part of speech, d, chosen) and the chosen features."""
    words: list                 # candidate words (or CSP pool entries), in candidate order
    parts: list                 # "noun" / "adj" / ... per candidate
    d: np.ndarray               # [M] quantile similarity
    chosen: np.ndarray          # [M] bool
    embeddings: np.ndarray      # [n_chosen, D] float32, in candidate order

    @property
    def selected(self) -> list:
        return [w for w, c in zip(self.words, self.chosen) if c]


@dataclass
class Negatives:
    """A NEG folder as read back: its manifest and the chosen features of each set."""
    root: Path
    manifest: dict
    embeddings: dict = field(default_factory=dict)      # set name -> float32 tensor [M, D]
    selected: dict = field(default_factory=dict)        # set name -> list of words


def _candidates_csv(s: NegativeSet) -> str:
    return csv_text([["word", "pos", "d", "chosen"],
                     *([word, pos, f"{d:.6f}", int(c)]
                       for word, pos, d, c in zip(s.words, s.parts, s.d.tolist(), s.chosen.tolist()))])


def write_negatives(out, manifest: dict, sets: dict, *, overwrite: bool = False) -> Path:
    """Write the folder ``out`` in one step: everything goes into a temporary folder beside it, which
    replaces ``out`` at the end (an existing ``out`` only with ``overwrite``)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise IIMError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o755)
        for name, s in sets.items():
            selected, table = FILES[name]
            (tmp / selected).write_text("".join(w + "\n" for w in s.selected), encoding="utf-8")
            (tmp / table).write_text(_candidates_csv(s), encoding="utf-8")
        np.savez(tmp / EMBEDDINGS, **{name: s.embeddings.astype(np.float32) for name, s in sets.items()})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_negatives(folder) -> Negatives:
    """Read a NEG folder (one-line errors for a missing or damaged one)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise IIMError(f"{folder} is not a negatives folder (no {MANIFEST}); mine one with "
                       f"'iim negatives --cache CACHE --vocab VOCAB --out {folder}'")
    try:
        manifest = json.loads(path.read_text())
        with np.load(folder / EMBEDDINGS) as z:
            emb = {k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files}
    except (OSError, ValueError) as e:
        raise IIMError(f"negatives folder {folder} is damaged ({e}); mine it again with 'iim negatives'") from None
    if manifest.get("format") != FORMAT:
        raise IIMError(f"{path} is not an iim negatives manifest (format {manifest.get('format')!r}, "
                       f"expected {FORMAT!r})")
    unknown = sorted(set(emb) - set(FILES))
    if unknown:
        raise IIMError(f"negatives folder {folder} holds unknown sets {unknown} in {EMBEDDINGS} (known: "
                       f"{', '.join(FILES)}); mine it again with 'iim negatives'")
    selected = {}
    for name in emb:
        words = (folder / FILES[name][0]).read_text(encoding="utf-8").splitlines()
        if len(words) != len(emb[name]):
            raise IIMError(f"negatives folder {folder} is damaged: {FILES[name][0]} lists {len(words)} words "
                           f"but {EMBEDDINGS} holds {len(emb[name])} {name} embeddings; mine it again")
        selected[name] = words
    return Negatives(folder, manifest, emb, selected)


def check_negatives(neg: Negatives, cache) -> None:
    """The NEG folder must have been mined for the cache's model, weights and ID classes."""
    fp = dict(cache.manifest, classnames=list(cache.classnames))
    diff = compare(neg.manifest.get("cache_fingerprint") or {}, fp, MATCH)
    if diff:
        raise IIMError(f"negatives {neg.root} were mined for another cache ({diff[0]}; mined from "
                       f"{neg.manifest.get('cache')}, scoring {cache.root}); mine them for this cache: "
                       f"iim negatives --cache {cache.root} --vocab VOCAB --out DIR")
    dims = {int(e.shape[-1]) for e in neg.embeddings.values()}
    test_dim = cache.split("test").dim
    if dims and dims != {test_dim}:
        raise IIMError(f"negatives {neg.root} have D={sorted(dims)} but the cache's features have D={test_dim}")
