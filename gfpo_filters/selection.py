"""Turning scores into a kept set, and kept sets into GFPO advantages.

These are the few array operations the trainer adapter, the benchmark and the combining
filters share. All of them work on whole batches, shape ``(n_groups, G)``.

Selection rule (used everywhere in this package):
    the top ``k`` scores of each group are kept; ties go to the earlier completion;
    NaN scores rank below every number, ``-inf`` included.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_k(k: Any, n: int) -> np.ndarray:
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
    return ranks(scores, valid) < _as_k(k, scores.shape[0])[:, None]


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


def gfpo_advantages(rewards: np.ndarray, kept: np.ndarray, scale: str = "group", eps: float = 1e-4) -> np.ndarray:
    """GFPO advantages (paper, Eq. 1): standardise rewards over the kept set S of each group.

    ``A_i = (R_i - mean_S R) / (std_S R + eps)`` for i in S, 0 outside S. ``std`` is the
    population standard deviation over S (divide by |S|), as in the paper. Completions with a
    missing (NaN) reward take no part in mean or std and get advantage 0.

    ``scale``: ``"group"`` (paper), ``"batch"`` (one std over all kept rewards of the batch)
    or ``"none"`` (mean-centred only); the same choices as TRL's ``scale_rewards``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    use = np.asarray(kept, dtype=bool) & np.isfinite(r)
    count = use.sum(axis=1, keepdims=True)
    r0 = np.where(use, r, 0.0)
    mean = r0.sum(axis=1, keepdims=True) / np.maximum(count, 1)
    centred = np.where(use, r - mean, 0.0)
    if scale == "group":
        std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    elif scale == "batch":
        std = np.full_like(mean, r[use].std() if use.any() else 0.0)
    elif scale == "none":
        return centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred / (std + eps)
