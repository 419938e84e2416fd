"""The filter contract: :class:`GroupFilter`.

A filter gives every completion of every group a score; **higher score = keep**. The
trainer keeps the top ``k`` of each group. A subclass implements only :meth:`GroupFilter.score`
on a validated :class:`~gfpo_filters.groups.Groups` batch; this base class

* converts the trainer call (``group_completions=..., group_rewards=..., **kwargs``),
* checks the returned scores (shape, numbers, finite wherever a reward exists), and
* enforces the one rule every filter shares: a completion whose reward is missing
  (None/NaN) is never ranked above one that has a reward.
"""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any, ClassVar

import numpy as np

from gfpo_filters.errors import FilterOutputError, FilterParameterError, FilterStateError, GFPOFilterWarning
from gfpo_filters.groups import Groups
from gfpo_filters.selection import topk_mask

#: What a filter's ``name`` may look like: letters, digits, ``_``, ``-`` or ``.``, starting with a letter.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class GroupFilter:
    """Base class of all group filters.

    Subclasses set ``name`` (how ``load_filter`` finds them) and ``description`` (one line),
    take their parameters as keyword arguments of ``__init__``, store each one under the same
    attribute name (so ``repr`` and ``params`` can show them), and implement :meth:`score`.

    ``deterministic`` is False for filters whose scores depend on internal state (a seeded
    random generator): then the same input gives the same scores only for a fresh instance
    built with the same parameters.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    deterministic: ClassVar[bool] = True

    # ------------------------------------------------------------------ to implement
    def score(self, groups: Groups) -> np.ndarray:
        """Return an array of shape ``(groups.n_groups, groups.group_size)``; higher = keep.

        Scores must be finite where ``groups.valid`` is True. Where a reward is missing the
        score may be anything (NaN included): the base class moves those completions below
        every scorable one of their group, keeping their relative order.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score(groups)")

    # ------------------------------------------------------------------ the trainer call
    def __call__(self, group_completions: Any, group_rewards: Any, **kwargs: Any) -> list[list[float]]:
        """The ``group_filter_func`` interface: nested lists in, ``list[list[float]]`` out."""
        groups = Groups.from_call(group_completions, group_rewards, **kwargs)
        return self.score_groups(groups).tolist()

    def score_groups(self, groups: Groups) -> np.ndarray:
        """:meth:`score`, checked, with missing-reward completions moved to the bottom."""
        if groups.n_groups == 0:
            return np.zeros((0, groups.group_size))
        raw = self.score(groups)
        return finalize_scores(raw, groups, self.name or type(self).__name__)

    def select(self, groups: Groups, k: Any) -> np.ndarray:
        """Boolean mask of the kept completions: top ``k`` (int or one per group) by score."""
        return topk_mask(self.score_groups(groups), k)

    # ------------------------------------------------------------------ pruning during generation
    def pruning_rule(self) -> Any:
        """The rule naming running completions this filter can no longer keep (:mod:`gfpo_filters.pruning`), or None.

        None (the default) means no pruning: the filter needs whole groups. A filter whose score of a
        completion depends only on that completion can return an exact
        :class:`~gfpo_filters.pruning.ScoreBound`; the conformance check ``pruning`` replays generation on
        random groups and fails if an exact rule ever stops a completion the unpruned selection keeps.
        """
        return None

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to score as an uninterrupted one would, JSON-serialisable; ``{}`` if nothing.

        A filter with state that changes as it scores (a random generator) returns it here, and a
        filter whose scores depend on something outside its parameters (a model file) returns what
        identifies it, so that :meth:`load_state_dict` can refuse a resume that would score differently.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. A stateless filter accepts only ``{}``."""
        if state:
            raise FilterStateError(
                f"filter {self.name!r} keeps no state, but was given a state with keys {sorted(state)}: "
                "the checkpoint was saved with another filter"
            )

    # ------------------------------------------------------------------ description
    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Accepted parameters and their defaults (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    @property
    def params(self) -> dict[str, Any]:
        """The parameters this instance was built with."""
        return {p: getattr(self, p, d) for p, d in self.parameters().items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ helpers for subclasses
    def param_error(self, param: str, message: str) -> FilterParameterError:
        """An error naming this filter and the offending parameter; ``raise self.param_error(...)``."""
        return FilterParameterError(f"filter {self.name!r}, parameter {param!r}: {message}")

    def warn(self, message: str) -> None:
        warnings.warn(f"filter {self.name!r}: {message}", GFPOFilterWarning, stacklevel=3)


def check_scores(
    raw: Any,
    shape: tuple[int, int],
    filter_name: str,
    valid: np.ndarray | None = None,
    rewards: np.ndarray | None = None,
) -> np.ndarray:
    """A filter's scores as a float64 array of ``shape``, or a :class:`FilterOutputError` saying what is wrong.

    Scores may come as nested lists, a numpy array or a torch tensor on any device. With ``valid``
    (False where the reward is missing), a non-finite score where the reward is known is an error too
    (naming the reward, when ``rewards`` is given);
    without it, NaN scores are allowed (they rank last).
    """
    if hasattr(raw, "detach"):
        raw = raw.detach().cpu().numpy()
    try:
        scores = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FilterOutputError(f"filter {filter_name!r} returned scores that are not numbers: {e}") from None
    if scores.shape != tuple(shape):
        raise FilterOutputError(
            f"filter {filter_name!r} returned scores of shape {scores.shape}; expected (n_groups, G) = {tuple(shape)}"
        )
    if valid is not None:
        bad = ~np.isfinite(scores) & valid
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            reward = "" if rewards is None else f" (reward {rewards[i, j]})"
            raise FilterOutputError(
                f"filter {filter_name!r} returned a non-finite score ({scores[i, j]}) for group {i}, completion {j}"
                f"{reward}; "
                f"{int(bad.sum())} such score(s) in this batch. Scores must be finite wherever the reward is known."
            )
    return scores


def finalize_scores(raw: Any, groups: Groups, filter_name: str) -> np.ndarray:
    """Validate a filter's raw scores (:func:`check_scores`) and demote completions with missing rewards.

    Returns finite float64 scores.
    """
    scores = check_scores(raw, groups.shape, filter_name, valid=groups.valid, rewards=groups.rewards)
    finite = np.isfinite(scores)
    missing = ~groups.valid
    if missing.any():
        # Map non-finite scores of missing-reward completions just below the row's finite minimum,
        # then shift every missing-reward score below the lowest scorable one.
        lo = np.min(np.where(finite, scores, np.inf), axis=1, keepdims=True)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        scores = np.where(finite, scores, lo - 1.0)
        span = scores.max(axis=1, keepdims=True) - scores.min(axis=1, keepdims=True) + 1.0
        scores = np.where(missing, scores - span, scores)
    return scores


def check_filter_class(cls: Any) -> str | None:
    """What is wrong with ``cls`` as a filter class (not a GroupFilter, a bad ``name``, no ``score``), or None.

    The registry skips a plugin's class with this message; the conformance suite fails with it.
    """
    if not (isinstance(cls, type) and issubclass(cls, GroupFilter)):
        return f"{cls!r} is not a GroupFilter subclass"
    if not isinstance(cls.name, str) or not NAME_PATTERN.match(cls.name):
        return (
            f"filter class {cls.__qualname__} has an invalid name {cls.name!r} (set a class attribute "
            "'name' of letters, digits, '_', '-' or '.', starting with a letter)"
        )
    if cls.score is GroupFilter.score:
        return f"filter class {cls.__qualname__} ({cls.name!r}) does not implement score(groups)"
    return None
