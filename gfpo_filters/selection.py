"""Turning scores into a kept set, and kept sets into GFPO advantages.

These are the few array operations the trainer adapter, the benchmark and the combining
filters share. All of them work on whole batches, shape ``(n_groups, G)``.

Selection rule (used everywhere in this package):
    the top ``k`` scores of each group are kept; ties go to the earlier completion;
    NaN scores rank below every number, ``-inf`` included.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gfpo_filters.errors import GFPOStepWarning, GroupInputError


def k_array(k: Any, n: int) -> np.ndarray:
    """``k`` (one int, or one per group) as ``n`` ints, one per group."""
    k = np.asarray(k, dtype=np.int64)
    return np.full(n, int(k), dtype=np.int64) if k.ndim == 0 else k


def descending_order(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-group indices from best to worst: higher score first, ties by position, NaN last.

    With ``valid`` (False where the reward is missing), every valid completion comes before
    every invalid one, whatever the scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    # -s puts high scores first; NaN stays NaN and numpy sorts it last; stable keeps ties in order.
    order = np.argsort(-s, axis=1, kind="stable")
    if valid is not None:
        invalid = ~np.take_along_axis(np.asarray(valid, dtype=bool), order, axis=1)
        order = np.take_along_axis(order, np.argsort(invalid, axis=1, kind="stable"), axis=1)
    return order


def ranks(scores: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """0-based position of each completion in :func:`descending_order` (0 = best)."""
    order = descending_order(scores, valid)
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(order.shape[1])[None, :], axis=1)
    return out


def topk_mask(scores: np.ndarray, k: Any, valid: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (n_groups, G) of the kept completions.

    ``k`` is one int or one int per group (adaptive k). Deterministic: equal scores are
    resolved by position, so the same scores always give the same mask. ``valid`` as in
    :func:`descending_order`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return ranks(scores, valid) < k_array(k, scores.shape[0])[:, None]


def has_signal(rewards: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per group: do the known rewards on ``rows`` take at least two values (so some advantage is not 0)?"""
    use = np.asarray(rows, dtype=bool) & np.isfinite(rewards)
    hi = np.where(use, rewards, -np.inf).max(axis=1)
    lo = np.where(use, rewards, np.inf).min(axis=1)
    return hi > lo


def trains(advantages: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Per group: does some advantage differ from 0 (by more than ``tol``, float noise)?

    If not, the group trains on nothing (``gfpo/frac_no_signal``).
    """
    return (np.abs(np.asarray(advantages, dtype=np.float64)) > tol).any(axis=1)


def signal_swap(
    rank: np.ndarray, kept: np.ndarray, rewards: np.ndarray, prefer: np.ndarray | None = None
) -> np.ndarray:
    """Give reward variance back to kept sets that lost it: one swap per such group.

    A group is changed when its known rewards take two or more values but those of its kept set
    (of at least 2 rows) take one value, the *level*. Then the lowest-ranked kept completion is
    replaced by the candidate, a completion with a known reward other than the level, that comes
    first by ``prefer`` (lower first; ``None``: no preference) and then by ``rank`` (the filter's
    order, 0 = best). Missing rewards are never swapped in, the kept count stays the same, and
    the result depends only on the inputs (no randomness). Returns the new mask.
    """
    r = np.asarray(rewards, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    valid = np.isfinite(r)
    need = has_signal(r, valid) & ~has_signal(r, kept) & (kept.sum(axis=1) >= 2)
    if not need.any():
        return kept.copy()
    level = np.where(kept & valid, r, -np.inf).max(axis=1, keepdims=True)
    candidate = valid & ~kept & (r != level)
    key = np.zeros(r.shape) if prefer is None else np.asarray(prefer, dtype=np.float64)
    by_rank = np.argsort(rank, axis=1, kind="stable")  # best first
    keyed = np.take_along_axis(np.where(candidate, key, np.inf), by_rank, axis=1)
    add = np.take_along_axis(by_rank, np.argmin(keyed, axis=1)[:, None], axis=1)[:, 0]
    drop = np.argmax(np.where(kept, rank, -1), axis=1)
    rows = np.flatnonzero(need)
    out = kept.copy()
    out[rows, drop[rows]] = False
    out[rows, add[rows]] = True
    return out


def round_up_rows(
    kept: np.ndarray, rank: np.ndarray, rewards: np.ndarray, multiple: int, available: np.ndarray | None = None
) -> np.ndarray:
    """Keep more completions until the batch's kept count is a multiple of ``multiple``; returns the new mask.

    An engine that splits the kept rows into equal micro-batches (TRL: processes x steps per
    generation) asks for this so that it never needs padding rows. The rows added are chosen
    round by round, at most one per group per round: in each round the groups with the lowest
    mean known reward (the hardest) come first, ties by group index, and each adds its
    best-ranked (``rank``, 0 = best) completion not yet kept that has a known reward. Completions
    without a reward (advantage 0, a pass for nothing) are added only when no other is left, with
    a :class:`GFPOStepWarning`; a group never keeps more than its ``G`` completions, and never one
    outside ``available`` (default: all; an engine's failed sessions are not). Raises
    :class:`GroupInputError` when the batch has too few completions to reach the next multiple.
    """
    kept = np.asarray(kept, dtype=bool)
    if not isinstance(multiple, (int, np.integer)) or isinstance(multiple, bool) or multiple < 1:
        raise ValueError(f"row_multiple must be an int >= 1, got {multiple!r}")
    need = -int(kept.sum()) % int(multiple)
    if need == 0:
        return kept.copy()
    r = np.asarray(rewards, dtype=np.float64)
    valid = np.isfinite(r)
    free = ~kept if available is None else ~kept & np.asarray(available, dtype=bool)
    if need > free.sum():
        raise GroupInputError(
            f"row_multiple={multiple}: {int(kept.sum())} kept rows need {need} more to make a multiple of "
            f"{multiple}, but the batch ({kept.shape[0]} groups x {kept.shape[1]}) has only {int(free.sum())} "
            "rows left; use a row_multiple that divides the batch size, or a larger batch"
        )
    n, g = kept.shape
    # Tier 0: free rows with a known reward, tier 1: free rows without; round = position within the tier by rank.
    tier = np.where(valid, 0, 1)
    key = np.where(free, tier * (g + 1) + np.asarray(rank), np.iinfo(np.int64).max)
    order = np.argsort(key, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(g)[None, :], axis=1)
    in_tier = position - np.where(tier == 1, (free & valid).sum(axis=1, keepdims=True), 0)
    count = valid.sum(axis=1)
    mean = np.where(count > 0, np.where(valid, r, 0.0).sum(axis=1) / np.maximum(count, 1), np.inf)
    priority = np.empty(n, dtype=np.int64)
    priority[np.argsort(mean, kind="stable")] = np.arange(n)
    rows = np.flatnonzero(free.ravel())
    pick = rows[np.lexsort((np.repeat(priority, g)[rows], in_tier.ravel()[rows], tier.ravel()[rows]))[:need]]
    out = kept.copy()
    out.ravel()[pick] = True
    unscored = int((~valid.ravel()[pick]).sum())
    if unscored:
        warnings.warn(
            f"row_multiple={multiple}: every completion with a known reward is already kept; {unscored} of the "
            f"{need} rows added to reach a multiple of {multiple} have no reward (advantage 0, a forward and "
            "backward pass for nothing)",
            GFPOStepWarning,
            stacklevel=3,
        )
    return out


def max_variance_mask(rewards: np.ndarray, valid: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Boolean (n, G) mask of a maximum-variance subset of ``min(k, #valid)`` valid rewards per group.

    Ties between equally good splits go to the smallest number of low rewards ``j``.
    """
    n, g = rewards.shape
    m = valid.sum(axis=1)  # valid rewards per group
    kk = np.minimum(k, m)
    # Centre each group for numerical stability, push missing rewards to the end of the sort.
    mean = np.where(valid, rewards, 0.0).sum(axis=1, keepdims=True) / np.maximum(m, 1)[:, None]
    x = np.where(valid, rewards - mean, np.inf)
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    xs = np.where(np.isfinite(xs), xs, 0.0)
    p1 = np.zeros((n, g + 1))
    p2 = np.zeros((n, g + 1))
    np.cumsum(xs, axis=1, out=p1[:, 1:])
    np.cumsum(xs * xs, axis=1, out=p2[:, 1:])

    kmax = int(kk.max()) if n else 0
    j = np.arange(kmax + 1)[None, :]  # number taken from the low end
    h = kk[:, None] - j  # number taken from the high end
    ok = h >= 0
    hi_start = np.clip(m[:, None] - h, 0, g)
    take = np.take_along_axis
    mcol = m[:, None]
    s1 = p1[:, : kmax + 1] + take(p1, mcol, axis=1) - take(p1, hi_start, axis=1)
    s2 = p2[:, : kmax + 1] + take(p2, mcol, axis=1) - take(p2, hi_start, axis=1)
    size = np.maximum(kk, 1)[:, None]
    var = np.where(ok, s2 / size - (s1 / size) ** 2, -np.inf)
    best_j = np.argmax(var, axis=1)[:, None]
    best_h = kk[:, None] - best_j

    pos = np.arange(g)[None, :]
    kept_sorted = (pos < best_j) | ((pos >= mcol - best_h) & (pos < mcol))
    mask = np.zeros((n, g), dtype=bool)
    np.put_along_axis(mask, order, kept_sorted, axis=1)
    return mask


def balanced_mask(rank: np.ndarray, rewards: np.ndarray, k: Any) -> np.ndarray:
    """PODS max-variance selection of ``k`` per group, equal rewards taken in the filter's order.

    The reward values kept are those of a maximum-variance subset of the known rewards
    (:func:`max_variance_mask`, PODS); among completions with the
    same reward, the best-ranked (``rank``, 0 = best) are kept. With 0/1 rewards that is the
    filter's best ``k/2`` correct and best ``k/2`` wrong completions when the group has them.
    Groups whose known rewards are all equal keep the filter's top ``k``. Completions without a
    reward are never kept (a group that knows fewer than ``k`` rewards keeps those it knows).
    """
    r = np.asarray(rewards, dtype=np.float64)
    rank = np.asarray(rank)
    n, _ = r.shape
    k = k_array(k, n)
    valid = np.isfinite(r)
    top = (rank < k[:, None]) & valid
    mv = max_variance_mask(r, valid, k)
    # How many of each reward value the max-variance set holds, then the best-ranked that many of it.
    same = (r[:, :, None] == r[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    count = (same & mv[:, None, :]).sum(axis=2)
    ahead = (same & (rank[:, None, :] < rank[:, :, None])).sum(axis=2)
    chosen = valid & (ahead < count)
    return np.where(has_signal(r, valid)[:, None], chosen, top)


def dense_rank(x: np.ndarray) -> np.ndarray:
    """Per-row dense rank, 1 = smallest; equal values share a rank. NaN must be removed first."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    new = np.ones_like(xs, dtype=np.int64)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.cumsum(new, axis=1), axis=1)
    return out


def average_rank(x: np.ndarray) -> np.ndarray:
    """Per-row rank in 0..G-1, 0 = smallest; ties get the mean of the positions they span."""
    x = np.asarray(x, dtype=np.float64)
    n, g = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    pos = np.broadcast_to(np.arange(g), (n, g))
    starts = np.ones((n, g), dtype=bool)
    starts[:, 1:] = xs[:, 1:] != xs[:, :-1]
    ends = np.ones((n, g), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, g - 1)[:, ::-1], axis=1)[:, ::-1]
    out = np.empty((n, g), dtype=np.float64)
    np.put_along_axis(out, order, (first + last) / 2.0, axis=1)
    return out


def gfpo_advantages(
    rewards: np.ndarray,
    kept: np.ndarray,
    scale: str = "group",
    eps: float = 1e-4,
    baseline: np.ndarray | None = None,
) -> np.ndarray:
    """GFPO advantages (paper, Eq. 1): standardise rewards over the kept set S of each group.

    ``A_i = (R_i - mean_S R) / (std_S R + eps)`` for i in S, 0 outside S. ``std`` is the
    population standard deviation over S (divide by |S|), as in the paper. Completions with a
    missing (NaN) reward take no part in mean or std and get advantage 0.

    ``scale``: ``"group"`` (paper), ``"batch"`` (one std over all kept rewards of the batch)
    or ``"none"`` (mean-centred only); the same choices as TRL's ``scale_rewards``.
    ``baseline``: a mask of the rows mean and std are taken over instead of S (e.g. every row:
    the whole group's baseline, applied to the kept rows only).
    """
    r = np.asarray(rewards, dtype=np.float64)
    valid = np.isfinite(r)
    use = np.asarray(kept, dtype=bool) & valid
    stats = use if baseline is None else np.asarray(baseline, dtype=bool) & valid
    count = stats.sum(axis=1, keepdims=True)
    mean = np.where(stats, r, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
    centred = np.where(use, r - mean, 0.0)
    if scale == "group":
        spread = np.where(stats, r - mean, 0.0)
        std = np.sqrt((spread**2).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    elif scale == "batch":
        std = np.full_like(mean, r[stats].std() if stats.any() else 0.0)
    elif scale == "none":
        return centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred / (std + eps)


def normalize_then_sum(per_func: np.ndarray, kept: np.ndarray, weights: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """GFPO advantages for ``multi_objective_aggregation="normalize_then_sum"``: TRL's recipe over the kept set.

    ``per_func`` is ``(n_groups, G, n_funcs)`` (NaN where a function gave no reward), ``kept`` ``(n_groups, G)``.
    Each reward function is standardised over the kept completions of each group (population std), the results are
    summed with the reward weights, and the sums are standardised over all kept completions of the batch. Rejected
    completions, and those no function scored, get 0.
    """
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: a function that scored no kept row
        x = np.where(kept[..., None], per_func, np.nan)
        z = (x - np.nanmean(x, axis=1, keepdims=True)) / (np.nanstd(x, axis=1, keepdims=True) + eps)
        summed = np.nansum(z * weights, axis=2)
        scored = kept & ~np.isnan(x).all(axis=2)
        values = summed[scored]
        if values.size == 0:
            return np.zeros(kept.shape)
        advantages = (summed - values.mean()) / (values.std() + eps)
    return np.where(scored, advantages, 0.0)


def typical_mask(rank: np.ndarray, rewards: np.ndarray, lengths: np.ndarray, k: Any) -> np.ndarray:
    """Keep the filter's best high-reward completions and a length-typical contrast: ``k`` per group.

    A group's completions split at the mean of its known rewards into *high* (above it) and *low*
    (at or below it; with 0/1 rewards: correct and wrong). The kept set is the ``ceil(k/2)``
    best-ranked high completions (``rank``, 0 = best: the filter chooses which are reinforced) and
    the ``floor(k/2)`` low completions whose length is nearest the median length of the group's low
    ones (ties in the filter's order): a length-typical sample of what is pushed down, so the
    contrast does not pair short high completions with the longest low ones. When one side has too
    few, the other fills in (high in the filter's order, low by the same nearness); missing rewards
    are never kept (a group that knows fewer than ``k`` rewards keeps those it knows).
    Groups whose known rewards are all equal keep the filter's top ``k``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    rank = np.asarray(rank)
    length = np.asarray(lengths, dtype=np.float64)
    n, g = r.shape
    k = k_array(k, n)
    valid = np.isfinite(r)
    mean = np.where(valid, r, 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    high = valid & (r > mean[:, None])
    low = valid & ~high
    n_high = np.minimum(high.sum(axis=1), np.maximum(k - low.sum(axis=1), (k + 1) // 2))
    # Median length of the low completions: the middle of their sorted lengths (inf pads the rest).
    m = low.sum(axis=1)
    sorted_len = np.sort(np.where(low, length, np.inf), axis=1)
    lo_mid = np.take_along_axis(sorted_len, np.maximum(m - 1, 0)[:, None] // 2, axis=1)[:, 0]
    hi_mid = np.take_along_axis(sorted_len, (m // 2)[:, None].clip(max=g - 1), axis=1)[:, 0]
    median = np.where(m > 0, (lo_mid + hi_mid) / 2, 0.0)
    # Order within each side: high by the filter's rank; low by distance to the median, then rank.
    nearness = dense_rank(np.where(low, np.abs(length - median[:, None]), np.inf)) * g + rank
    key = np.where(high, rank, np.where(low, nearness, np.inf)).astype(np.float64)
    high_rank = ranks(np.where(high, -key, np.nan))
    low_rank = ranks(np.where(low, -key, np.nan))
    chosen = (high & (high_rank < n_high[:, None])) | (low & (low_rank < (k - n_high)[:, None]))
    return np.where(has_signal(r, valid)[:, None], chosen, (rank < k[:, None]) & valid)
