"""Pruning inside transformers ``generate``: a group-aware, per-row stopping criterion.

transformers calls a ``StoppingCriteria`` after every decode step with the ids so far and stops the rows it
returns True for: a stopped row is fed pad tokens from then on but stays in the batch, and the loop ends when
every row has stopped. :class:`GroupPruning` keeps the decoding state of :mod:`gfpo_filters.pruning`
(finished rows and their lengths, running rows' lengths) and stops the rows a rule names. So under batched
decoding a batch ends at each group's k-th finish instead of at its longest completion: the saving is decode
steps (each step still runs every row).

It also counts what generation cost (decode steps, tokens written), with or without a rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria

from gfpo_filters.pruning import PruneRule


def group_members(groups: np.ndarray) -> np.ndarray:
    """Rows of each group as ``(n_groups, G)`` indices, from a group id per row (-1: in no prunable group).

    Every group must have the same number of rows; groups are numbered 0..n_groups-1 by first appearance.
    """
    groups = np.asarray(groups, dtype=np.int64)
    ids = [int(x) for x in dict.fromkeys(groups[groups >= 0].tolist())]
    members = [np.flatnonzero(groups == gid) for gid in ids]
    sizes = {m.size for m in members}
    if len(sizes) > 1:
        raise ValueError(f"GroupPruning: groups have different sizes {sorted(sizes)}; every group needs G rows")
    width = sizes.pop() if sizes else 0
    return np.array(members, dtype=np.int64).reshape(len(members), width)


class GroupPruning(StoppingCriteria):
    """Stop the rows ``rule`` says can no longer be kept; count decode steps and tokens.

    Parameters
    ----------
    rule:
        A :class:`~gfpo_filters.pruning.PruneRule`, or None to count only.
    groups:
        ``(B,)`` group id per batch row, -1 for rows in no prunable group (e.g. groups that span processes).
    k:
        Completions kept per group: one int, or one per group id.
    prompt_width:
        Columns of ``input_ids`` before the first generated token (the padded prompt).
    eos_token_ids:
        Tokens that end a completion (the trainer counts that token in the completion's length).

    After generation: ``pruned`` (B,) rows stopped by the rule, ``lengths`` (B,) tokens each row wrote
    (a finished row's end-of-sequence token included; a pruned row's tokens before it stopped), ``finished``
    (B,) and ``steps`` (decode steps run).
    """

    def __init__(
        self,
        rule: PruneRule | None,
        groups: Any,
        k: Any,
        prompt_width: int,
        eos_token_ids: Any,
    ) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        self.rule = rule
        self.members = group_members(groups)
        k = np.asarray(k, dtype=np.int64)
        self.k = np.full(len(self.members), int(k), dtype=np.int64) if k.ndim == 0 else k
        self.prompt_width = int(prompt_width)
        self.eos = torch.as_tensor(list(eos_token_ids), dtype=torch.long)
        n = groups.size
        self.finished = np.zeros(n, dtype=bool)
        self.pruned = np.zeros(n, dtype=bool)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        t = input_ids.shape[1] - self.prompt_width
        if t <= self.steps:  # not a new step (a second call for the same ids): state is up to date
            return torch.as_tensor(self.pruned, device=input_ids.device)
        self.steps = t
        active = ~self.finished & ~self.pruned
        last = input_ids[:, -1].detach().cpu()
        self.lengths[active] = t
        self.finished |= active & torch.isin(last, self.eos).numpy()
        if self.rule is not None and self.members.size and (~self.finished & ~self.pruned).any():
            m = self.members
            now = self.rule(self.finished[m], self.lengths[m], None, self.k)
            rows = m[now]
            self.pruned[rows[~self.pruned[rows]]] = True
        return torch.as_tensor(self.pruned, device=input_ids.device)

    def stats(self) -> dict[str, float]:
        """What generation cost: decode steps, tokens written, and the share of rows pruned."""
        n = self.lengths.size
        return {
            "decode_steps": float(self.steps),
            "generated_tokens": float(self.lengths.sum()),
            "pruned_rows": float(self.pruned.sum()),
            "rows": float(n),
        }
