"""Pruning for GFPOTrainer on TRL's transformers ``generate`` path (TRL 1.7.1 and 1.16).

:class:`PruningMixin` sits between GFPOTrainer and GRPOTrainer and overrides two methods:

* ``_generate_single_turn``: while training, it hands ``model.generate`` a
  :class:`~gfpo_filters.generation.GroupPruning` criterion for the groups wholly on this process (on the continuous
  batching path, it streams the requests itself and cancels the pruned ones: ``stream_with_pruning``), cuts each
  pruned row's completion to the tokens it wrote, and logs ``gfpo/pruned_fraction``, ``gfpo/decode_steps``,
  ``gfpo/generated_tokens`` and ``gfpo/generation_seconds`` (the decode steps and tokens are counted on this
  path whether or not a rule prunes).
* ``_calculate_rewards``: calls the reward functions on the rows that were not pruned only; pruned rows get a
  NaN reward (all functions), so the GFPO step never keeps them.

Which rule a run uses: :func:`gfpo_filters.pruning.plan_pruning` with ``GFPOConfig.gfpo_prune`` (``auto``: on
where exact) and what this adapter adds: transformers ``generate`` and continuous batching only (the vLLM paths
are not built, docs/pruning.md says why), no tools or environments (a multi-turn rollout calls generate again on
other rows) and rules that need no rewards during generation (TRL scores after generation). The adapter never
rounds the kept rows up with next-ranked completions, and its lengths are the tokens written whatever masks the
loss (``mask_truncated_completions`` included), so neither changes what an exact rule keeps.

Groups that span processes are not pruned: each process decodes its rows in its own loop, and a shared decision
would need a collective call per decode step. With TRL's sampler a process holds whole groups when its rows per
generation are a multiple of G.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import trl.trainer.grpo_trainer as grpo_module
from transformers import StoppingCriteriaList

from gfpo_filters.generation import GroupPruning, GroupState, engine_with_pruning, stream_with_pruning
from gfpo_filters.pruning import EXACT, OFF, PruningPlan, plan_pruning

logger = logging.getLogger(__name__)


def unsupported_path(trainer: Any) -> str:
    """Why this trainer's generation cannot be pruned here, or "" (the transformers ``generate`` path)."""
    if getattr(trainer, "use_vllm", False):
        mode = getattr(trainer, "vllm_mode", "?")
        if mode != "colocate":
            return (
                f"vLLM generation in {mode!r} mode is not built: the client asks for n=G completions in one request, "
                "and pruning needs one request per completion, aborted through the server (docs/pruning.md)"
            )
        if getattr(trainer.args, "vllm_tensor_parallel_size", 1) > 1:
            return "vLLM colocate with tensor parallelism is not built: the engine sees the rows of several processes"
    if getattr(trainer, "rollout_func", None) is not None:
        return "a rollout_func generates the completions: GFPOTrainer does not see its decoding"
    if getattr(trainer, "tools", None) or getattr(trainer, "environment_factories", None):
        return "tools or environments run multi-turn rollouts, which call generate again on other rows"
    return ""


def decide(trainer: Any) -> PruningPlan:
    """The run's pruning plan: ``GFPOConfig.gfpo_prune`` against the filter, the settings and the generation path.

    ``auto`` is off (with the reason logged) where pruning would not be exact or the path is not built;
    ``exact`` and ``approximate`` raise a ValueError there instead.
    """
    args = trainer.args
    mode = getattr(args, "gfpo_prune", "off")
    filter_fn = getattr(trainer, "group_filter_func", None)
    if filter_fn is None or mode == "off":
        return PruningPlan(None, OFF, "no group filter" if filter_fn is None else "gfpo_prune='off'")
    path = unsupported_path(trainer)
    plan = plan_pruning(
        filter_fn,
        mode,
        keep_signal=getattr(args, "keep_signal", "off"),
        adaptive=getattr(args, "adaptive_k", None) is not None,
        first_m=getattr(args, "gfpo_prune_m", None),
    )
    if plan.rule is not None and plan.rule.needs_rewards:
        why = f"the pruning rule {plan.rule!r} reads rewards as completions finish, and TRL scores after generation"
        if mode != "auto":
            raise ValueError(f"gfpo_prune={mode!r}: {why}; use gfpo_prune='auto' (off) or 'approximate'")
        plan = PruningPlan(None, OFF, why)
    if path and plan.rule is not None:
        if mode != "auto":
            raise ValueError(f"gfpo_prune={mode!r}: {path}. Use gfpo_prune='auto' or 'off'")
        plan = PruningPlan(None, OFF, path)
    if plan.rule is None:
        logger.info("GFPOTrainer: no pruning during generation: %s", plan.reason)
    elif plan.exactness != EXACT:
        logger.warning("GFPOTrainer: approximate pruning with %r changes the selection: %s", plan.rule, plan.reason)
    return plan


def local_groups(n_local: int, g: int, rank: int) -> np.ndarray:
    """Group id (0-based, local) per row of this process, -1 for rows of groups that span processes.

    Rows are laid out as GFPOTrainer gathers them: global row ``rank * n_local + j`` belongs to group
    ``(rank * n_local + j) // g``.
    """
    rows = rank * n_local + np.arange(n_local)
    group = rows // g
    first, last = rank * n_local, (rank + 1) * n_local
    whole = (group * g >= first) & ((group + 1) * g <= last)
    ids = np.where(whole, group - (group[whole].min() if whole.any() else 0), -1)
    return ids


def _vllm_with_pruning(llm: Any, state: GroupState, steps_seen: list[int]) -> Any:
    """A stand-in for ``LLM.generate`` (TRL's colocate call) that runs the engine itself and aborts pruned requests."""

    def generate(prompts, sampling_params=None, use_tqdm=False, **kwargs):
        if kwargs.get("lora_request") is not None:
            raise NotImplementedError("pruning with vLLM LoRA requests is not built; set gfpo_prune='off'")
        outputs, steps_seen[0] = engine_with_pruning(llm.llm_engine, prompts, sampling_params, state)
        return outputs

    return generate


def _with_criterion(generate: Any, criterion: GroupPruning) -> Any:
    """``model.generate`` with ``criterion`` added to its stopping criteria (and told the prompt's width)."""

    def pruned_generate(*args: Any, **kwargs: Any) -> Any:
        criterion.prompt_width = kwargs["input_ids"].shape[1]
        kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []), criterion])
        return generate(*args, **kwargs)

    return pruned_generate


@contextlib.contextmanager
def _local_gather():
    """Let GRPOTrainer._calculate_rewards return this process's rewards ungathered (it gathers with the module's
    ``gather``); the caller gathers the full tensor itself, so processes with different pruned counts agree."""
    original = grpo_module.gather
    grpo_module.gather = lambda tensor: tensor
    try:
        yield
    finally:
        grpo_module.gather = original


class PruningMixin:
    """GFPOTrainer's pruning during generation; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gfpo_prune_plan = decide(self)
        self._gfpo_pruned: np.ndarray | None = None

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        plan = getattr(self, "_gfpo_prune_plan", None)
        if plan is None or not self.model.training or unsupported_path(self):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        continuous = getattr(self, "use_transformers_continuous_batching", False)
        if (continuous or getattr(self, "use_vllm", False)) and plan.rule is None:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)  # TRL's own loop when nothing prunes
        acc = self.accelerator
        groups = local_groups(len(prompt_ids), self.num_generations, acc.process_index)
        eos = getattr(self, "eos_token_ids", None) or [self._tokenizer.eos_token_id]
        k = self.args.num_remains_in_group or self.num_generations
        model = acc.unwrap_model(self.model_wrapped)
        steps_seen = [0]
        if getattr(self, "use_vllm", False):
            tracker = state = GroupState(plan.rule, groups, k)
            model = self.vllm_generation.llm
            name, replacement = "generate", _vllm_with_pruning(model, state, steps_seen)
        elif continuous:
            tracker = state = GroupState(plan.rule, groups, k)
            name, replacement = "generate_batch", self._continuous_batching_with_pruning(model, state, eos)
        else:
            tracker = GroupPruning(plan.rule, groups, k, 0, eos)
            state = tracker.state
            name, replacement = "generate", _with_criterion(model.generate, tracker)
        setattr(model, name, replacement)
        start = time.perf_counter()
        try:
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        finally:
            delattr(model, name)
        seconds = time.perf_counter() - start
        # A pruned row keeps the tokens it wrote (generate padded it, and TRL may have read a pad as its end).
        for row in np.flatnonzero(state.pruned).tolist():
            completion_ids[row] = list(completion_ids[row][: state.lengths[row]])
            if logprobs is not None:
                logprobs[row] = list(logprobs[row][: state.lengths[row]])
        self._gfpo_pruned = state.pruned.copy() if plan.rule is not None else None
        if isinstance(tracker, GroupPruning):
            steps = tracker.steps
        else:  # vLLM: engine steps; continuous batching: the longest row's tokens (a lower bound)
            steps = steps_seen[0] or int(state.lengths.max(initial=0))
        self._log_pruning(state, steps, seconds)
        return completion_ids, logprobs

    @staticmethod
    def _continuous_batching_with_pruning(model: Any, state: GroupState, eos: Any) -> Any:
        """A stand-in for ``model.generate_batch`` (TRL's continuous batching call) that prunes as requests stream."""

        def generate_batch(inputs, generation_config=None, continuous_batching_config=None, **kwargs):
            config = generation_config or model.generation_config
            max_new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
            with model.continuous_batching_context_manager(
                generation_config=generation_config,
                continuous_batching_config=continuous_batching_config,
                block=True,
                timeout=5,
            ) as manager:
                tokens = stream_with_pruning(manager, inputs, state, max_new_tokens, eos)
            return {f"row_{i}": SimpleNamespace(generated_tokens=ids) for i, ids in enumerate(tokens)}

        return generate_batch

    def _log_pruning(self, state: GroupState, steps: int, seconds: float) -> None:
        acc = self.accelerator
        stats = state.stats()
        local = torch.tensor(
            [stats["pruned_rows"], stats["rows"], stats["generated_tokens"], float(steps), seconds],
            device=acc.device,
            dtype=torch.float64,
        )
        every = acc.gather(local[None]).reshape(-1, local.numel()) if acc.num_processes > 1 else local[None]
        pruned, rows, tokens = every[:, 0].sum(), every[:, 1].sum(), every[:, 2].sum()
        metrics = self._metrics["train"]
        metrics["gfpo/pruned_fraction"].append(float(pruned / rows) if rows > 0 else float("nan"))
        metrics["gfpo/generated_tokens"].append(float(tokens))
        metrics["gfpo/decode_steps"].append(float(every[:, 3].max()))
        metrics["gfpo/generation_seconds"].append(float(every[:, 4].max()))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        pruned, self._gfpo_pruned = getattr(self, "_gfpo_pruned", None), None
        if pruned is None or len(pruned) != len(prompts):
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        keep = np.flatnonzero(~pruned).tolist()
        n_funcs = len(self.reward_funcs)
        full = torch.full((len(prompts), n_funcs), torch.nan, device=self.accelerator.device)
        if keep:
            with _local_gather():
                local = super()._calculate_rewards(
                    [inputs[i] for i in keep],
                    [prompts[i] for i in keep],
                    [completions[i] for i in keep],
                    [completion_ids_list[i] for i in keep],
                )
            full[torch.as_tensor(keep, device=full.device)] = local.to(full.dtype)
        return self.accelerator.gather(full) if self.accelerator.num_processes > 1 else full
