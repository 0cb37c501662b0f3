"""The candidate vocabulary of negative labels (SPEC §10): a folder of ``noun.*.txt`` / ``adj.*.txt`` files
(WordNet's lexicographer-file names, the layout NegLabel's and CSP's text files use), or WordNet itself
through nltk.

    vocab = read_vocabulary("vocab/wordnet")      # or "wordnet" (nltk's WordNet data)
    vocab.nouns, vocab.adjectives                  # lists of words, in a machine-independent order
    vocab.sha256                                   # of the word lists themselves (what mining reads)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import IIMError

PARTS = ("noun", "adj")          # file prefixes -> parts of speech
WORDNET = "wordnet"              # the --vocab word that reads WordNet through nltk
NLTK_HINT = "python -m nltk.downloader wordnet"


@dataclass(frozen=True)
class Vocabulary:
    """Candidate words per part of speech, each list free of repeats, in reading order."""
    nouns: list
    adjectives: list
    source: str                  # the folder, or "wordnet (nltk <version>)"
    files: tuple = ()            # the files read, in order (a folder vocabulary)

    @property
    def sha256(self) -> str:
        """sha256 of the word lists as mining sees them (``noun\\tword`` / ``adj\\tword`` lines): equal
        for equal candidates, whichever files or WordNet copy they came from."""
        text = "".join(f"{pos}\t{w}\n" for pos, words in (("noun", self.nouns), ("adj", self.adjectives))
                       for w in words)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def clean_word(line: str) -> str:
    """A vocabulary line as a word: WordNet's ``_`` become spaces, outer whitespace dropped."""
    return " ".join(line.replace("_", " ").split())


def _unique(words) -> list:
    """Words in order, each kept at its first occurrence (a word met again later is counted once)."""
    return list(dict.fromkeys(w for w in words if w))


def read_folder(folder) -> Vocabulary:
    """Read every ``noun.*.txt`` and ``adj.*.txt`` in ``folder`` (sorted by file name, so the candidate
    list is the same on every machine), one word or phrase per line. Repeats are dropped within each
    part of speech; a word that is both a noun and an adjective is a candidate of each (two prompts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IIMError(f"vocabulary {folder} is not a folder (give a folder of noun.*.txt / adj.*.txt files, "
                       f"or the word '{WORDNET}')")
    words, files = {p: [] for p in PARTS}, []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        part = path.name.split(".", 1)[0]
        if part not in PARTS or not path.name.endswith(".txt") or not path.is_file():
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise IIMError(f"vocabulary file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        words[part] += [clean_word(x) for x in lines]
        files.append(path.name)
    if not files:
        raise IIMError(f"vocabulary folder {folder} holds no noun.*.txt or adj.*.txt file (the layout of "
                       f"NegLabel's / CSP's WordNet text files)")
    vocab = Vocabulary(_unique(words["noun"]), _unique(words["adj"]), str(folder), tuple(files))
    if not vocab.nouns and not vocab.adjectives:
        raise IIMError(f"vocabulary folder {folder} is empty: its {len(files)} noun./adj. file(s) hold no word")
    return vocab


def read_wordnet() -> Vocabulary:
    """WordNet's noun and adjective lemmas through nltk (adjective satellites included), ordered by
    lexicographer file (``noun.animal``, ...) and then by lemma, as a folder of those files would be.
    Without nltk or its WordNet data: a one-line error saying how to install them."""
    try:
        import nltk
        from nltk.corpus import wordnet as wn
    except ImportError:
        raise IIMError(f"--vocab {WORDNET} reads WordNet through nltk, which is not installed: pip install "
                       f"nltk, then {NLTK_HINT} (or pass a folder of noun.*.txt / adj.*.txt files)") from None
    try:
        wn.ensure_loaded()
        by_file = {}
        for pos in ("n", "a", "s"):
            for syn in wn.all_synsets(pos):
                by_file.setdefault(syn.lexname(), set()).update(clean_word(n) for n in syn.lemma_names())
    except LookupError:
        raise IIMError(f"nltk's WordNet data is not installed; install it with '{NLTK_HINT}' (needs network "
                       f"once; or pass a folder of noun.*.txt / adj.*.txt files)") from None
    words = {p: [] for p in PARTS}
    for lexname in sorted(by_file):
        words[lexname.split(".", 1)[0]] += sorted(by_file[lexname])
    return Vocabulary(_unique(words["noun"]), _unique(words["adj"]), f"{WORDNET} (nltk {nltk.__version__})")


def read_vocabulary(source) -> Vocabulary:
    """``source``: a folder in NegLabel / CSP layout, or ``"wordnet"`` (nltk's WordNet data; a folder
    named ``wordnet`` in the working directory is read as a folder)."""
    if str(source) == WORDNET and not Path(WORDNET).is_dir():
        return read_wordnet()
    return read_folder(source)
