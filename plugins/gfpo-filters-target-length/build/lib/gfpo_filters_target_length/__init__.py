"""A gfpo-filters plugin: keep the completions whose length is nearest a target budget.

L1/LCPO (Aggarwal & Welleck, "L1: Controlling How Long a Reasoning Model Thinks") trains a
model to hit a length budget given in the prompt, rewarding ``-|L - target|`` ("exact") or
penalising only the excess ("max"). As a GFPO group filter the same quantity decides which
completions are trained on: ``load_filter("target_length", target=512)`` keeps the k
completions of each group closest to 512 tokens.

Lengths are the best the trainer gives: ``completion_lengths`` or ``completion_ids`` (tokens),
else the ``tokenizer`` parameter, else characters (TRL 1.7.1 passes only texts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gfpo_filters import GroupFilter, Groups, hookimpl

__version__ = "0.1.0"

MODES = ("exact", "max")


class TargetLengthFilter(GroupFilter):
    """Keep completions whose length is nearest ``target``.

    ``mode="exact"``: ``score = -|L - target|`` (over and under the budget cost the same).
    ``mode="max"``: ``score = -max(L - target, 0)`` (only exceeding the budget costs;
    completions within it tie, and ties go to the earlier completion).
    """

    name = "target_length"
    description = "Keep completions whose length is nearest a target budget: -|L - target| (L1/LCPO-style)."

    def __init__(self, target: float, mode: str = "exact", tokenizer: Any = None) -> None:
        if isinstance(target, bool) or not isinstance(target, (int, float, np.integer, np.floating)):
            raise self.param_error("target", f"must be a number of tokens (or characters), got {target!r}")
        if not math.isfinite(target) or target < 0:
            raise self.param_error("target", f"must be finite and >= 0, got {target!r}")
        if mode not in MODES:
            raise self.param_error("mode", f"must be one of {MODES}, got {mode!r}")
        self.target = target
        self.mode = mode
        self.tokenizer = tokenizer

    def score(self, groups: Groups) -> np.ndarray:
        excess = groups.get_lengths(self.tokenizer).astype(np.float64) - float(self.target)
        if self.mode == "exact":
            return -np.abs(excess)
        return -np.maximum(excess, 0.0)


@hookimpl
def register_filters():
    return [TargetLengthFilter]
