"""Features of the built-in learned scorer: hashed word n-grams, length, and the group's view.

A batch is ``n`` groups of ``G`` completions, row-major. Everything is numpy over the whole
batch at once (one tokenising pass, :mod:`gfpo_filters.ngrams`); a completion's features depend
on its own group alone, so a batch featurises the same whole or in pieces.

* **n-gram ids**: every window of ``n`` words, ``n = 1 .. ngram_max``, hashed with
  :func:`gfpo_filters.ngrams.ngram_hashes` (seed ``16 * hash_seed + n``) and mapped to one of
  ``n_buckets`` ids by ``((h >> 32) * n_buckets) >> 32``. Laid out position by position (the
  unigram at a word, then the bigram starting there, ...); a window that would run past the end of
  its completion gets the id ``n_buckets``, a padding id that the model ignores, so each
  completion's bag is a contiguous slice without any filtering pass.
* **dense features** (:data:`POINT_FEATURES`, then with ``group_features`` :data:`GROUP_FEATURES`):

  - ``log_words``, ``log_chars``: ``log(1 + #words)``, ``log(1 + #characters)``;
  - ``log_words_z``: ``log_words`` as a z-score within the group (0 when all are equally long);
  - ``similarity_mean`` / ``similarity_max``: mean / largest Jaccard similarity of word
    ``similarity_ngram``-grams (default 2) to the other completions of the group (the ``diversity``
    filter's engine, exact or MinHash, on hashes from the same n-gram loop as the ids; a completion
    of fewer words has no shingle): ``similarity_mean`` is the ``consensus`` filter's score with ``ngram=2``;
  - ``duplicate_share``: share of the other completions with exactly the same text;
  - ``answer_share``: share of the other completions whose final number (the last number in the
    last :data:`ANSWER_TAIL` characters, commas removed) is the same; ``answer_top``: 1 if that
    answer is a most common one of the group; ``has_answer``: 1 if there is one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gfpo_filters.filters.consensus import agreement, answer_agreement
from gfpo_filters.filters.diversity import sequence_similarity, shingle_similarity
from gfpo_filters.ngrams import U64, ngram_hashes, word_hashes

POINT_FEATURES = ("log_words", "log_chars")
GROUP_FEATURES = (
    "log_words_z",
    "similarity_mean",
    "similarity_max",
    "duplicate_share",
    "answer_share",
    "answer_top",
    "has_answer",
)
#: the final answer is the last number in this many final characters
ANSWER_TAIL = 100
NUMBER_PATTERN = r"-?\d[\d,]*(?:\.\d+)?"
_NUMBER = re.compile(NUMBER_PATTERN)
#: the consensus baseline of the validation report: the consensus filter's default word n-gram size
CONSENSUS_NGRAM = 3


@dataclass(frozen=True)
class FeatureConfig:
    """How completions become features; stored in every checkpoint."""

    n_buckets: int = 1 << 18
    ngram_max: int = 2
    lowercase: bool = True
    hash_seed: int = 0
    group_features: bool = True
    similarity_ngram: int = 2

    def validate(self, where: str) -> None:
        if not isinstance(self.n_buckets, int) or not 2 <= self.n_buckets <= 1 << 26:
            raise ValueError(f"{where}: n_buckets must be an int between 2 and 2**26, got {self.n_buckets!r}")
        if not isinstance(self.ngram_max, int) or not 1 <= self.ngram_max <= 8:
            raise ValueError(f"{where}: ngram_max must be an int between 1 and 8, got {self.ngram_max!r}")
        if not isinstance(self.similarity_ngram, int) or not 1 <= self.similarity_ngram <= 8:
            raise ValueError(f"{where}: similarity_ngram must be an int between 1 and 8, got {self.similarity_ngram!r}")
        if not isinstance(self.hash_seed, int) or not 0 <= self.hash_seed < 2**32:
            raise ValueError(f"{where}: hash_seed must be an int in [0, 2**32), got {self.hash_seed!r}")
        for name in ("lowercase", "group_features"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{where}: {name} must be True or False, got {getattr(self, name)!r}")

    @property
    def dense_names(self) -> tuple[str, ...]:
        return POINT_FEATURES + (GROUP_FEATURES if self.group_features else ())


@dataclass
class Features:
    """Features of a batch in bag form: ``ids[offsets[i]:offsets[i+1]]`` belong to text i."""

    ids: np.ndarray  # int64 (total,); the id n_buckets pads
    offsets: np.ndarray  # int64 (B + 1,)
    dense: np.ndarray  # float32 (B, len(dense_names)), not standardised
    sizes: np.ndarray  # int64 (B,): real (not padding) n-grams of each text

    def __len__(self) -> int:
        return self.offsets.size - 1

    def take(self, index: np.ndarray) -> Features:
        """The features of the texts at ``index`` (vectorised gather of their bags)."""
        starts, ends = self.offsets[index], self.offsets[index + 1]
        counts = ends - starts
        offsets = np.zeros(index.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        pos = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1], counts)
        return Features(self.ids[pos], offsets, self.dense[index], self.sizes[index])

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        sizes = np.array([p.ids.size for p in parts], dtype=np.int64)
        shift = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shift)]).astype(np.int64)
        return Features(
            np.concatenate([p.ids for p in parts]),
            offsets,
            np.concatenate([p.dense for p in parts]),
            np.concatenate([p.sizes for p in parts]),
        )


def _others_share(codes: np.ndarray) -> np.ndarray:
    """Share of the other members of the group with the same code: (n, G) ints -> (n, G)."""
    n, g = codes.shape
    if g < 2:
        return np.zeros((n, g))
    return ((codes[:, :, None] == codes[:, None, :]).sum(axis=2) - 1) / (g - 1)


def group_features(texts: Sequence[str], shape: tuple[int, int], counts: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """The :data:`GROUP_FEATURES` of a row-major batch, given word counts and similarity matrices: (n * G, 7)."""
    n, g = shape
    log_words = np.log1p(counts).reshape(n, g)
    std = log_words.std(axis=1, keepdims=True)
    z = np.divide(log_words - log_words.mean(axis=1, keepdims=True), std, out=np.zeros((n, g)), where=std > 1e-9)
    others = sim.copy()
    idx = np.arange(g)
    others[:, idx, idx] = 0.0
    sim_max = others.max(axis=2) if g > 1 else np.zeros((n, g))
    ids: dict[str, int] = {}
    codes = np.fromiter((ids.setdefault(t, len(ids)) for t in texts), dtype=np.int64, count=n * g).reshape(n, g)
    answers = [m[-1].replace(",", "") if (m := _NUMBER.findall(t[-ANSWER_TAIL:])) else None for t in texts]
    share, has = answer_agreement(answers, shape)
    top = has & (share >= np.where(has, share, -1.0).max(axis=1, keepdims=True))  # a most common answer
    cols = (z, agreement(sim), sim_max, _others_share(codes), share, top.astype(np.float64), has.astype(np.float64))
    return np.stack([c.reshape(-1) for c in cols], axis=1)


def bucket_ids(h: np.ndarray, n_buckets: int) -> np.ndarray:
    """``((h >> 32) * n_buckets) >> 32``: uniform 64-bit hashes to ids in ``[0, n_buckets)``."""
    if n_buckets & (n_buckets - 1) == 0:  # a power of two: the same ids, by one shift
        return (h >> U64(64 - n_buckets.bit_length() + 1)).view(np.int64)  # < 2**63: the same bits
    return (((h >> U64(32)) * U64(n_buckets)) >> U64(32)).view(np.int64)


def featurize(texts: Sequence[str], shape: tuple[int, int], config: FeatureConfig) -> Features:
    """Features of ``shape[0]`` groups of ``shape[1]`` completions (``texts`` row-major)."""
    n, g = shape
    if len(texts) != n * g:
        raise ValueError(f"featurize: {len(texts)} texts do not make {n} groups of {g}")
    hashes, counts = word_hashes(texts, config.lowercase)
    ends = np.cumsum(counts)
    pad = config.n_buckets
    sim_n = config.similarity_ngram if config.group_features else 0
    width = max(config.ngram_max, sim_n)  # the n-gram hashes double as the shingles of the similarity
    grid = np.empty((hashes.size, config.ngram_max), dtype=np.int64)
    shingles = None
    for k in range(width):
        h = ngram_hashes(hashes, k + 1, 16 * config.hash_seed + k + 1)
        past = (ends[:, None] - np.arange(1, k + 1)[None, :]).reshape(-1)  # windows running past their text
        if k < config.ngram_max:
            grid[: h.size, k] = bucket_ids(h, config.n_buckets)
            grid[h.size :, k] = pad
            grid[past[past >= 0], k] = pad
        if k + 1 == sim_n:
            inside = np.ones(h.size, dtype=bool)
            inside[past[(past >= 0) & (past < h.size)]] = False
            shingles = h[inside]
    ids = grid.reshape(-1)
    offsets = np.zeros(n * g + 1, dtype=np.int64)
    offsets[1:] = ends * config.ngram_max
    sizes = np.zeros(n * g, dtype=np.int64)
    for k in range(config.ngram_max):
        sizes += np.maximum(counts - k, 0)
    n_chars = np.fromiter(map(len, texts), dtype=np.int64, count=n * g)
    dense = [np.log1p(counts)[:, None], np.log1p(n_chars)[:, None]]
    if config.group_features:
        doc = np.repeat(np.arange(n * g, dtype=np.int64), np.maximum(counts - sim_n + 1, 0))
        sim = shingle_similarity(shingles, doc, shape)
        dense.append(group_features(texts, shape, counts, sim))
    return Features(ids, offsets, np.concatenate(dense, axis=1).astype(np.float32), sizes)


def consensus_scores(texts: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """The ``consensus`` filter's default score (mean word-3-gram similarity to the rest): (n, G)."""
    hashes, counts = word_hashes(texts)
    return agreement(sequence_similarity(hashes.view(np.int64), counts, shape, CONSENSUS_NGRAM))
