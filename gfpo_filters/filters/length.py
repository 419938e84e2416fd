"""Length-based filters from the GFPO paper (Shrivastava et al., arXiv 2508.09726).

Lengths come from the trainer (``completion_lengths`` or ``completion_ids``: true token
counts). Without them (TRL 1.7.1 passes only texts and rewards) the filter counts tokens with
its ``tokenizer`` parameter, else falls back to characters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.params import check_number
from gfpo_filters.pruning import EfficiencyBound, ShortestK
from gfpo_filters.selection import dense_rank


class _LengthBased(GroupFilter):
    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer

    def lengths(self, groups: Groups) -> np.ndarray:
        lengths = groups.get_lengths(self.tokenizer)
        empty = lengths == 0
        if empty.any():
            i, j = map(int, np.argwhere(empty)[0])
            self.warn(
                f"{int(empty.sum())} empty completion(s) in this batch (first: group {i}, completion {j}); "
                f"{self._empty_note}"
            )
        return lengths


class LengthFilter(_LengthBased):
    """Keep the shortest completions: ``score = -length``."""

    name = "length"
    description = "Keep the shortest completions (GFPO paper)."
    _empty_note = "they count as length 0 and rank as the shortest"

    def score(self, groups: Groups) -> np.ndarray:
        return -self.lengths(groups).astype(np.float64)

    def pruning_rule(self) -> ShortestK:
        """Exact: once k completions of a group have finished shorter than a running one can end, it is stopped."""
        return ShortestK()


class TokenEfficiencyFilter(_LengthBased):
    """Keep the most reward per token: ``score = R / max(L, 1)`` for ``R > 0`` (the paper's metric).

    Completions with ``R <= 0`` rank below every completion with ``R > 0``; among themselves,
    higher reward first and, at equal reward, **longer first**. That agrees with ``R / L`` for
    negative rewards (-1/100 > -1/10), and it decides which wrong completions enter the kept set
    and take the negative advantages: the long ones, which pushes length down (keeping the short
    wrong ones would penalise brevity). Their scores lie in (-2, -1).
    """

    name = "token_efficiency"
    description = "Keep the highest reward per token, R/|o| (GFPO paper); R <= 0 ranks below, by reward then longer."
    _empty_note = "they count as 1 token for reward/length"

    def __init__(self, tokenizer: Any = None, reward_bound: float | None = None) -> None:
        super().__init__(tokenizer)
        self.reward_bound = check_number(self, "reward_bound", reward_bound, optional=True)

    def pruning_rule(self) -> EfficiencyBound | None:
        """Exact with ``reward_bound`` (every reward at most it): a running completion of length L scores at most
        ``reward_bound / (L + 1)``. Without a bound, None (no pruning)."""
        return None if self.reward_bound is None else EfficiencyBound(self.reward_bound)

    def score(self, groups: Groups) -> np.ndarray:
        lengths = self.lengths(groups).astype(np.float64)
        r = groups.rewards
        if self.reward_bound is not None:
            above = groups.valid & (np.where(groups.valid, r, -np.inf) > self.reward_bound)
            if above.any():
                i, j = map(int, np.argwhere(above)[0])
                self.warn(
                    f"reward {r[i, j]} of group {i}, completion {j} exceeds the declared reward_bound="
                    f"{self.reward_bound} ({int(above.sum())} such reward(s)): pruning with this bound is not "
                    "exact and may have stopped a completion that would be kept; declare the largest reward given"
                )
        positive = r > 0
        efficiency = np.where(positive, r, 0.0) / np.maximum(lengths, 1.0)
        if positive.all():
            return efficiency
        # Non-positive rewards: lexicographic (reward desc, length desc), squeezed into (-2, -1).
        g = groups.group_size
        reward_rank = dense_rank(np.where(groups.valid, -r, np.inf))  # 1 = highest reward
        lmax = lengths.max() + 1.0
        below = -1.0 - (reward_rank * lmax + (lmax - 1.0 - lengths)) / ((g + 1) * lmax)
        return np.where(positive, efficiency, below)


@hookimpl
def register_filters():
    return [LengthFilter, TokenEfficiencyFilter]
