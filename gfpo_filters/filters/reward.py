"""Reward-only selection rules: best-of-n (``reward``) and the unbiased baseline (``random``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.errors import FilterStateError
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.params import check_int, check_number


class RewardFilter(GroupFilter):
    """Keep the highest rewards (best-of-n): ``score = R``.

    With ``threshold`` set, the score is binary: 1 where ``R >= threshold`` (correct), else 0.
    That is the natural first key of a ``chain`` ("correct first, then shortest").
    """

    name = "reward"
    description = "Keep the highest rewards (best-of-n); optional threshold makes it a 0/1 correctness key."

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = check_number(self, "threshold", threshold, optional=True)

    def score(self, groups: Groups) -> np.ndarray:
        if self.threshold is None:
            return groups.rewards.copy()
        return np.where(groups.valid, (groups.rewards >= self.threshold).astype(np.float64), np.nan)


class RandomFilter(GroupFilter):
    """Keep a uniformly random k of each group: i.i.d. uniform scores from a seeded generator.

    The generator is created from ``seed`` when the filter is built and advances with every
    call, so a run is reproducible from its seed, and every process of a multi-process run,
    calling the filter on the same batches, draws the same numbers. :meth:`state_dict` saves the
    generator, so a run resumed from a checkpoint draws what the uninterrupted run would have.
    """

    name = "random"
    description = "Keep a uniformly random subset (seeded): the unbiased random-k-of-n baseline."
    deterministic = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_int(self, "seed", seed, low=0)
        self._rng = np.random.default_rng(self.seed)

    def score(self, groups: Groups) -> np.ndarray:
        return self._rng.random(groups.shape)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (numpy's ``bit_generator.state``: plain ints and strings), so a resume draws on."""
        return {"seed": self.seed, "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "bit_generator" not in state:
            raise FilterStateError(f"filter 'random': expected a state with a 'bit_generator', got {state!r}")
        try:
            self._rng.bit_generator.state = state["bit_generator"]
        except (TypeError, ValueError, KeyError) as e:
            raise FilterStateError(f"filter 'random': the saved generator state cannot be loaded: {e}") from None


@hookimpl
def register_filters():
    return [RewardFilter, RandomFilter]
