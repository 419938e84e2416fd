"""Word tokenisation and 64-bit hashing shared by the n-gram filters (``diversity``, ``learned``).

Vectorised: one Python pass splits the texts into words, everything after is numpy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain

import numpy as np

#: ``\\w+`` runs, else one non-space character (a punctuation mark).
WORD_PATTERN = r"\w+|\S"
MASK64 = (1 << 64) - 1
U64 = np.uint64


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic), a bijection of 64-bit words."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


class Vocabulary(dict):
    """word -> index of first appearance in this batch; lookups of known words stay in C."""

    def __missing__(self, word: str) -> int:
        index = self[word] = len(self)
        return index


def word_ids(
    texts: Sequence[str], pattern: str = WORD_PATTERN, lowercase: bool = True
) -> tuple[np.ndarray, np.ndarray, Vocabulary]:
    """All texts' words as one int64 array of batch-local word indices, words per text, and the vocabulary."""
    rx = re.compile(pattern)
    words = [rx.findall(t.lower() if lowercase else t) for t in texts]
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    vocab = Vocabulary()
    values = np.fromiter(map(vocab.__getitem__, chain.from_iterable(words)), dtype=np.int64, count=int(lengths.sum()))
    return values, lengths, vocab
