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


class GroupState:
    """Decoding state of a batch's rows by group, and the rule that stops them (see :mod:`gfpo_filters.pruning`).

    ``groups``: ``(B,)`` group id per row, -1 for rows in no prunable group (e.g. groups that span processes);
    ``k``: completions kept per group, one int or one per group id. Arrays after :meth:`observe` calls:
    ``finished``, ``pruned`` and ``lengths`` (tokens each row wrote: a finished row's end-of-sequence token
    included, a pruned row's tokens before it stopped).
    """

    def __init__(self, rule: PruneRule | None, groups: Any, k: Any) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        self.rule = rule
        self.members = group_members(groups)
        k = np.asarray(k, dtype=np.int64)
        self.k = np.full(len(self.members), int(k), dtype=np.int64) if k.ndim == 0 else k
        n = groups.size
        self.finished = np.zeros(n, dtype=bool)
        self.pruned = np.zeros(n, dtype=bool)
        self.lengths = np.zeros(n, dtype=np.int64)

    @property
    def running(self) -> np.ndarray:
        return ~self.finished & ~self.pruned

    def observe(self, rows: Any, lengths: Any, finished: Any) -> None:
        """Rows ``rows`` have written ``lengths`` tokens; ``finished``: those that ended (stopped rows: ignored)."""
        rows = np.asarray(rows, dtype=np.int64)
        live = ~self.pruned[rows] & ~self.finished[rows]
        rows = rows[live]
        self.lengths[rows] = np.asarray(lengths, dtype=np.int64)[live]
        self.finished[rows] |= np.asarray(finished, dtype=bool)[live]

    def prune(self) -> np.ndarray:
        """Apply the rule; return the rows it newly stops."""
        if self.rule is None or not self.members.size or not self.running.any():
            return np.zeros(0, dtype=np.int64)
        m = self.members
        rows = m[self.rule(self.finished[m], self.lengths[m], None, self.k)]
        rows = rows[~self.pruned[rows]]
        self.pruned[rows] = True
        return rows

    def stats(self) -> dict[str, float]:
        """Tokens written, rows pruned, rows."""
        return {
            "generated_tokens": float(self.lengths.sum()),
            "pruned_rows": float(self.pruned.sum()),
            "rows": float(self.lengths.size),
        }


class GroupPruning(StoppingCriteria):
    """A transformers ``StoppingCriteria``: stop the rows ``rule`` says can no longer be kept; count decode steps.

    ``rule``, ``groups`` and ``k`` as for :class:`GroupState`; ``prompt_width``: columns of ``input_ids`` before
    the first generated token (the padded prompt); ``eos_token_ids``: tokens that end a completion. After
    generation: ``state`` (a :class:`GroupState`; also ``pruned``, ``lengths``, ``finished``) and ``steps``, the
    decode steps run.
    """

    def __init__(self, rule: PruneRule | None, groups: Any, k: Any, prompt_width: int, eos_token_ids: Any) -> None:
        self.state = GroupState(rule, groups, k)
        self.prompt_width = int(prompt_width)
        self.eos = torch.as_tensor(list(eos_token_ids), dtype=torch.long)
        self.steps = 0

    pruned = property(lambda self: self.state.pruned)
    lengths = property(lambda self: self.state.lengths)
    finished = property(lambda self: self.state.finished)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        t = input_ids.shape[1] - self.prompt_width
        if t > self.steps:  # a new decode step (a second call for the same ids changes nothing)
            self.steps = t
            state = self.state
            rows = np.flatnonzero(state.running)
            last = input_ids[rows, -1].detach().cpu()
            state.observe(rows, np.full(rows.size, t), torch.isin(last, self.eos).numpy())
            state.prune()
        return torch.as_tensor(self.state.pruned, device=input_ids.device)

    def stats(self) -> dict[str, float]:
        """What generation cost: decode steps, tokens written, and the rows pruned."""
        return {"decode_steps": float(self.steps), **self.state.stats()}


def stream_with_pruning(
    manager: Any, inputs: list[list[int]], state: GroupState, max_new_tokens: int | None, eos_token_ids: Any
) -> list[list[int]]:
    """Continuous batching with pruning: stream every request of a running transformers
    ``ContinuousBatchingManager``, feed each update to ``state`` and cancel the requests its rule stops.

    A cancelled request frees its cache and never returns, so its tokens are those of its last streamed update.
    Returns the tokens of every request, in input order. Requests progress at different rates here, which is
    what the rules' tie clause is for.
    """
    ids = manager.add_requests(inputs=inputs, max_new_tokens=max_new_tokens, streaming=True)
    row_of = {rid: i for i, rid in enumerate(ids)}
    tokens: list[list[int]] = [[] for _ in inputs]
    eos = set(int(x) for x in eos_token_ids)
    while state.running.any():
        result = manager.get_result(timeout=1)
        if result is None:
            if not manager.is_running():
                raise RuntimeError("continuous batching stopped before every request finished (see its log)")
            continue
        row = row_of.get(result.request_id)
        if row is None or not state.running[row]:
            continue
        if result.error is not None:
            raise RuntimeError(f"continuous batching request {result.request_id} failed: {result.error}")
        tokens[row] = list(result.generated_tokens)
        ended = result.is_finished() or (bool(tokens[row]) and tokens[row][-1] in eos)
        state.observe([row], [len(tokens[row])], [ended])
        for stop in state.prune().tolist():
            manager.cancel_request(ids[stop])
    return tokens


def engine_with_pruning(engine: Any, prompts: list[Any], sampling_params: Any, state: GroupState) -> tuple[list, int]:
    """vLLM with pruning: drive an ``LLMEngine`` (``LLM.llm_engine``) one request per row, feed every step's
    outputs to ``state`` and abort the requests its rule stops.

    ``sampling_params`` must ask for one completion per request (``n=1``) and cumulative outputs (vLLM's
    default), so each step's output holds the tokens so far. An aborted request returns nothing through the
    synchronous engine, so its output is the last one seen. Returns the outputs in prompt order (what
    ``LLM.generate`` returns) and the number of engine steps run.
    """
    if getattr(sampling_params, "n", 1) != 1:
        raise ValueError(f"pruning with vLLM needs one completion per request (n=1), got n={sampling_params.n}")
    tag = f"gfpo-{id(state):x}"
    external = [f"{tag}-{i}" for i in range(len(prompts))]
    row_of = {rid: i for i, rid in enumerate(external)}
    for i, (rid, prompt) in enumerate(zip(external, prompts)):
        internal = engine.add_request(rid, prompt, sampling_params)
        row_of[internal] = i
    last: list[Any] = [None] * len(prompts)
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            row = row_of.get(out.request_id)
            if row is None or state.pruned[row]:
                continue
            last[row] = out
            tokens = out.outputs[0].token_ids
            state.observe([row], [len(tokens)], [out.finished])
        stop = state.prune()
        if stop.size:
            engine.abort_request([external[i] for i in stop.tolist()])
    missing = [i for i, out in enumerate(last) if out is None]
    if missing:
        raise RuntimeError(f"vLLM returned no output for request(s) {missing[:5]} (rows of the batch)")
    return last, steps
