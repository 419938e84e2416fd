"""Adaptive Difficulty GFPO (paper, Algorithm 2): choose k per prompt from its difficulty.

Difficulty of a prompt = mean reward of its G completions (low = hard). Each prompt is placed
against the difficulties of the most recent ``window`` prompts (an exact rolling window, not a
sketch: it is small, exact, and follows the policy as it improves) by its mid-rank percentile

    p = (#{window < d} + #{window == d} / 2) / |window|

and bucketed: p < 0.25 very hard, < 0.5 hard, < 0.75 medium, else easy. Without ties this is
the same as comparing d with the window's quartiles; with ties (binary rewards make many) it
puts equal difficulties in the same bucket and an all-equal window in "medium" rather than
calling every prompt "easy" or every prompt "very hard". The window includes the current batch.

During warm-up (``step < warmup_steps``) every group keeps ``warmup_k``; the window fills all the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

BUCKETS = ("very_hard", "hard", "medium", "easy")
PAPER_K_MAP = (8, 8, 6, 4)  # for G = 16


class AdaptiveK:
    """Streaming difficulty buckets -> per-group k."""

    def __init__(
        self,
        k_map: Sequence[int],
        warmup_k: int,
        warmup_steps: int = 0,
        window: int = 4096,
        group_size: int | None = None,
    ) -> None:
        """``group_size`` (G, when known): every k is checked against it now, else against the first batch."""
        if len(k_map) != 4:
            raise ValueError(f"k_map needs 4 values (very hard, hard, medium, easy), got {list(k_map)}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.k_map = np.asarray(k_map, dtype=np.int64)
        if (self.k_map < 1).any():
            raise ValueError(f"k_map values must be >= 1, got {self.k_map.tolist()}")
        self.warmup_k = int(warmup_k)
        if self.warmup_k < 1:
            raise ValueError(f"warmup_k must be >= 1, got {warmup_k}")
        self.warmup_steps = int(warmup_steps)
        self.window = int(window)
        self._values: deque[float] = deque(maxlen=self.window)
        if group_size is not None:
            self.check_group_size(group_size)

    def check_group_size(self, group_size: int) -> None:
        """A ValueError when some k of ``k_map`` or ``warmup_k`` is larger than ``group_size`` (G)."""
        if int(self.k_map.max()) > group_size:
            raise ValueError(
                f"adaptive k: k_map {self.k_map.tolist()} asks for more completions than groups of {group_size} "
                f"completions hold; every k must be <= G = {group_size}"
            )
        if self.warmup_k > group_size:
            raise ValueError(
                f"adaptive k: warmup_k={self.warmup_k} asks for more completions than groups of {group_size} "
                f"completions hold; it must be <= G = {group_size}"
            )

    def __len__(self) -> int:
        return len(self._values)

    def buckets(self, difficulty: np.ndarray) -> np.ndarray:
        """Bucket index 0..3 (very hard .. easy) of each difficulty against the current window."""
        d = np.asarray(difficulty, dtype=np.float64)
        if not self._values:
            return np.full(d.shape, 2, dtype=np.int64)
        window = np.sort(np.fromiter(self._values, dtype=np.float64))
        below = np.searchsorted(window, d, side="left")
        equal = np.searchsorted(window, d, side="right") - below
        p = (below + equal / 2.0) / window.size
        return np.searchsorted([0.25, 0.5, 0.75], p, side="right").astype(np.int64)

    def update(self, difficulty: np.ndarray) -> None:
        self._values.extend(float(x) for x in np.asarray(difficulty, dtype=np.float64) if np.isfinite(x))

    def assign(self, rewards: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Update the window with this batch and return ``(k per group, bucket per group)``.

        Groups with no reward at all get ``warmup_k`` and bucket -1, and do not enter the window.
        """
        r = np.asarray(rewards, dtype=np.float64)
        self.check_group_size(r.shape[1])
        valid = np.isfinite(r)
        count = valid.sum(axis=1)
        difficulty = np.where(count > 0, np.where(valid, r, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
        self.update(difficulty)
        buckets = self.buckets(np.nan_to_num(difficulty))
        buckets = np.where(np.isfinite(difficulty), buckets, -1)
        if step < self.warmup_steps:
            return np.full(len(r), self.warmup_k, dtype=np.int64), buckets
        k = np.where(buckets >= 0, self.k_map[np.clip(buckets, 0, 3)], self.warmup_k)
        return k.astype(np.int64), buckets

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "k_map": self.k_map.tolist(),
            "warmup_k": self.warmup_k,
            "warmup_steps": self.warmup_steps,
            "window": self.window,
            "values": list(self._values),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._values = deque((float(v) for v in state["values"]), maxlen=self.window)
