"""Measuring one filter at one k: its trainer-style calls, timed, and what its kept sets hold.

For every (filter, k) the benchmark runs the filter through its trainer-style call,
``f(group_completions=..., group_rewards=..., num_remains_in_group=k, prompts=...)``, on
real rollout groups (``--data``, the JSONL format of :mod:`gfpo_filters.rollouts`) or on a
built-in synthetic generator, keeps ``k`` of each group as the trainer does, and reports

what it keeps (over the groups it measured; see "Definitions" below)
    ``kept_length_ratio``      mean length of the kept completions / mean length of all completions
    ``kept_reward_mean``       mean reward of the kept completions (``group_reward_mean``: of all)
    ``kept_accuracy``          mean ``correct`` of the kept completions (``group_accuracy``: of all);
                               null when the data has no ``correct`` field
    ``signal_fraction``        fraction of groups whose kept set still has two different rewards
                               (a non-zero GFPO advantage somewhere); ``group_signal_fraction``: the
                               same for the full group, i.e. GRPO
    ``length_pressure_gfpo``   covariance of GFPO advantage and length over the kept rows
    ``length_pressure_grpo``   covariance of GRPO advantage and length over all rows

how fast
    ``completions_per_s`` and ``us_per_group``: from the fastest of ``--repeat`` passes over the
    data, timing only the filter calls (batches of ``--batch-groups`` groups per call).

Definitions
    A group's rewards R, lengths L (characters by default: the rollouts carry no token counts,
    and without token information a filter counts characters too), kept set S = the top k
    scores, chosen as :func:`gfpo_filters.step.gfpo_step` chooses it: ties go to the earlier
    completion, completions with a missing reward come last. Completions with a missing reward
    take no part in reward means, advantages or covariances.

    GFPO advantage   A_i = (R_i - mean_S R) / (std_S R + 1e-4) for i in S (population std), else 0.
    GRPO advantage   the same with S = the whole group.
    length pressure  Cov(A, L) = mean(A*L) - mean(A)*mean(L) over the pooled rows (kept rows of
                     every group for GFPO, all rows for GRPO). Advantages sum to 0 in each
                     group, so this equals mean(A*L): the average push of the policy gradient on
                     length, in length units. Negative = training favours shorter completions.
    length push      sum(A*L) over the rows of a group, averaged over groups (JSON only): the push
                     per prompt, k * pressure for GFPO and G * pressure for GRPO when every
                     reward is known (GFPO trains on k rows of a prompt, GRPO on G).

Groups whose rewards are all missing, and groups with fewer than k completions, are excluded
and reported (count and names), never crashed on.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gfpo_filters.base import check_scores
from gfpo_filters.bench.data import Prepared
from gfpo_filters.selection import gfpo_advantages, topk_mask
from gfpo_filters.step import has_signal

DEFAULT_REPEAT = 5
DEFAULT_BATCH_GROUPS = 32

#: The measured fields of a record, in the order the JSON lists them; null until measured.
METRICS = (
    "kept_length_ratio",
    "kept_length_mean",
    "group_length_mean",
    "kept_reward_mean",
    "group_reward_mean",
    "kept_accuracy",
    "group_accuracy",
    "signal_fraction",
    "group_signal_fraction",
    "length_pressure_gfpo",
    "length_pressure_grpo",
    "length_push_gfpo",
    "length_push_grpo",
    "completions_per_s",
    "us_per_group",
    "time_s",
)


@dataclass
class FilterSpec:
    label: str  # how the filter is named in the output and in --param
    name: str  # registry name
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        from gfpo_filters.registry import load_filter

        return load_filter(self.name, **self.params)


def measure(
    prepared: Prepared, spec: FilterSpec, k: int, repeat: int = DEFAULT_REPEAT, batch_groups: int = DEFAULT_BATCH_GROUPS
) -> dict[str, Any]:
    """One record: run ``spec`` with keep-``k`` over the prepared data.

    A filter that cannot be built or fails leaves its metrics null and says why in ``error``.
    """
    plan = plan_calls(prepared, k, batch_groups)
    record = new_record(prepared, spec, k, plan, repeat, batch_groups)
    if not plan.buckets:
        record["error"] = f"no group left to measure (every group has fewer than k={k} completions or no reward)"
        return record
    try:
        filt = spec.build()
    except Exception as e:  # noqa: BLE001 - reported in the record
        record["error"] = f"{type(e).__name__}: {e}"
        return record
    timed = time_calls(filt, plan.buckets, spec.label, repeat)
    record["warnings"] = timed.warnings
    if timed.error:
        record["error"] = timed.error
        return record

    tally = Tally()
    for bucket, scores in zip(plan.buckets, timed.scores):
        lengths, rewards, correct = prepared.stack(bucket.index)
        tally.add(lengths, rewards, correct, kept_set(scores, rewards, k))
    record.update(tally.metrics(record["n_groups"]))
    record.update(speed(timed.seconds, record["n_groups"], record["n_completions"]))
    return record


def kept_set(scores: np.ndarray, rewards: np.ndarray, k: int) -> np.ndarray:
    """The kept completions, ``(n, G)`` bool: the top ``k`` scores, missing rewards last, as the trainer keeps them."""
    return topk_mask(scores, k, valid=np.isfinite(rewards))


# ---------------------------------------------------------------------- what to call
@dataclass
class Bucket:
    """The measured groups of one size G, and the filter calls over them (keyword arguments, built once)."""

    size: int
    index: list[int]  # into the data set's groups
    calls: list[dict[str, Any]]


@dataclass
class Plan:
    buckets: list[Bucket]  # largest G first
    no_reward: list[int]  # groups excluded because every reward is missing
    too_small: list[int]  # groups excluded because they have fewer than k completions


def plan_calls(prepared: Prepared, k: int, batch_groups: int) -> Plan:
    """Exclude the groups that cannot be measured; bucket the others by size and cut them into calls."""
    groups = prepared.dataset.groups
    no_reward = set(prepared.all_missing)
    too_small = [i for i, g in enumerate(groups) if g.size < k and i not in no_reward]
    skip = no_reward | set(too_small)
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        if i not in skip:
            by_size.setdefault(g.size, []).append(i)
    buckets = [
        Bucket(
            size,
            index,
            [call_kwargs(prepared, index[a : a + batch_groups], k) for a in range(0, len(index), batch_groups)],
        )
        for size, index in sorted(by_size.items(), reverse=True)
    ]
    return Plan(buckets, sorted(no_reward), too_small)


def call_kwargs(prepared: Prepared, index: list[int], k: int) -> dict[str, Any]:
    """One call's arguments: nested Python lists, as a trainer passes them."""
    groups = prepared.dataset.groups
    kwargs: dict[str, Any] = {
        "group_completions": [list(groups[i].texts) for i in index],
        "group_rewards": [prepared.rewards[i].tolist() for i in index],
        "num_remains_in_group": k,
    }
    prompts = [groups[i].prompt for i in index]
    if any(p is not None for p in prompts):
        kwargs["prompts"] = prompts
    if prepared.pass_lengths:
        kwargs["completion_lengths"] = [prepared.lengths[i].tolist() for i in index]
    return kwargs


def new_record(
    prepared: Prepared, spec: FilterSpec, k: int, plan: Plan, repeat: int, batch_groups: int
) -> dict[str, Any]:
    """A record with everything but the measurements, which start null."""
    groups = prepared.dataset.groups
    return {
        "data": prepared.dataset.name,
        "filter": spec.label,
        "name": spec.name,
        "params": {
            p: v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v)
            for p, v in spec.params.items()
        },
        "k": k,
        "group_sizes": sorted(b.size for b in plan.buckets),
        "n_groups": sum(len(b.index) for b in plan.buckets),
        "n_completions": sum(b.size * len(b.index) for b in plan.buckets),
        "length_unit": prepared.unit,
        "excluded": {
            "all_rewards_missing": [groups[i].source for i in plan.no_reward],
            "group_smaller_than_k": [groups[i].source for i in plan.too_small],
        },
        "repeats": repeat,
        "batch_groups": batch_groups,
        "warnings": [],
        "error": None,
        **dict.fromkeys(METRICS),
    }


# ---------------------------------------------------------------------- how fast
@dataclass
class Timed:
    seconds: float  # the fastest pass: the sum of its filter calls
    scores: list[np.ndarray]  # checked scores of the first pass, one (n, G) array per bucket
    warnings: list[str]  # distinct warnings the filter raised (the first 20)
    error: str | None = None  # the exception that stopped the filter


def time_calls(filt: Any, buckets: list[Bucket], label: str, repeat: int) -> Timed:
    """Call the filter over every bucket ``repeat`` times, timing only the calls; one failure stops it."""
    best, scores, error = math.inf, [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for rep in range(repeat):
                elapsed = 0.0
                for bucket in buckets:
                    outs = []
                    for kwargs in bucket.calls:
                        t0 = time.perf_counter()
                        out = filt(**kwargs)
                        elapsed += time.perf_counter() - t0
                        if rep == 0:
                            outs.append(check_scores(out, (len(kwargs["group_completions"]), bucket.size), label))
                    if rep == 0:
                        scores.append(np.concatenate(outs, axis=0))
                best = min(best, elapsed)
        except Exception as e:  # noqa: BLE001 - one failing filter must not stop the benchmark
            error = f"{type(e).__name__}: {e}"
    distinct = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
    return Timed(best, scores, list(distinct)[:20], error)


def speed(seconds: float, n_groups: int, n_completions: int) -> dict[str, float | None]:
    return {
        "time_s": seconds,
        "completions_per_s": n_completions / seconds if seconds > 0 else None,
        "us_per_group": seconds / n_groups * 1e6,
    }


# ---------------------------------------------------------------------- what is kept
@dataclass
class Pooled:
    """A sum and its count, pooled over the groups of every bucket."""

    total: float = 0.0
    count: float = 0.0

    def add(self, values: np.ndarray, rows: np.ndarray) -> None:
        self.total += values[rows].sum()
        self.count += rows.sum()

    def mean(self) -> float | None:
        return float(self.total / self.count) if self.count else None


@dataclass
class Pressure:
    """Pooled sums for Cov(A, L) over the rows that train (A advantages, L lengths)."""

    sum_al: float = 0.0
    sum_a: float = 0.0
    sum_l: float = 0.0
    rows: float = 0.0

    def add(self, advantages: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> None:
        self.sum_al += (advantages * lengths)[rows].sum()
        self.sum_a += advantages[rows].sum()
        self.sum_l += lengths[rows].sum()
        self.rows += rows.sum()

    def cov(self) -> float | None:
        n = self.rows
        return float(self.sum_al / n - (self.sum_a / n) * (self.sum_l / n)) if n else None


@dataclass
class Tally:
    """What the kept sets hold against the whole groups, pooled over all measured groups."""

    length_kept: Pooled = field(default_factory=Pooled)
    length_all: Pooled = field(default_factory=Pooled)
    reward_kept: Pooled = field(default_factory=Pooled)
    reward_all: Pooled = field(default_factory=Pooled)
    correct_kept: Pooled = field(default_factory=Pooled)
    correct_all: Pooled = field(default_factory=Pooled)
    signal_kept: int = 0  # groups whose kept set holds two different rewards
    signal_all: int = 0  # groups that hold two different rewards
    gfpo: Pressure = field(default_factory=Pressure)
    grpo: Pressure = field(default_factory=Pressure)

    def add(self, lengths: np.ndarray, rewards: np.ndarray, correct: np.ndarray, kept: np.ndarray) -> None:
        """One bucket: ``(n, G)`` lengths, rewards and correctness (NaN where missing), and the kept mask."""
        everything = np.ones_like(kept)
        valid, known = np.isfinite(rewards), np.isfinite(correct)
        self.length_kept.add(lengths, kept)
        self.length_all.add(lengths, everything)
        self.reward_kept.add(rewards, kept & valid)
        self.reward_all.add(rewards, valid)
        self.correct_kept.add(correct, kept & known)
        self.correct_all.add(correct, known)
        self.signal_kept += int(has_signal(rewards, kept).sum())
        self.signal_all += int(has_signal(rewards, valid).sum())
        self.gfpo.add(gfpo_advantages(rewards, kept), lengths, kept & valid)
        self.grpo.add(gfpo_advantages(rewards, valid), lengths, valid)

    def metrics(self, n_groups: int) -> dict[str, float | None]:
        kept_length, group_length = self.length_kept.mean(), self.length_all.mean()
        return {
            "kept_length_ratio": kept_length / group_length if kept_length is not None and group_length else None,
            "kept_length_mean": kept_length,
            "group_length_mean": group_length,
            "kept_reward_mean": self.reward_kept.mean(),
            "group_reward_mean": self.reward_all.mean(),
            "kept_accuracy": self.correct_kept.mean(),
            "group_accuracy": self.correct_all.mean(),
            "signal_fraction": self.signal_kept / n_groups,
            "group_signal_fraction": self.signal_all / n_groups,
            "length_pressure_gfpo": self.gfpo.cov(),
            "length_pressure_grpo": self.grpo.cov(),
            "length_push_gfpo": float(self.gfpo.sum_al / n_groups),
            "length_push_grpo": float(self.grpo.sum_al / n_groups),
        }
