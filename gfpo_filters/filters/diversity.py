"""The ``diversity`` filter: keep a set of completions that differ from each other.

Each completion becomes a set of shingles (overlapping n-grams of token ids when the trainer
passes ``completion_ids``, else of lower-cased words or characters). Pairwise similarity
within a group is the Jaccard index of those sets, computed for the whole batch at once:
exactly, by a sparse product of a binary completion x shingle matrix, or estimated with
one-permutation MinHash for long completions. A greedy set objective (max-min distance or
facility location) then picks completions one at a time; the score is the reverse of that
insertion order, so **the top k by score is exactly the greedy set of size k, for every k**.

See ``docs/filters/diversity.md`` for the math, every parameter and measured figures.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.errors import GroupInputError
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.ngrams import P64, U64, ngram_hashes, word_hashes
from gfpo_filters.params import check_choice, check_int, check_number

SIMILARITIES = ("auto", "jaccard", "minhash")
OBJECTIVES = ("maxmin", "facility_location")
UNITS = ("auto", "ids", "words", "chars")

#: ``similarity="auto"`` uses exact Jaccard while completions average at most this many
#: shingles, MinHash above it.
AUTO_EXACT_MAX_SHINGLES = 512

_U = U64
_SENTINEL = np.int64(-0x5DEECE66D)  # pads every sequence; never a token id (a word hash only by a 2**-64 chance)


# ---------------------------------------------------------------------- sequences
def _ids_to_array(seqs: list[Any], where: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-completion token-id sequences into one int64 array plus lengths."""
    converted = []
    all_lists = True
    for s in seqs:
        if hasattr(s, "detach"):
            s = s.detach().cpu().numpy()
        if isinstance(s, np.ndarray):
            all_lists = False
        converted.append(s)
    lengths = np.fromiter(map(len, converted), dtype=np.int64, count=len(converted))
    try:
        if all_lists:
            values = np.fromiter(chain.from_iterable(converted), dtype=np.int64, count=int(lengths.sum()))
        else:
            values = np.concatenate([np.asarray(s).reshape(-1) for s in converted]) if converted else np.zeros(0)
            if values.size and not np.issubdtype(values.dtype, np.integer):
                raise TypeError(f"dtype {values.dtype}")
            values = values.astype(np.int64, copy=False)
    except (TypeError, ValueError, OverflowError) as e:
        # Find the offending completion for the message (slow path, errors only).
        for (i, j), s in zip(where, converted):
            arr = np.asarray(s)
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise GroupInputError(
                    f"filter 'diversity': completion_ids[{i}][{j}] must hold integer token ids, got dtype {arr.dtype}"
                ) from None
        raise GroupInputError(f"filter 'diversity': completion_ids must hold integer token ids ({e})") from None
    return values, lengths


def _text_to_array(texts: list[str], unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes (lower-cased ``\\w+`` runs and single punctuation marks) or Unicode code points as ints."""
    if unit == "chars":
        joined = "".join(texts)
        values = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        return values, lengths
    values, lengths = word_hashes(texts)
    return values.view(np.int64), lengths


def completion_sequences(groups: Groups, unit: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """All completions as one int64 array of symbols, their lengths (n*G,), and the unit used."""
    if unit == "auto":
        unit = "ids" if groups.completion_ids is not None else "words"
    if unit == "ids":
        if groups.completion_ids is None:
            raise GroupInputError(
                "filter 'diversity': unit='ids' needs the trainer to pass completion_ids; "
                "use unit='words' or 'chars' (or 'auto') to shingle the text instead"
            )
        n, g = groups.shape
        flat = [ids for group in groups.completion_ids for ids in group]
        values, lengths = _ids_to_array(flat, [(i, j) for i in range(n) for j in range(g)])
        return values, lengths, "ids"
    return (*_text_to_array(groups.flat_texts(), unit), unit)


def shingle_hashes(values: np.ndarray, lengths: np.ndarray, ngram: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 64-bit hashes of every n-gram of every sequence, and the sequence each belongs to.

    A sequence shorter than ``ngram`` (but not empty) yields one shingle: the whole sequence.
    An empty sequence yields none. Sequences are padded with a sentinel so that no n-gram
    spans two sequences.
    """
    d = lengths.size
    pad = ngram - 1
    total = int(lengths.sum())
    starts_src = np.zeros(d, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts_src[1:])
    starts_pad = starts_src + pad * np.arange(d, dtype=np.int64)
    padded = np.full(total + pad * d + pad, _SENTINEL, dtype=np.int64)
    if total:
        padded[np.arange(total, dtype=np.int64) + np.repeat(starts_pad - starts_src, lengths)] = values
    h = ngram_hashes(padded, ngram, seed)
    windows = np.where(lengths >= ngram, lengths - pad, np.minimum(lengths, 1))
    n_win = int(windows.sum())
    win_doc = np.repeat(np.arange(d, dtype=np.int64), windows)
    first = np.zeros(d, dtype=np.int64)
    np.cumsum(windows[:-1], out=first[1:])
    pos = np.arange(n_win, dtype=np.int64) + np.repeat(starts_pad - first, windows)
    return h[pos], win_doc


# ---------------------------------------------------------------------- similarity
def _bits(x: int) -> int:
    return max(int(x - 1).bit_length(), 0) if x > 1 else 0


def jaccard_exact(hashes: np.ndarray, doc: np.ndarray, n_groups: int, group_size: int) -> np.ndarray:
    """Exact Jaccard matrices (n_groups, G, G) of the shingle sets (up to 64-bit hash collisions).

    A counting pass over a hash table of about 2 slots per shingle sets aside shingles that
    occur once in their group (they only add to a set's size). The rest are packed as
    ``(group, shingle hash, completion)`` words and sorted once: that deduplicates them and
    gives each (group, shingle) a column of the binary completion x shingle matrix ``X``. The
    intersection sizes are the block-diagonal of ``X X^T`` (scipy.sparse), over shingles
    shared by at least two completions. Work and memory grow with the number of shingles
    plus ``n_groups * G^2``.
    """
    import scipy.sparse as sp

    g = group_size
    d = n_groups * g
    bj, bg = _bits(g), _bits(n_groups)
    sizes = np.zeros(d)
    if hashes.size:
        table_bits = max(int(2 * hashes.size - 1).bit_length(), 4)
        slot_key = hashes if n_groups == 1 else hashes ^ ((doc // g).astype(np.uint64) * P64)
        slot = (slot_key >> _U(64 - table_bits)).astype(np.int64)
        single = np.bincount(slot, minlength=1 << table_bits)[slot] == 1
        sizes += np.bincount(doc[single], minlength=d)
        hashes, doc = hashes[~single], doc[~single]

    hash_bits = 64 - bj - bg  # 58 for one group of 64, 48 for 1,024 groups of 64
    group = doc // g
    packed = (hashes >> _U(64 - hash_bits)) << _U(bj)
    if bg:
        packed |= group.astype(np.uint64) << _U(64 - bg)
    packed |= (doc - group * g).astype(np.uint64)
    packed.sort()
    inter = np.zeros((n_groups, g, g))
    if packed.size:
        keep = np.empty(packed.size, dtype=bool)
        keep[0] = True
        np.not_equal(packed[1:], packed[:-1], out=keep[1:])
        packed = packed[keep]  # unique (group, shingle, completion)
        col_key = packed >> _U(bj)
        doc_u = (packed & _U((1 << bj) - 1)).astype(np.int64)
        if bg:
            doc_u += (packed >> _U(64 - bg)).astype(np.int64) * g
        sizes += np.bincount(doc_u, minlength=d)
        new_col = np.empty(packed.size, dtype=bool)
        new_col[0] = True
        np.not_equal(col_key[1:], col_key[:-1], out=new_col[1:])
        col_start = np.flatnonzero(new_col)
        counts = np.diff(np.append(col_start, packed.size))
        shared = counts >= 2
        if shared.any():
            indices = doc_u[np.repeat(shared, counts)]
            c2 = counts[shared]
            indptr = np.zeros(c2.size + 1, dtype=np.int64)
            np.cumsum(c2, out=indptr[1:])
            x = sp.csc_matrix((np.ones(indices.size), indices, indptr), shape=(d, c2.size))
            prod = (x @ x.T).tocoo()
            r, c = prod.row.astype(np.int64), prod.col.astype(np.int64)
            inter[r // g, r % g, c % g] = prod.data
    sizes = sizes.reshape(n_groups, g)
    idx = np.arange(g)
    inter[:, idx, idx] = sizes
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def jaccard_minhash(hashes: np.ndarray, doc: np.ndarray, n_groups: int, group_size: int, num_perm: int) -> np.ndarray:
    """Jaccard estimates (n_groups, G, G) by one-permutation MinHash (Li, Owen & Zhang, NeurIPS 2012).

    The shingle hashes come from :func:`shingle_hashes` (seeded: the seed picks the random
    permutation). The top 32 bits of a hash choose one of ``num_perm`` bins; each completion
    keeps its minimum hash per bin. ``J(A, B) ~ (# bins where both minima are set and equal) /
    (num_perm - # bins empty in both)``. Two empty completions have similarity 1.
    """
    g = group_size
    d = n_groups * g
    h = hashes
    if num_perm & (num_perm - 1) == 0:  # a power of two: the same bins by one shift
        bins = h >> _U(64 - num_perm.bit_length() + 1)
    else:
        bins = ((h >> _U(32)) * _U(num_perm)) >> _U(32)
    empty = np.iinfo(np.uint64).max
    sig = np.full(d * num_perm, empty, dtype=np.uint64)
    key = doc * num_perm
    key += bins.view(np.int64)  # bins < num_perm: the same bits
    np.minimum.at(sig, key, h)
    sig = sig.reshape(n_groups, g, num_perm)
    out = np.empty((n_groups, g, g))
    chunk = max(1, (1 << 22) // max(g * g * num_perm, 1))  # bounds the (chunk, G, G, bins) temporaries
    for s in range(0, n_groups, chunk):
        a = sig[s : s + chunk]
        set_a = a != empty
        equal = a[:, :, None, :] == a[:, None, :, :]
        matches = (equal & set_a[:, :, None, :]).sum(axis=3)
        either = (set_a[:, :, None, :] | set_a[:, None, :, :]).sum(axis=3)
        out[s : s + chunk] = np.divide(matches, either, out=np.ones(matches.shape), where=either > 0)
    return out


def similarity_matrices(
    groups: Groups,
    ngram: int = 3,
    similarity: str = "auto",
    unit: str = "auto",
    num_perm: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """Pairwise shingle similarity within each group: float array (n_groups, G, G), 1 on the diagonal."""
    values, lengths, _ = completion_sequences(groups, unit)
    return sequence_similarity(values, lengths, groups.shape, ngram, similarity, num_perm, seed)


def sequence_similarity(
    values: np.ndarray,
    lengths: np.ndarray,
    shape: tuple[int, int],
    ngram: int = 3,
    similarity: str = "auto",
    num_perm: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """:func:`similarity_matrices` from the symbol sequences of ``shape[0] * shape[1]`` completions
    (row-major, as :func:`completion_sequences` returns them): shingles, then exact or MinHash Jaccard."""
    hashes, doc = shingle_hashes(values, lengths, ngram, seed)
    return shingle_similarity(hashes, doc, shape, similarity, num_perm)


def shingle_similarity(
    hashes: np.ndarray, doc: np.ndarray, shape: tuple[int, int], similarity: str = "auto", num_perm: int = 128
) -> np.ndarray:
    """Jaccard matrices (n, G, G) from shingle hashes and the completion (row-major) each belongs to:
    exact while completions average at most :data:`AUTO_EXACT_MAX_SHINGLES` shingles (``"auto"``), else MinHash."""
    n, g = shape
    if similarity == "auto":
        similarity = "jaccard" if hashes.size <= AUTO_EXACT_MAX_SHINGLES * max(n * g, 1) else "minhash"
    if similarity == "jaccard":
        return jaccard_exact(hashes, doc, n, g)
    return jaccard_minhash(hashes, doc, n, g, num_perm)


# ---------------------------------------------------------------------- greedy selection
def greedy_order(
    sim: np.ndarray,
    objective: str = "maxmin",
    bonus: np.ndarray | None = None,
    tier: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy insertion order (n_groups, G) of every completion of every group.

    ``sim``: similarities in [0, 1], shape (n, G, G), symmetric with 1 on the diagonal.
    Each step adds, in every group at once, the unselected completion with the largest

        tier * gap + bonus + gain

    where ``gain`` is, for the first pick, the mean similarity to the group (the medoid is
    picked first, for both objectives); afterwards

    * ``maxmin``: ``1 - max_{s in S} sim(c, s)``, the distance to the nearest selected one;
    * ``facility_location``: ``(1/G) sum_i max(0, sim(i, c) - max_{s in S} sim(i, s))``, the
      increase of ``F(S) = (1/G) sum_i max_{s in S} sim(i, s)``.

    ``bonus`` (n, G) >= 0 is added to every step's gain (quality term); ``tier`` (n, G) of
    small non-negative ints makes higher tiers go strictly first (``gap`` exceeds any gain).
    Equal values go to the lowest index.
    """
    n, g, _ = sim.shape
    bonus = np.zeros((n, g)) if bonus is None else bonus
    gap = 2.0 + 2.0 * float(bonus.max(initial=0.0))
    base = bonus if tier is None else bonus + gap * tier
    rows = np.arange(n)
    order = np.empty((n, g), dtype=np.int64)
    available = np.ones((n, g), dtype=bool)
    cur = np.zeros((n, g))  # max similarity to the selected set, per completion
    gain = sim.mean(axis=1)
    for t in range(g):
        if t:
            if objective == "maxmin":
                gain = 1.0 - cur
            else:
                gain = np.maximum(sim - cur[:, :, None], 0.0).sum(axis=1) / g
        pick = np.argmax(np.where(available, base + gain, -np.inf), axis=1)
        order[:, t] = pick
        available[rows, pick] = False
        np.maximum(cur, sim[rows, pick, :], out=cur)
    return order


def order_to_scores(order: np.ndarray) -> np.ndarray:
    """Rank scores from an insertion order: the t-th pick scores ``G - t`` (first pick = G)."""
    n, g = order.shape
    scores = np.empty((n, g))
    np.put_along_axis(scores, order, np.arange(g, 0, -1, dtype=np.float64)[None, :].repeat(n, axis=0), axis=1)
    return scores


# ---------------------------------------------------------------------- the filter
class DiversityFilter(GroupFilter):
    """Keep a diverse set: greedy max-min distance or facility location on shingle Jaccard.

    Parameters
        ngram: shingle size (n-gram length, in the unit below); default 3.
        similarity: ``"jaccard"`` (exact), ``"minhash"`` (one-permutation MinHash estimate) or
            ``"auto"`` (exact while completions average at most
            :data:`AUTO_EXACT_MAX_SHINGLES` shingles, else MinHash).
        objective: ``"maxmin"`` (farthest-first: each pick maximises the Jaccard distance to
            the nearest kept one) or ``"facility_location"`` (each pick most increases how well
            the kept set covers the group). Both start at the medoid.
        reward_weight: w >= 0; adds ``w * r~`` to every greedy gain, where ``r~`` is the reward
            min-max scaled to [0, 1] within the group (0 = pure diversity).
        reward_threshold: if set, completions with ``reward >= threshold`` are all picked
            before any other (diverse among the correct ones first).
        unit: ``"auto"`` (token ids when the trainer passes ``completion_ids``, else words),
            ``"ids"``, ``"words"`` (lower-cased ``\\w+`` runs and punctuation marks) or ``"chars"``.
        num_perm: MinHash bins (>= 8); the estimate's standard error is about
            ``sqrt(J (1 - J) / num_perm)``.
        seed: seed of the MinHash hash function (the exact Jaccard does not depend on it).
    """

    name = "diversity"
    description = "Keep a diverse set: greedy max-min / facility location on n-gram Jaccard (top-k = greedy set)."

    def __init__(
        self,
        ngram: int = 3,
        similarity: str = "auto",
        objective: str = "maxmin",
        reward_weight: float = 0.0,
        reward_threshold: float | None = None,
        unit: str = "auto",
        num_perm: int = 128,
        seed: int = 0,
    ) -> None:
        self.ngram = check_int(self, "ngram", ngram, low=1, high=64)
        self.similarity = check_choice(self, "similarity", similarity, SIMILARITIES)
        self.objective = check_choice(self, "objective", objective, OBJECTIVES)
        self.reward_weight = check_number(self, "reward_weight", reward_weight, low=0)
        self.reward_threshold = check_number(self, "reward_threshold", reward_threshold, optional=True)
        self.unit = check_choice(self, "unit", unit, UNITS)
        self.num_perm = check_int(self, "num_perm", num_perm, low=8, high=65536)
        self.seed = check_int(self, "seed", seed, low=0)

    def similarities(self, groups: Groups) -> np.ndarray:
        """The (n_groups, G, G) similarity matrices this filter's greedy selection uses."""
        values, lengths, unit = completion_sequences(groups, self.unit)
        empty = lengths == 0
        if empty.any():
            first = int(np.argmax(empty))
            self.warn(
                f"{int(empty.sum())} empty completion(s) (no {unit}) in this batch (first: group "
                f"{first // groups.group_size}, completion {first % groups.group_size}); they have no shingles: "
                "similarity 1 to each other and 0 to every other completion"
            )
        return sequence_similarity(values, lengths, groups.shape, self.ngram, self.similarity, self.num_perm, self.seed)

    def score(self, groups: Groups) -> np.ndarray:
        sim = self.similarities(groups)
        valid = groups.valid
        tier = valid.astype(np.int64)  # missing rewards are picked last
        if self.reward_threshold is not None:
            tier = tier + (valid & (groups.rewards >= self.reward_threshold))
        bonus = None
        if self.reward_weight > 0:
            r = np.where(valid, groups.rewards, np.nan)
            with np.errstate(invalid="ignore"):
                lo = np.nanmin(np.where(valid.any(axis=1, keepdims=True), r, 0.0), axis=1, keepdims=True)
                hi = np.nanmax(np.where(valid.any(axis=1, keepdims=True), r, 0.0), axis=1, keepdims=True)
            span = hi - lo
            scaled = np.divide(r - lo, span, out=np.zeros_like(r), where=span > 0)
            bonus = self.reward_weight * np.where(valid, scaled, 0.0)
        return order_to_scores(greedy_order(sim, self.objective, bonus=bonus, tier=tier))


@hookimpl
def register_filters():
    return [DiversityFilter]
