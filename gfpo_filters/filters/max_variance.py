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
from gfpo_filters.selection import max_variance_mask


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
