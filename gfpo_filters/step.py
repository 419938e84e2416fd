"""The GFPO step, engine-neutral: from a batch of groups to the kept set and its advantages.

Every engine adapter (TRL's GRPOTrainer, verl's replay buffer) calls :func:`gfpo_step` once
per batch with the groups it gathered, and only translates batches in and out::

    result = gfpo_step(filter_fn, completions=..., rewards=R, lengths=L, k=4)
    result.kept         # (n_groups, G) bool: the top k of each group
    result.advantages   # (n_groups, G): rewards standardised over the kept set, 0 elsewhere
    result.metrics      # the ``gfpo/*`` numbers to log

The step:

1. chooses k per group (one k, or Adaptive Difficulty GFPO's k from the group's mean reward),
2. calls the filter once on all groups, with token ids, lengths, prompts and k where it takes them,
3. checks the scores (shape, numbers) and, on many processes, lets the engine make them identical
   everywhere (``sync_scores``: e.g. broadcast process 0's),
4. keeps the top k of each group with a known reward (ties to the earlier completion; NaN
   scores last; a completion without a reward is never kept, so a group may keep fewer than k),
5. optionally keeps the learning signal (``keep_signal``, see :data:`KEEP_SIGNAL`): a kept set
   whose rewards are all equal, in a group whose rewards are not, gets no gradient,
6. optionally keeps more rows until the batch's kept count is a multiple of ``row_multiple`` (so an
   engine can split it into equal micro-batches without padding rows), and
7. standardises rewards over the kept set (population std, the paper's Eq. 1; with
   ``keep_signal="group_baseline"``, mean and std of the whole group).

Rewards are one float per completion, NaN where a completion could not be scored.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gfpo_filters.adaptive import BUCKETS, AdaptiveK
from gfpo_filters.base import GroupFilter, check_scores
from gfpo_filters.errors import FilterStateError, FilterStateWarning, GFPOStepWarning, GroupInputError
from gfpo_filters.registry import load_filter
from gfpo_filters.selection import (
    balanced_mask,
    gfpo_advantages,
    has_signal,
    k_array,
    ranks,
    round_up_rows,
    signal_swap,
    trains,
    typical_mask,
)

#: Keyword arguments a filter may take besides ``group_completions`` and ``group_rewards``.
FILTER_KWARGS = ("completion_ids", "completion_lengths", "prompts", "num_remains_in_group")

#: A group filter: a registered filter object or any callable with the ``group_filter_func`` signature.
FilterFn = Callable[..., Any]

#: ``keep_signal`` modes: what the step does about kept sets without reward variance (docs/keep_signal.md).
KEEP_SIGNAL = {
    "off": "the paper: the filter's top k, advantages over them",
    "swap": "swap the lowest-ranked kept completion for the filter's best of another reward level",
    "swap_long": "as swap, choosing the longest of a lower level (the shortest of a higher one)",
    "group_baseline": "the filter's top k, advantages with the whole group's mean and std",
    "balanced": "PODS max-variance reward values, equal rewards in the filter's order",
    "typical": "the filter's best k/2 above the mean reward; the k/2 at or below it nearest their median length",
}
#: What ``keep_signal=True`` means: ``"typical"``, the one mode that learns on every task of benchmarks/effect.py
#: without falling below its start (``"swap"``, the default before, collapses on ``prompt_letter``; docs/effect.md).
KEEP_SIGNAL_DEFAULT = "typical"


def keep_signal_mode(keep_signal: bool | str | None) -> str:
    """The mode name of a ``keep_signal`` setting: False/None -> "off", True -> the default mode.

    The strings "false" and "true" (any case, as a command line passes them) mean False and True.
    """
    if isinstance(keep_signal, str) and keep_signal.lower() in ("true", "false"):
        keep_signal = keep_signal.lower() == "true"
    if keep_signal is None or keep_signal is False:
        return "off"
    if keep_signal is True:
        return KEEP_SIGNAL_DEFAULT
    if keep_signal not in KEEP_SIGNAL:
        raise ValueError(f"keep_signal must be True, False or one of {sorted(KEEP_SIGNAL)}, got {keep_signal!r}")
    return keep_signal


def resolve_filter(group_filter: Any, params: dict[str, Any] | None = None) -> FilterFn | None:
    """A filter object from a registered name (with ``params``) or any callable, returned as is."""
    if group_filter is None or callable(group_filter):
        if params:
            raise ValueError(f"filter parameters {sorted(params)} need a filter name, not a {type(group_filter)}")
        return group_filter
    if isinstance(group_filter, str):
        return load_filter(group_filter, **(params or {}))
    raise TypeError(f"a group filter must be a callable or a registered filter name, got {type(group_filter).__name__}")


def filter_name(f: Any) -> str:
    """How errors and logs name a filter: its registered name, else its qualified name."""
    if isinstance(f, GroupFilter):
        return f.name
    return getattr(f, "__qualname__", None) or type(f).__name__


def accepted_kwargs(f: FilterFn) -> tuple[str, ...]:
    """Which of :data:`FILTER_KWARGS` the callable takes (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return ()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return FILTER_KWARGS
    names = {p.name for p in params}
    return tuple(k for k in FILTER_KWARGS if k in names)


def filter_state(filter_fn: FilterFn | None, adaptive: AdaptiveK | None = None) -> dict[str, Any]:
    """Everything a resumed run needs to keep the rows an uninterrupted run would keep; JSON-serialisable.

    ``{"filter": name, "filter_state": filter_fn.state_dict(), "adaptive": adaptive.state_dict()}``:
    the filter's own state (:meth:`GroupFilter.state_dict`; a plain callable's ``state_dict()`` if it
    has one, else ``{}``) and Adaptive Difficulty GFPO's window (None without adaptive k). Engine
    adapters save it with their checkpoints and give it back to :func:`load_filter_state`.
    """
    state = _state_of(filter_fn)
    try:
        json.dumps(state)
    except (TypeError, ValueError) as e:
        raise FilterStateError(
            f"filter {filter_name(filter_fn)!r}: state_dict() must return a JSON-serialisable dict ({e})"
        ) from None
    return {
        "filter": None if filter_fn is None else filter_name(filter_fn),
        "filter_state": state,
        "adaptive": None if adaptive is None else adaptive.state_dict(),
    }


def load_filter_state(filter_fn: FilterFn | None, adaptive: AdaptiveK | None, state: dict[str, Any] | None) -> None:
    """Restore what :func:`filter_state` saved into this run's filter and adaptive k.

    Raises :class:`FilterStateError` when the state belongs to another filter (another name, or a
    state the filter refuses, e.g. ``learned`` with another model). Warns
    (:class:`FilterStateWarning`) when the checkpoint lacks state this run needs (a stateful filter,
    the adaptive-k window): that part starts afresh, and the resumed run may keep other rows than an
    uninterrupted one would. A state saved before filters had one (``{"adaptive": ...}`` alone) loads.
    """
    state = dict(state or {})
    name = None if filter_fn is None else filter_name(filter_fn)
    saved_name = state.get("filter")
    if saved_name is not None and name is not None and saved_name != name:
        raise FilterStateError(
            f"the checkpoint's filter state belongs to filter {saved_name!r}, but this run uses {name!r}: "
            "resume with the same filter, or start a new run"
        )
    saved = state.get("filter_state")
    current = _state_of(filter_fn)
    if saved:
        load = getattr(filter_fn, "load_state_dict", None)
        if not callable(load):
            raise FilterStateError(
                f"the checkpoint holds a state for filter {saved_name or name!r} (keys {sorted(saved)}), but "
                f"this run's filter {name!r} has no load_state_dict()"
            )
        load(saved)
    elif current:
        warnings.warn(
            f"the checkpoint has no state for filter {name!r}, which keeps one ({sorted(current)}): it starts "
            "from its initial state, so this run may keep other rows than an uninterrupted one",
            FilterStateWarning,
            stacklevel=2,
        )
    saved_adaptive = state.get("adaptive")
    if adaptive is not None:
        if saved_adaptive is None:
            warnings.warn(
                "the checkpoint has no adaptive-k window: it starts empty, so k may differ from an uninterrupted run",
                FilterStateWarning,
                stacklevel=2,
            )
        else:
            adaptive.load_state_dict(saved_adaptive)
    elif saved_adaptive is not None:
        warnings.warn(
            "the checkpoint holds an adaptive-k window, but this run has no adaptive k: the window is ignored",
            FilterStateWarning,
            stacklevel=2,
        )


def _state_of(filter_fn: Any) -> dict[str, Any]:
    get = getattr(filter_fn, "state_dict", None)
    return dict(get()) if callable(get) else {}


@dataclass
class GFPOStepResult:
    """What :func:`gfpo_step` decided for one batch; every array is ``(n_groups, G)`` unless noted."""

    scores: np.ndarray
    kept: np.ndarray
    advantages: np.ndarray
    k: np.ndarray  # (n_groups,)
    buckets: np.ndarray | None = None  # (n_groups,) adaptive-k bucket, -1 for groups with no reward
    metrics: dict[str, float] = field(default_factory=dict)
    top: np.ndarray | None = None  # the filter's own top k, before keep_signal
    signal: np.ndarray | None = None  # (n_groups,) some advantage is not 0 (the group trains on something)
    added: np.ndarray | None = None  # rows kept only to reach row_multiple (none by default)


def group_rows(rows: Sequence[Any], group_size: int) -> list[list[Any]]:
    """Cut a flat, group-major sequence into groups: rows ``[i*G, (i+1)*G)`` belong to group ``i``."""
    if len(rows) % group_size:
        raise ValueError(f"{len(rows)} rows do not form whole groups of {group_size}")
    return [list(rows[i : i + group_size]) for i in range(0, len(rows), group_size)]


def call_filter(
    filter_fn: FilterFn,
    completions: list[list[Any]],
    rewards: np.ndarray,
    *,
    completion_ids: list[list[Any]] | None = None,
    lengths: np.ndarray | None = None,
    prompts: list[Any] | None = None,
    k: np.ndarray,
    kwargs: Sequence[str] | None = None,
) -> np.ndarray:
    """Call a filter once on all groups and return its checked scores, shape ``rewards.shape``.

    Our filters take the rewards array as is; other callables get nested lists with NaN for a
    missing reward, as TRL 1.7.1 passed them. ``kwargs`` limits the extra arguments to those the
    filter takes (default: found from its signature).
    """
    values = {
        "completion_ids": completion_ids,
        "completion_lengths": lengths,
        "prompts": prompts,
        "num_remains_in_group": int(k[0]) if k.size and (k == k[0]).all() else k.tolist(),
    }
    names = accepted_kwargs(filter_fn) if kwargs is None else kwargs
    extra = {name: values[name] for name in names if values[name] is not None}
    rewards_arg = rewards if isinstance(filter_fn, GroupFilter) else rewards.tolist()
    raw = filter_fn(group_completions=completions, group_rewards=rewards_arg, **extra)
    return check_scores(raw, rewards.shape, filter_name(filter_fn))


def gfpo_step(
    filter_fn: FilterFn,
    *,
    completions: list[list[Any]],
    rewards: np.ndarray,
    k: int | Sequence[int] | np.ndarray,
    completion_ids: list[list[Any]] | None = None,
    lengths: np.ndarray | None = None,
    prompts: list[Any] | None = None,
    scale: str = "group",
    adaptive: AdaptiveK | None = None,
    global_step: int = 0,
    sync_scores: Callable[[np.ndarray], np.ndarray] | None = None,
    filter_kwargs: Sequence[str] | None = None,
    keep_signal: bool | str = False,
    row_multiple: int = 1,
    available: np.ndarray | None = None,
) -> GFPOStepResult:
    """Score, select and compute GFPO advantages for a batch of ``n_groups`` groups of ``G``.

    Parameters
    ----------
    filter_fn:
        A filter from :func:`gfpo_filters.load_filter` or any ``group_filter_func`` callable.
    completions:
        ``n_groups`` lists of ``G`` completions (text, message lists, or anything the filter reads).
    rewards:
        ``(n_groups, G)`` floats, NaN where a completion has no reward.
    k:
        Completions kept per group: one int or one per group. With ``adaptive``, the k of groups
        during warm-up and of groups with no reward at all.
    completion_ids, lengths, prompts:
        Token ids per completion (grouped like ``completions``), ``(n_groups, G)`` token counts,
        and one prompt per group; each is passed to filters that take it.
    scale:
        ``"group"`` (paper), ``"batch"`` or ``"none"``: the std the advantages divide by.
    adaptive, global_step:
        Adaptive Difficulty GFPO: k per group from the group's mean reward (see :mod:`gfpo_filters.adaptive`).
    sync_scores:
        On many processes, a function that makes the scores identical everywhere (broadcast from
        process 0), so that every process keeps the same rows.
    keep_signal:
        False (the paper), True (the default mode, ``"typical"``) or a mode of :data:`KEEP_SIGNAL`.
        Every mode is deterministic, so identical scores give identical rows on every process.
    row_multiple:
        Keep more completions until the batch's kept count is a multiple of this (an engine that
        splits the kept rows into equal micro-batches needs no padding rows then); which rows are
        added: :func:`gfpo_filters.selection.round_up_rows`. The advantages are standardised over
        the final kept set; ``gfpo/rounding_rows`` counts the rows added. Opt-in: the rows added are
        ones the filter rejected, trained with advantages (a :class:`GFPOStepWarning` says so once).
    available:
        ``(n_groups, G)`` bool, False where the engine has no completion (a failed session): such a
        slot is never kept, not even to reach ``row_multiple``. Default: every slot exists.
    """
    mode = keep_signal_mode(keep_signal)
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape (n_groups, G), got {rewards.shape}")
    n_groups, g = rewards.shape
    infinite = np.isinf(rewards)
    if infinite.any():
        i, j = map(int, np.argwhere(infinite)[0])
        raise GroupInputError(
            f"reward {rewards[i, j]} for group {i}, completion {j} is not a finite number; {int(infinite.sum())} "
            "such reward(s) in this batch. Rewards must be finite, or NaN where a completion has no reward"
        )
    if len(completions) != n_groups or any(len(c) != g for c in completions):
        raise ValueError(f"completions must be {n_groups} groups of {g}, matching rewards {rewards.shape}")
    if lengths is None:
        lengths = np.zeros(rewards.shape) if completion_ids is None else _lengths_of(completion_ids, rewards.shape)
    lengths = np.asarray(lengths)
    if lengths.shape != rewards.shape:
        raise ValueError(f"lengths have shape {lengths.shape}; expected {rewards.shape}")

    if adaptive is not None:
        k_groups, buckets = adaptive.assign(rewards, global_step)
    else:
        k_groups, buckets = _k_per_group(k, n_groups, g), None

    start = time.perf_counter()
    scores = call_filter(
        filter_fn,
        completions,
        rewards,
        completion_ids=completion_ids,
        lengths=lengths,
        prompts=prompts,
        k=k_groups,
        kwargs=filter_kwargs,
    )
    filter_seconds = time.perf_counter() - start
    if sync_scores is not None:
        scores = np.asarray(sync_scores(scores), dtype=np.float64)
    warn_bad_scores(scores, rewards, k_groups, filter_name(filter_fn))
    warn_few_rewards(rewards, k_groups)

    sel = select(
        scores,
        rewards,
        k_groups,
        lengths=lengths,
        keep_signal=mode,
        scale=scale,
        row_multiple=row_multiple,
        available=available,
    )
    kept, advantages = sel.kept, sel.advantages
    if sel.added is not None and sel.added.any():
        warnings.warn(
            "row_multiple: rows the filter rejected are kept and trained (with advantages) to fill whole "
            "micro-batches; gfpo/rounding_rows counts them",
            GFPOStepWarning,
            stacklevel=2,
        )
    metrics = selection_metrics(
        rewards, lengths, kept, k_groups, buckets, top=sel.top, signal=sel.signal, added=sel.added
    )
    metrics["gfpo/filter_seconds"] = filter_seconds
    return GFPOStepResult(
        scores, kept, advantages, k_groups, buckets, metrics, top=sel.top, signal=sel.signal, added=sel.added
    )


@dataclass
class Selection:
    """What :func:`select` decided; arrays ``(n_groups, G)`` unless noted."""

    top: np.ndarray  # the filter's top k (missing rewards last), before keep_signal
    kept: np.ndarray  # the kept set after keep_signal
    advantages: np.ndarray  # GFPO advantages of the kept set
    signal: np.ndarray  # (n_groups,): some advantage is not 0 (selection.trains)
    added: np.ndarray | None = None  # rows kept only to reach row_multiple


def select(
    scores: np.ndarray,
    rewards: np.ndarray,
    k: Any,
    *,
    lengths: np.ndarray | None = None,
    keep_signal: bool | str = False,
    scale: str = "group",
    row_multiple: int = 1,
    available: np.ndarray | None = None,
) -> Selection:
    """Steps 4 to 6 of :func:`gfpo_step` on checked scores (the benchmark calls this too).

    ``"swap_long"`` and ``"typical"`` read ``lengths``; without them ``"swap_long"`` is ``"swap"``, and
    ``"typical"`` takes the low-reward side in the filter's order too. ``row_multiple``: see
    :func:`gfpo_step`.
    """
    mode = keep_signal_mode(keep_signal)
    rewards = np.asarray(rewards, dtype=np.float64)
    valid = np.isfinite(rewards)
    rank = ranks(scores, valid)
    top = (rank < k_array(k, rewards.shape[0])[:, None]) & valid  # a row without a reward trains on nothing
    kept = top
    if mode == "swap" or (mode == "swap_long" and lengths is None):
        kept = signal_swap(rank, top, rewards)
    elif mode == "swap_long":
        lengths = np.asarray(lengths, dtype=np.float64)
        level = np.where(top & valid, rewards, -np.inf).max(axis=1, keepdims=True)
        kept = signal_swap(rank, top, rewards, prefer=np.where(rewards < level, -lengths, lengths))
    elif mode == "balanced":
        kept = balanced_mask(rank, rewards, k)
    elif mode == "typical":
        kept = typical_mask(rank, rewards, np.zeros(rewards.shape) if lengths is None else lengths, k)
    chosen = kept
    kept = round_up_rows(kept, rank, rewards, row_multiple, available)
    baseline = valid if mode == "group_baseline" else kept
    advantages = gfpo_advantages(rewards, kept, scale=scale, baseline=baseline)
    signal = trains(advantages)
    return Selection(top, kept, advantages, signal, added=kept & ~chosen)


def _groups_text(groups: np.ndarray) -> str:
    shown = groups[:10].tolist()
    return f"{shown}"[:-1] + ", ...]" if groups.size > 10 else f"{shown}"


def warn_bad_scores(scores: np.ndarray, rewards: np.ndarray, k: np.ndarray, name: str) -> None:
    """A :class:`GFPOStepWarning` naming the filter when it gave NaN scores to completions that have a reward.

    A group whose every such score is NaN keeps its first k completions with a reward, in sample
    order (a uniformly random subset, as GRPO's rows are); elsewhere a NaN score ranks last.
    """
    valid = np.isfinite(rewards)
    nan = np.isnan(scores) & valid
    if not nan.any():
        return
    blind = valid.any(axis=1) & (nan == valid).all(axis=1)
    parts = []
    if blind.any():
        k_text = str(int(k[blind][0])) if (k[blind] == k[blind][0]).all() else "k"
        parts.append(
            f"{int(blind.sum())} group(s) got only NaN scores (groups {_groups_text(np.flatnonzero(blind))}): "
            f"they keep their first {k_text} completions with a reward, in sample order"
        )
    partial = nan & ~blind[:, None]
    if partial.any():
        i, j = map(int, np.argwhere(partial)[0])
        parts.append(
            f"{int(partial.sum())} NaN score(s) where the reward is known (first: group {i}, completion {j}) "
            "rank below every number"
        )
    warnings.warn(f"filter {name!r}: " + "; ".join(parts), GFPOStepWarning, stacklevel=3)


def warn_few_rewards(rewards: np.ndarray, k: np.ndarray) -> None:
    """A :class:`GFPOStepWarning` with counts when groups know fewer rewards than k: they keep only those."""
    known = np.isfinite(rewards).sum(axis=1)
    few = known < k
    if few.any():
        groups = _groups_text(np.flatnonzero(few))
        warnings.warn(
            f"{int(few.sum())} group(s) have fewer known rewards than k (groups {groups}): only completions with a "
            f"reward are kept there, {int(known[few].sum())} completion(s) kept instead of {int(k[few].sum())} "
            "(a completion without a reward would cost a forward and backward pass for nothing)",
            GFPOStepWarning,
            stacklevel=3,
        )


def _k_per_group(k: Any, n_groups: int, g: int) -> np.ndarray:
    ks = np.asarray(k)
    if ks.ndim == 0:
        ks = np.full(n_groups, ks)
    if ks.shape != (n_groups,) or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(f"k must be one int or {n_groups} ints (one per group), got {k!r}")
    bad = (ks < 1) | (ks > g)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"k={int(ks[i])} for group {i} is out of range: groups have {g} completions")
    return ks.astype(np.int64)


def _lengths_of(completion_ids: list[list[Any]], shape: tuple[int, int]) -> np.ndarray:
    flat = [ids for group in completion_ids for ids in group]
    return np.fromiter((len(ids) for ids in flat), dtype=np.int64, count=len(flat)).reshape(shape)


def selection_metrics(
    rewards: np.ndarray,
    lengths: np.ndarray,
    kept: np.ndarray,
    k: np.ndarray,
    buckets: np.ndarray | None = None,
    top: np.ndarray | None = None,
    signal: np.ndarray | None = None,
    added: np.ndarray | None = None,
) -> dict[str, float]:
    """The ``gfpo/*`` metrics of one batch: what was kept against what was sampled.

    ``top`` is the filter's own top k (before ``keep_signal``; default: ``kept``), ``signal``
    :attr:`Selection.signal` (default: not logged) and ``added`` the rows kept only to reach
    ``row_multiple`` (default: none).
    """
    valid = np.isfinite(rewards)
    top = kept if top is None else top
    added = np.zeros(kept.shape, dtype=bool) if added is None else np.asarray(added, dtype=bool)
    kept_valid = kept & valid
    nan = float("nan")
    metrics = {
        "gfpo/k_mean": float(k.mean()) if k.size else nan,
        "gfpo/kept_fraction": float(kept.mean()) if kept.size else nan,
        "gfpo/all_length_mean": float(lengths.mean()) if lengths.size else nan,
        "gfpo/kept_length_mean": float(lengths[kept].mean()) if kept.any() else nan,
        "gfpo/all_reward_mean": float(rewards[valid].mean()) if valid.any() else nan,
        "gfpo/kept_reward_mean": float(rewards[kept_valid].mean()) if kept_valid.any() else nan,
        # Kept rewards all equal (or none scorable): that group contributes no gradient.
        "gfpo/frac_kept_zero_std": float((~has_signal(rewards, kept)).mean()) if kept.size else nan,
        # The same for the filter's top k before keep_signal, and for the whole group (GRPO's floor).
        "gfpo/frac_kept_zero_std_before": float((~has_signal(rewards, top)).mean()) if kept.size else nan,
        "gfpo/frac_group_zero_std": float((~has_signal(rewards, valid)).mean()) if kept.size else nan,
        # Completions keep_signal put in the kept set in place of one of the filter's top k.
        "gfpo/keep_signal_swaps": float((kept & ~top & ~added).sum()),
        # Completions kept only to make the batch's kept count a multiple of row_multiple.
        "gfpo/rounding_rows": float(added.sum()),
        "gfpo/missing_reward_frac": float((~valid).mean()) if valid.size else nan,
        # Groups whose completions all have one length (typically all cut at the cap): a length-aware filter can
        # only rank them by reward, and cannot shorten them. Near 1, add a punishment at the cap (DAPO's).
        "gfpo/frac_group_equal_length": float((lengths.min(axis=1) == lengths.max(axis=1)).mean())
        if lengths.size
        else nan,
    }
    if signal is not None:
        # Groups that train on nothing: the kept set has no known reward, or the rewards its advantages are
        # standardised over are all equal (with keep_signal="group_baseline" those are the whole group's).
        metrics["gfpo/frac_no_signal"] = float((~np.asarray(signal)).mean()) if signal.size else nan
    if buckets is not None:
        for b, name in enumerate(BUCKETS):
            metrics[f"gfpo/bucket_{name}_frac"] = float((buckets == b).mean())
    return metrics
