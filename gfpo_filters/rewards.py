"""Length-control rewards: what a user picks instead of (or on top of) a GFPO filter, as plain TRL reward functions.

Both wrap a task reward (any TRL reward function) and return the task reward plus a length term, so one function
goes in ``reward_funcs`` and a GFPO filter that ranks by reward (``token_efficiency``) sees the shaped reward:

- :func:`length_penalty`: Kimi k1.5's group-relative length reward (Kimi Team, "Kimi k1.5", arXiv 2501.12599,
  §2.3.3). In a group of answers to one prompt with lengths ``len_i``, ``min_len`` and ``max_len``,
  ``lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)`` (0 when every length is equal), in [-0.5, 0.5];
  a correct answer gets ``+lambda_i``, a wrong one ``min(0, lambda_i)``: short correct answers are paid, long ones
  docked, and a wrong answer is never paid for being short. ``scale`` sets the range, ``[-scale, scale]``.
  ``among="correct"`` takes min and max over the group's *correct* answers only and leaves wrong answers alone
  (the form asked for in prime-rl #3376 and miles #1573: only the correct answers compete on length).
- :func:`overlong_punishment`: DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, Eq. 13; TRL ships it
  as ``trl.rewards.get_soft_overlong_punishment``): 0 up to ``max_completion_len - soft_punish_cache`` tokens, then
  falling linearly to -1 at ``max_completion_len``, -1 beyond. The same formula as TRL's, added to the task reward.

Both count a completion's length as ``len(completion_ids[i])``, the token ids TRL passes to every reward function (up
to and including the first EOS, as TRL's completion mask counts them).

**Groups** (:func:`length_penalty` only). TRL calls a reward function on each process's own rows, in order: the
``num_generations`` answers to one prompt are consecutive rows. :func:`length_penalty` cuts the rows it is given into
consecutive blocks of ``num_generations`` and takes each block as one group; it checks that every block holds one
prompt (``prompts``, compared with ``==``). A group split between two processes (possible in TRL when
``per_device_train_batch_size`` is not a multiple of ``num_generations``) reaches it as a partial block: the row count
is not a multiple of ``num_generations``, or a block holds two prompts, and it raises a ValueError saying so rather
than computing lengths relative to the wrong answers. Make ``per_device_train_batch_size`` a multiple of
``num_generations`` (one process, or several) and it never happens. :func:`overlong_punishment` is per answer and
takes any rows.

TRL logs the shaped reward as ``reward``; both wrappers also log the task reward alone and the length term, as
``length_control/task_reward`` and ``length_control/length_term`` (through the ``log_metric`` TRL passes).

A task reward of ``None`` (TRL: the answer could not be scored) stays ``None``; in :func:`length_penalty` such an
answer still counts for the group's min and max length but is neither correct nor wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

RewardFunc = Callable[..., Sequence[float | None]]
AMONG = ("group", "correct")
#: What the wrappers log through TRL's ``log_metric`` (TRL's own ``reward`` is the shaped sum): the mean task reward
#: and the mean length term of the call's scored rows.
TASK_METRIC, TERM_METRIC = "length_control/task_reward", "length_control/length_term"


def _lengths(completion_ids: Any, name: str, rows: int) -> np.ndarray:
    if completion_ids is None:
        raise ValueError(f"{name} needs completion_ids (TRL passes them to every reward function)")
    if len(completion_ids) != rows:
        raise ValueError(f"{name} got {rows} completions but {len(completion_ids)} completion_ids")
    return np.fromiter((len(ids) for ids in completion_ids), dtype=np.float64, count=rows)


def _task_rewards(func: RewardFunc, name: str, rows: int, kwargs: dict[str, Any]) -> np.ndarray:
    out = func(**kwargs)
    if len(out) != rows:
        raise ValueError(f"{name}: the task reward returned {len(out)} rewards for {rows} completions")
    return np.array([np.nan if r is None else float(r) for r in out], dtype=np.float64)


def _as_list(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values.tolist()]


def _shaped(task: np.ndarray, term: np.ndarray, kwargs: dict[str, Any]) -> list[float | None]:
    """task + term; logs the mean task reward and term through TRL's ``log_metric`` when it is passed."""
    log = kwargs.get("log_metric")
    if callable(log):
        known = ~np.isnan(task)
        if known.any():
            log(TASK_METRIC, float(task[known].mean()))
            log(TERM_METRIC, float(np.nan_to_num(term[known]).mean()))
    return _as_list(task + term)


class LengthPenalty:
    """The reward function :func:`length_penalty` returns (a class, so it pickles like TRL's own)."""

    def __init__(
        self, reward_func: RewardFunc, num_generations: int, scale: float, among: str, threshold: float
    ) -> None:
        if not callable(reward_func):
            raise TypeError(f"length_penalty wraps a reward function, got {type(reward_func).__name__}")
        if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 2:
            raise ValueError(
                f"num_generations must be an int >= 2 (a group to compare lengths in), not {num_generations!r}"
            )
        if not (isinstance(scale, (int, float)) and 0 < scale <= 0.5):
            raise ValueError(
                f"scale must be in (0, 0.5] (Kimi k1.5's length reward lies in [-0.5, 0.5]; beyond 0.5 length "
                f"weighs more than half a correct answer), not {scale!r}"
            )
        if among not in AMONG:
            raise ValueError(f"among must be one of {', '.join(AMONG)}, not {among!r}")
        self.reward_func = reward_func
        self.num_generations = num_generations
        self.scale = float(scale)
        self.among = among
        self.threshold = float(threshold)
        self.__name__ = f"{getattr(reward_func, '__name__', 'reward')}+length_penalty"

    def __call__(self, completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any) -> list[float | None]:
        n, g = len(completions), self.num_generations
        if n == 0:
            return []
        lengths = _lengths(completion_ids, "length_penalty", n)
        if n % g:
            raise ValueError(
                f"length_penalty got {n} rows, not whole groups of num_generations={g}: a group split between "
                "processes? Make per_device_train_batch_size a multiple of num_generations"
            )
        prompts = kwargs.get("prompts")
        if prompts is not None:
            if len(prompts) != n:
                raise ValueError(f"length_penalty got {n} completions but {len(prompts)} prompts")
            bad = [i for i in range(n) if prompts[i] != prompts[i - i % g]]
            if bad:
                raise ValueError(
                    f"length_penalty: rows {bad[0] - bad[0] % g}-{bad[0] - bad[0] % g + g - 1} hold more than one "
                    f"prompt, not one group of num_generations={g} consecutive answers (a group split between "
                    "processes, or rows reordered?)"
                )
        task = _task_rewards(
            self.reward_func,
            "length_penalty",
            n,
            {"completions": completions, "completion_ids": completion_ids, **kwargs},
        )
        return _shaped(task, kimi_length_reward(task, lengths, g, self.scale, self.among, self.threshold), kwargs)


def kimi_length_reward(
    rewards: np.ndarray,
    lengths: np.ndarray,
    num_generations: int,
    scale: float = 0.5,
    among: str = "group",
    threshold: float = 1.0,
) -> np.ndarray:
    """The length term alone, for rows in whole consecutive groups (NaN rewards: term NaN). See the module doc."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, num_generations)
    length = np.asarray(lengths, dtype=np.float64).reshape(-1, num_generations)
    correct = r >= threshold  # NaN compares False
    wrong = r < threshold
    if among == "group":
        low, high = length.min(1, keepdims=True), length.max(1, keepdims=True)
    else:
        low = np.where(correct, length, np.inf).min(1, keepdims=True)
        high = np.where(correct, length, -np.inf).max(1, keepdims=True)
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = np.where(span > 0, scale - 2 * scale * (length - low) / np.where(span > 0, span, 1), 0.0)
    if among == "group":
        term = np.where(correct, lam, np.where(wrong, np.minimum(lam, 0.0), np.nan))
    else:
        term = np.where(correct, lam, np.where(wrong, 0.0, np.nan))
    return term.reshape(-1)


def length_penalty(
    reward_func: RewardFunc,
    num_generations: int,
    *,
    scale: float = 0.5,
    among: str = "group",
    threshold: float = 1.0,
) -> LengthPenalty:
    """``reward_func`` plus Kimi k1.5's group-relative length reward, as one TRL reward function.

    An answer is correct when its task reward is ``>= threshold`` (1.0: a 0/1 reward's 1). ``num_generations`` is the
    trainer's G (the rows of one group). ``scale`` in (0, 0.5]: the length term lies in [-scale, scale] (Kimi: 0.5).
    ``among="group"`` (Kimi) or ``"correct"`` (only correct answers compete on length). See the module doc for the
    formula, how groups are found, and the errors on rows that are not whole groups.

    >>> def task(completions, **kw):
    ...     return [1.0, 1.0, 0.0, 0.0]
    >>> f = length_penalty(task, num_generations=4)
    >>> f(["a", "b", "c", "d"], completion_ids=[[1] * 2, [1] * 6, [1] * 2, [1] * 10], prompts=["p"] * 4)
    [1.5, 1.0, 0.0, -0.5]
    """
    return LengthPenalty(reward_func, num_generations, scale, among, threshold)


class OverlongPunishment:
    """The reward function :func:`overlong_punishment` returns."""

    def __init__(self, reward_func: RewardFunc, max_completion_len: int, soft_punish_cache: int) -> None:
        if not callable(reward_func):
            raise TypeError(f"overlong_punishment wraps a reward function, got {type(reward_func).__name__}")
        if not (isinstance(max_completion_len, int) and max_completion_len > 0):
            raise ValueError(f"max_completion_len must be a positive int, not {max_completion_len!r}")
        if not (isinstance(soft_punish_cache, int) and 0 <= soft_punish_cache <= max_completion_len):
            raise ValueError(f"soft_punish_cache must be an int in [0, max_completion_len], not {soft_punish_cache!r}")
        self.reward_func = reward_func
        self.max_completion_len = max_completion_len
        self.soft_punish_cache = soft_punish_cache
        self.__name__ = f"{getattr(reward_func, '__name__', 'reward')}+overlong_punishment"

    def __call__(self, completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        if n == 0:
            return []
        lengths = _lengths(completion_ids, "overlong_punishment", n)
        task = _task_rewards(
            self.reward_func,
            "overlong_punishment",
            n,
            {"completions": completions, "completion_ids": completion_ids, **kwargs},
        )
        return _shaped(task, soft_overlong(lengths, self.max_completion_len, self.soft_punish_cache), kwargs)


def soft_overlong(lengths: np.ndarray, max_completion_len: int, soft_punish_cache: int) -> np.ndarray:
    """DAPO's soft overlong punishment of each length (TRL's formula, vectorised)."""
    length = np.asarray(lengths, dtype=np.float64)
    start = max_completion_len - soft_punish_cache
    ramp = (start - length) / max(soft_punish_cache, 1)
    return np.where(length <= start, 0.0, np.where(length <= max_completion_len, ramp, -1.0))


def overlong_punishment(reward_func: RewardFunc, max_completion_len: int, soft_punish_cache: int) -> OverlongPunishment:
    """``reward_func`` plus DAPO's soft overlong punishment (TRL's ``get_soft_overlong_punishment``), as one function.

    With ``max_completion_len`` = the trainer's ``max_completion_length``, an answer cut off at the cap gets -1 on
    top of its task reward. (Adding TRL's own function as a second entry of ``reward_funcs`` gives the same sum in
    the trainer; this form hands one shaped reward to the filter and the logs.)

    >>> def task(completions, **kw):
    ...     return [1.0, 1.0, 1.0, 0.0]
    >>> f = overlong_punishment(task, max_completion_len=100, soft_punish_cache=20)
    >>> f(["a"] * 4, completion_ids=[[1] * 80, [1] * 90, [1] * 100, [1] * 101])
    [1.0, 0.5, 0.0, -1.0]
    """
    return OverlongPunishment(reward_func, max_completion_len, soft_punish_cache)


__all__ = ["kimi_length_reward", "length_penalty", "overlong_punishment", "soft_overlong"]
