"""PODS max-variance down-sampling (Xu et al., arXiv 2504.13818).

Keep the ``k`` completions whose rewards have the largest variance. PODS shows an optimal
subset is always the ``j`` lowest plus the ``k - j`` highest rewards for some ``j``; so sort
each group once and scan ``j`` with prefix sums: O(G log G) per group, vectorised over the
batch.
"""

from __future__ import annotations

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.params import check_int


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


class MaxVarianceFilter(GroupFilter):
    """Score 1 for a maximum-variance subset of size k, 0 for the rest.

    ``k`` comes from the trainer's ``num_remains_in_group`` when it is passed (per group with
    adaptive k), else from the ``k`` parameter. The scores only make sense for that k: the
    top-k set for another k is not a max-variance set.
    """

    name = "max_variance"
    description = "Keep the k completions whose rewards have maximal variance (PODS down-sampling)."

    def __init__(self, k: int | None = None) -> None:
        self.k = check_int(self, "k", k, low=1, optional=True)

    def score(self, groups: Groups) -> np.ndarray:
        if groups.k is not None:
            k = groups.k
        elif self.k is not None:
            if self.k > groups.group_size:
                raise self.param_error("k", f"k={self.k} is larger than the group size G={groups.group_size}")
            k = np.full(groups.n_groups, self.k, dtype=np.int64)
        else:
            raise self.param_error(
                "k",
                "max_variance needs k: the trainer passes num_remains_in_group, "
                "or build it with load_filter('max_variance', k=...)",
            )
        return max_variance_mask(groups.rewards, groups.valid, k).astype(np.float64)


@hookimpl
def register_filters():
    return [MaxVarianceFilter]
