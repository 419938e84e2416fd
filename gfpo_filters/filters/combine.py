"""Combining filters: a weighted sum of per-group-normalised scores, and a lexicographic chain.

Components are given as filter names, ``(name, {params})`` pairs, ``{"name": ..., "params": ...}``
dicts, or already-built :class:`GroupFilter` objects::

    load_filter("weighted", filters=["token_efficiency", ("diversity", {"ngram": 3})], weights=[1.0, 0.5])
    load_filter("chain", filters=[("reward", {"threshold": 1.0}), "length"])  # correct first, then shortest
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.errors import FilterStateError
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.params import check_choice
from gfpo_filters.selection import average_rank, dense_rank

NORMALIZATIONS = ("rank", "zscore", "minmax")


def build_component(spec: Any, owner: str, index: int) -> GroupFilter:
    """Resolve one component spec into a filter object."""
    from gfpo_filters.registry import load_filter  # the registry imports this module

    if isinstance(spec, GroupFilter):
        return spec
    if isinstance(spec, str):
        return load_filter(spec)
    if isinstance(spec, Mapping) and "name" in spec:
        return load_filter(spec["name"], **dict(spec.get("params") or {}))
    if isinstance(spec, Sequence) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return load_filter(spec[0], **dict(spec[1]))
    raise TypeError(
        f"filter {owner!r}: component {index} ({spec!r}) must be a filter name, (name, params), "
        "{'name': ..., 'params': ...} or a GroupFilter"
    )


def normalize_scores(scores: np.ndarray, how: str) -> np.ndarray:
    """Per-group normalisation: ``rank`` -> [0, 1] by average rank, ``zscore``, or ``minmax`` -> [0, 1].

    A group whose scores are all equal normalises to 0 everywhere.
    """
    g = scores.shape[1]
    if how == "rank":
        return average_rank(scores) / max(g - 1, 1)
    if how == "zscore":
        centred = scores - scores.mean(axis=1, keepdims=True)
        std = scores.std(axis=1, keepdims=True)
        return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    if how == "minmax":
        lo = scores.min(axis=1, keepdims=True)
        span = scores.max(axis=1, keepdims=True) - lo
        return np.divide(scores - lo, span, out=np.zeros_like(scores), where=span > 0)
    raise ValueError(f"unknown normalisation {how!r}; choose one of {NORMALIZATIONS}")


class _Combination(GroupFilter):
    def _components(self, filters: Any) -> list[GroupFilter]:
        if isinstance(filters, (str, GroupFilter)) or not isinstance(filters, Sequence) or not filters:
            raise self.param_error("filters", f"must be a non-empty list of filter specs, got {filters!r}")
        return [build_component(spec, self.name, i) for i, spec in enumerate(filters)]

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        return all(c.deterministic for c in self.components)

    def state_dict(self) -> dict[str, Any]:
        """The components' states, in order (``{}`` when none has any)."""
        states = [c.state_dict() for c in self.components]
        if not any(states):
            return {}
        return {"components": [{"name": c.name, "state": st} for c, st in zip(self.components, states)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        saved = state.get("components") if isinstance(state, Mapping) else None
        names = [c.name for c in self.components]
        got = [s.get("name") if isinstance(s, Mapping) else s for s in saved] if isinstance(saved, list) else saved
        if got != names:
            raise FilterStateError(
                f"filter {self.name!r}: the saved state is for components {got}, but this filter combines {names}"
            )
        for component, s in zip(self.components, saved):
            component.load_state_dict(s["state"])


class WeightedFilter(_Combination):
    """``score = sum_i w_i * normalise(score_i)``, each component normalised within its group.

    Normalisations: ``rank`` (default; average rank scaled to [0, 1], scale-free), ``zscore``
    (mean 0, std 1 per group), ``minmax`` ([0, 1] per group). Weights may be negative (prefer the
    opposite of that component).
    """

    name = "weighted"
    description = "Weighted sum of per-group-normalised scores of several filters."

    def __init__(self, filters: Any, weights: Sequence[float] | None = None, normalize: str = "rank") -> None:
        if isinstance(filters, Mapping):  # {"token_efficiency": 1.0, "diversity": 0.5}
            if weights is not None:
                raise self.param_error("weights", "give weights either in the filters mapping or as a list, not both")
            filters, weights = list(filters.keys()), list(filters.values())
        self.components = self._components(filters)
        self.filters = filters
        if weights is None:
            weights = [1.0] * len(self.components)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.components) or not all(np.isfinite(weights)):
            raise self.param_error(
                "weights", f"need one finite weight per filter ({len(self.components)}), got {weights!r}"
            )
        check_choice(self, "normalize", normalize, NORMALIZATIONS)
        self.weights, self.normalize = weights, normalize

    def score(self, groups: Groups) -> np.ndarray:
        total = np.zeros(groups.shape)
        for w, component in zip(self.weights, self.components):
            total += w * normalize_scores(component.score_groups(groups), self.normalize)
        return total


class ChainFilter(_Combination):
    """Lexicographic order: the first filter decides, later ones only break its ties.

    Scores are dense ranks of the combined key (1 = worst), so equal keys stay tied.
    """

    name = "chain"
    description = "Lexicographic combination: order by the first filter, break ties with the next."

    def __init__(self, filters: Any) -> None:
        self.components = self._components(filters)
        self.filters = filters

    def score(self, groups: Groups) -> np.ndarray:
        g = groups.group_size
        key = np.zeros(groups.shape)
        for component in self.components:
            # Dense ranks stay <= G, so key * (G + 1) + rank is exact and re-ranking keeps it small.
            key = dense_rank(key * (g + 1) + dense_rank(component.score_groups(groups))).astype(np.float64)
        return key


@hookimpl
def register_filters():
    return [WeightedFilter, ChainFilter]
