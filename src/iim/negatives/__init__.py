"""Negative labels mined from a vocabulary (SPEC §10): NegLabel's NegMining, CSP's pool, the NEG folder.

    from iim.negatives import mine_negatives, read_negatives
    mine_negatives("cache/in1k", "wordnet", "neg/in1k")       # iim negatives
    neg = read_negatives("neg/in1k")                          # neg.embeddings["neglabel"]: [M, D]
"""
from .encode import encode_texts
from .mining import quantile_similarity, select_lowest
from .run import mine_negatives
from .store import Negatives, check_negatives, read_negatives
from .vocab import Vocabulary, read_vocabulary

__all__ = ["encode_texts", "quantile_similarity", "select_lowest", "mine_negatives", "Negatives",
           "check_negatives", "read_negatives", "Vocabulary", "read_vocabulary"]
