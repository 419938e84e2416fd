"""Pruning during generation, engine-neutral: which running completions a filter can no longer keep.

GFPO samples G completions per prompt and keeps the top k by a filter's score. For some filters the
completions that can no longer enter the top k are known while the group is still being generated:
once k completions of a group have finished, no running one can be kept by ``length``. Stopping
those rows saves their remaining decode steps and changes nothing that is trained.

The state of a batch during decoding, arrays of shape ``(n_groups, G)``:

* ``finished``: the completion has ended (end-of-sequence token or the length cap); its length is final.
* ``lengths``: a finished completion's final token count (its end-of-sequence token included, as the
  trainer counts it); a running completion's tokens so far, none of them an end-of-sequence token.
* ``rewards``: a finished completion's reward where the engine has scored it, NaN where unknown (always
  NaN for running rows).
* ``k``: ``(n_groups,)`` completions kept per group.

Conventions every rule here relies on (docs/pruning.md):

1. A running completion writes at least one more token, so its final length is at least ``lengths + 1``.
   (An engine marks a row that reached the length cap as finished.)
2. Every finished completion gets a reward: it is a candidate of the selection. (A reward function
   that returns None for a finished completion makes it drop out; an exact rule may then have pruned a
   row that would have been kept in its place.)
3. The selection is the step's (:func:`gfpo_filters.step.select` with ``keep_signal="off"``): the top k
   scores of the completions with a reward, ties to the earlier completion index.

A rule's ``prune(...)`` returns the running rows that can no longer be kept. A pruned row gets no
reward (NaN), so the step never keeps it. **Exact** rules prune only rows whose unpruned rank is k or
worse, whatever the running rows still write, so the kept set and its advantages are those of the
unpruned run on the same samples: removing rows ranked below the top k moves no row into or out of it.
**Approximate** rules may change the selection; their effect is measured (docs/pruning.md).

A filter opts in through :meth:`gfpo_filters.GroupFilter.pruning_rule`; :func:`plan_pruning` decides,
from the filter and the step's settings, which rule a run uses (or none, and why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

EXACT, APPROXIMATE, OFF = "exact", "approximate", "off"
#: What a run may ask for: ``auto`` prunes where pruning is exact and is off elsewhere; ``exact`` is the same
#: but an error where pruning cannot be exact; ``approximate`` uses the filter's exact rule where there is one
#: and :class:`FirstFinished` elsewhere; ``off`` never prunes.
MODES = ("auto", "exact", "approximate", "off")


def _check_state(
    finished: Any, lengths: Any, rewards: Any, k: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    finished = np.asarray(finished, dtype=bool)
    if finished.ndim != 2:
        raise ValueError(f"pruning: finished must have shape (n_groups, G), got {finished.shape}")
    lengths = np.asarray(lengths)
    rewards = np.full(finished.shape, np.nan) if rewards is None else np.asarray(rewards, dtype=np.float64)
    for name, value in (("lengths", lengths), ("rewards", rewards)):
        if value.shape != finished.shape:
            raise ValueError(f"pruning: {name} have shape {value.shape}; expected {finished.shape} like finished")
    if (lengths < 0).any():
        i, j = map(int, np.argwhere(lengths < 0)[0])
        raise ValueError(f"pruning: negative length {lengths[i, j]} for group {i}, completion {j}")
    k = np.asarray(k, dtype=np.int64)
    k = np.full(finished.shape[0], int(k), dtype=np.int64) if k.ndim == 0 else k
    if k.shape != (finished.shape[0],):
        raise ValueError(f"pruning: k must be one int or one per group ({finished.shape[0]}), got shape {k.shape}")
    return finished, lengths.astype(np.float64), rewards, k


class PruneRule:
    """A rule naming the running completions that can no longer be kept.

    ``exactness`` is :data:`EXACT` (never prunes a row the unpruned selection keeps, under the module's
    conventions; the conformance suite checks it) or :data:`APPROXIMATE`. ``needs_rewards``: the rule
    reads finished rows' rewards, so an engine must score completions as they finish (else it never prunes).
    """

    name: ClassVar[str] = ""
    exactness: ClassVar[str] = EXACT
    needs_rewards: ClassVar[bool] = False

    def prune(self, finished: np.ndarray, lengths: np.ndarray, rewards: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Boolean ``(n_groups, G)``: True for running rows that can no longer be kept. Inputs are checked."""
        raise NotImplementedError(f"{type(self).__name__} must implement prune(finished, lengths, rewards, k)")

    def __call__(self, finished: Any, lengths: Any, rewards: Any = None, k: Any = 1) -> np.ndarray:
        finished, lengths, rewards, k = _check_state(finished, lengths, rewards, k)
        out = np.asarray(self.prune(finished, lengths, rewards, k), dtype=bool)
        if out.shape != finished.shape:
            raise ValueError(f"pruning rule {self!r} returned shape {out.shape}; expected {finished.shape}")
        return out & ~finished  # a finished row is a candidate, never pruned

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ScoreBound(PruneRule):
    """An exact rule for filters that score each completion on its own (no group statistics).

    A subclass gives each finished row its score (:meth:`finished_scores`, ``-inf`` where it does not
    count yet, e.g. an unknown reward) and each running row the highest score it can still reach
    (:meth:`running_bounds`). Finished row i surely ranks ahead of running row j when
    ``s_i > b_j``, or ``s_i == b_j`` and ``i < j`` (ties go to the earlier completion). A running row
    with at least k such rows ahead of it has rank >= k whatever it writes: it is pruned.
    """

    def finished_scores(self, lengths: np.ndarray, rewards: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def running_bounds(self, lengths: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prune(self, finished: np.ndarray, lengths: np.ndarray, rewards: np.ndarray, k: np.ndarray) -> np.ndarray:
        s = np.where(finished, self.finished_scores(lengths, rewards), -np.inf)  # (n, G) over i
        b = self.running_bounds(lengths)  # (n, G) over j
        g = finished.shape[1]
        earlier = np.arange(g)[:, None] < np.arange(g)[None, :]  # [i, j]: i < j
        ahead = (s[:, :, None] > b[:, None, :]) | ((s[:, :, None] == b[:, None, :]) & earlier[None])
        return ~finished & (ahead.sum(axis=1) >= k[:, None])


class ShortestK(ScoreBound):
    """``length`` (score ``-L``): a running row ends with at least ``L + 1`` tokens, so a finished row of
    length ``< L + 1`` (or ``== L + 1`` and earlier) ranks ahead of it. Exact; needs no reward."""

    name = "shortest_k"

    def finished_scores(self, lengths: np.ndarray, rewards: np.ndarray) -> np.ndarray:
        return -lengths

    def running_bounds(self, lengths: np.ndarray) -> np.ndarray:
        return -(lengths + 1.0)


class EfficiencyBound(ScoreBound):
    """``token_efficiency`` (score ``R / max(L, 1)`` for ``R > 0``, below every such score for ``R <= 0``)
    with rewards at most ``reward_bound``: a running row scores at most ``reward_bound / (L + 1)``.

    A finished row counts once its reward is known and positive. Exact as long as every reward is at
    most ``reward_bound`` (the filter refuses a batch with a larger one); with ``reward_bound <= 0``
    nothing is pruned (among non-positive rewards the filter prefers longer completions).
    Floating point: ``R / L`` is correctly rounded, so ``R <= r_max`` and ``L >= L_j + 1`` give
    ``fl(R / L) <= fl(r_max / (L_j + 1))``, and the comparison is exact.
    """

    name = "efficiency_bound"
    needs_rewards = True

    def __init__(self, reward_bound: float) -> None:
        self.reward_bound = float(reward_bound)

    def finished_scores(self, lengths: np.ndarray, rewards: np.ndarray) -> np.ndarray:
        positive = np.isfinite(rewards) & (rewards > 0)
        return np.where(positive, np.where(positive, rewards, 0.0) / np.maximum(lengths, 1.0), -np.inf)

    def running_bounds(self, lengths: np.ndarray) -> np.ndarray:
        if self.reward_bound <= 0:
            return np.full(lengths.shape, np.inf)
        return self.reward_bound / (lengths + 1.0)

    def __repr__(self) -> str:
        return f"EfficiencyBound(reward_bound={self.reward_bound!r})"


class FirstFinished(PruneRule):
    """Approximate, for any filter: once ``max(m, k)`` completions of a group have finished, stop the rest
    and select among the finished ones. Under batched decoding the first to finish are the shortest, so
    this adds a bias to short completions to whatever the filter prefers; docs/pruning.md measures it."""

    name = "first_finished"
    exactness = APPROXIMATE

    def __init__(self, m: int) -> None:
        if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
            raise ValueError(f"FirstFinished: m must be an int >= 1 (completions finished per group), got {m!r}")
        self.m = int(m)

    def prune(self, finished: np.ndarray, lengths: np.ndarray, rewards: np.ndarray, k: np.ndarray) -> np.ndarray:
        enough = finished.sum(axis=1) >= np.maximum(self.m, k)
        return ~finished & enough[:, None]

    def __repr__(self) -> str:
        return f"FirstFinished(m={self.m})"


@dataclass(frozen=True)
class PruningPlan:
    """What a run prunes with: ``rule`` (None: no pruning), its ``exactness`` and, when off, the ``reason``."""

    rule: PruneRule | None
    exactness: str
    reason: str = ""


def plan_pruning(
    filter_fn: Any,
    mode: str = "auto",
    *,
    keep_signal: str = "off",
    adaptive: bool = False,
    first_m: int | None = None,
    not_exact: str = "",
) -> PruningPlan:
    """The rule a run uses, from the filter, the step's settings and ``mode`` (one of :data:`MODES`).

    Pruning is exact only with the filter's own rule (:meth:`GroupFilter.pruning_rule`), ``keep_signal``
    off (every other mode reads rewards or lengths of rows outside the top k), no adaptive k (k follows
    the whole group's mean reward) and nothing the engine reports in ``not_exact`` (e.g. rounding the
    kept rows up to a multiple, which may add the next-ranked row). ``first_m``: the ``m`` of the
    approximate rule (default: k, given at run time, so ``FirstFinished`` is built with ``first_m`` or 1
    and selects among at least k finished rows).
    """
    if mode not in MODES:
        raise ValueError(f"gfpo pruning mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return PruningPlan(None, OFF, "pruning is off (asked for)")
    rule = getattr(filter_fn, "pruning_rule", None)
    rule = rule() if callable(rule) else None
    reasons = []
    if rule is None:
        label = getattr(filter_fn, "name", None) or type(filter_fn).__name__
        reasons.append(f"filter {label!r} declares no exact pruning rule (its score needs the whole group)")
    if keep_signal != "off":
        reasons.append(f"keep_signal={keep_signal!r} reads completions outside the filter's top k")
    if adaptive:
        reasons.append("adaptive k depends on the whole group's mean reward")
    if not_exact:
        reasons.append(not_exact)
    if rule is not None and rule.exactness != EXACT:
        reasons.append(f"the filter's rule {rule!r} is {rule.exactness}")
    if not reasons:
        return PruningPlan(rule, EXACT)
    reason = "; ".join(reasons)
    if mode == "exact":
        raise ValueError(f"pruning cannot be exact here: {reason}. Use mode 'auto' (off here) or 'approximate'")
    if mode == "approximate":
        return PruningPlan(FirstFinished(first_m or 1), APPROXIMATE, reason)
    return PruningPlan(None, OFF, reason)


@dataclass
class Simulation:
    """:func:`simulate`'s result: what pruning stopped and what decoding cost, with and without it."""

    pruned: np.ndarray  # (n, G) bool
    pruned_lengths: np.ndarray  # (n, G) tokens a pruned row had written when stopped (its final length elsewhere)
    decode_steps: int  # the batch's decode steps with pruning (batched decoding ends when every row has stopped)
    decode_steps_unpruned: int
    generated_tokens: int  # tokens written with pruning
    generated_tokens_unpruned: int


def simulate(rule: PruneRule | None, lengths: Any, rewards: Any, k: Any, start: Any = None) -> Simulation:
    """Replay decoding of completions with final ``lengths`` (n, G) and apply ``rule`` after every step.

    Row j starts writing at step ``start[j] + 1`` (default 0 for every row: lockstep batched decoding, as
    transformers ``generate`` does; different starts replay an engine that admits requests over time). At
    each step every started, running row writes one token; a row that reaches its final length finishes
    (its reward, from ``rewards``, becomes known when the rule reads rewards). The rule then names rows to
    stop. The replay ends when no row is running. The conformance suite and docs/pruning.md use it.
    """
    final = np.asarray(lengths, dtype=np.int64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if (final < 1).any():
        raise ValueError("simulate: every completion has at least one token (its end-of-sequence token)")
    start = np.zeros(final.shape, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64)
    pruned = np.zeros(final.shape, dtype=bool)
    stop = final.copy()
    steps = 0
    for t in range(1, int((start + final).max()) + 1):
        steps = t  # some row was running: step t is decoded
        written = np.clip(t - start, 0, final)
        finished = written >= final
        if rule is not None:
            known = np.where(finished, rewards, np.nan) if rule.needs_rewards else np.full(final.shape, np.nan)
            now = rule(finished, np.where(pruned, stop, written), known, k) & ~pruned
            pruned |= now
            stop = np.where(now, written, stop)
        if not (~finished & ~pruned).any():
            break
    return Simulation(
        pruned=pruned,
        pruned_lengths=stop,
        decode_steps=steps,
        decode_steps_unpruned=int((start + final).max()),
        generated_tokens=int(stop.sum()),
        generated_tokens_unpruned=int(final.sum()),
    )
