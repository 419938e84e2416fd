"""Reading logged rollouts (JSON Lines, one prompt per line), for ``gfpo-filters bench`` and ``train-scorer``.

Format (documented for users in ``docs/cli.md``, "The rollout format")::

    {"prompt": str | null, "prompt_id": ..., "completions": [
        {"text": str, "reward": float | null, "correct": bool | null, ...}, ...]}

Extra fields are kept in ``RolloutGroup.extra``. Files may mix group sizes; :func:`batches`
buckets prompts by size so that each bucket is one :class:`~gfpo_filters.groups.Groups`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfpo_filters.errors import GroupInputError
from gfpo_filters.groups import Groups


@dataclass
class RolloutGroup:
    """The completions of one prompt."""

    prompt: Any
    prompt_id: Any
    texts: list[str]
    rewards: list[float]  # NaN where missing
    correct: list[float]  # 1.0 / 0.0, NaN where missing
    source: str = ""  # "file:line" it was read from
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.texts)


def _reward(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GroupInputError(f"{where}: 'reward' must be a number or null, got {value!r}")
    return float(value)


def _correct(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if not isinstance(value, (bool, int, float)):
        raise GroupInputError(f"{where}: 'correct' must be true, false or null, got {value!r}")
    return float(bool(value))


def read_rollouts(path: str | Path) -> list[RolloutGroup]:
    """Read a rollout file; malformed lines raise :class:`GroupInputError` naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rollout file {str(path)!r} does not exist")
    groups: list[RolloutGroup] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise GroupInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("completions"), list):
                raise GroupInputError(f"{where}: each line must be an object with a 'completions' list")
            texts, rewards, correct = [], [], []
            for j, c in enumerate(record["completions"]):
                if not isinstance(c, dict) or not isinstance(c.get("text"), str):
                    raise GroupInputError(f"{where}: completion {j} must be an object with a string 'text'")
                texts.append(c["text"])
                rewards.append(_reward(c.get("reward"), f"{where}: completion {j}"))
                correct.append(_correct(c.get("correct"), f"{where}: completion {j}"))
            if not texts:
                raise GroupInputError(f"{where}: 'completions' is empty")
            extra = {k: v for k, v in record.items() if k not in ("prompt", "prompt_id", "completions")}
            groups.append(
                RolloutGroup(
                    record.get("prompt"), record.get("prompt_id", lineno), texts, rewards, correct, where, extra
                )
            )
    if not groups:
        raise GroupInputError(f"rollout file {str(path)!r} holds no groups")
    return groups


def write_rollouts(path: str | Path, groups: Iterable[RolloutGroup]) -> None:
    """Write groups in the format :func:`read_rollouts` reads (NaN becomes null)."""

    def clean(x: float) -> float | None:
        return None if math.isnan(x) else x

    with Path(path).open("w", encoding="utf-8") as f:
        for g in groups:
            completions = [
                {"text": t, "reward": clean(r), "correct": None if math.isnan(c) else bool(c)}
                for t, r, c in zip(g.texts, g.rewards, g.correct)
            ]
            f.write(json.dumps({"prompt": g.prompt, "prompt_id": g.prompt_id, "completions": completions}) + "\n")


def to_groups(rollouts: Sequence[RolloutGroup], **kwargs: Any) -> Groups:
    """One :class:`Groups` batch from rollouts that all have the same size (kwargs go to ``Groups``)."""
    sizes = {g.size for g in rollouts}
    if len(sizes) > 1:
        raise GroupInputError(f"rollouts have different group sizes {sorted(sizes)}; use batches() to bucket them")
    return Groups(
        [g.texts for g in rollouts],
        np.array([g.rewards for g in rollouts], dtype=np.float64),
        prompts=[g.prompt for g in rollouts],
        **kwargs,
    )


def batches(rollouts: Sequence[RolloutGroup]) -> list[tuple[list[int], Groups]]:
    """Bucket rollouts by group size: ``[(indices into rollouts, Groups), ...]``, largest G first."""
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(rollouts):
        by_size.setdefault(g.size, []).append(i)
    return [(idx, to_groups([rollouts[i] for i in idx])) for _, idx in sorted(by_size.items(), reverse=True)]
