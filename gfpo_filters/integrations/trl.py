"""GFPOTrainer: GFPO as a thin layer over TRL's GRPOTrainer (TRL 1.7.1 to 1.16), for every GRPO run TRL supports.

GRPOTrainer generates, scores and computes GRPO advantages for the whole generation batch.
This adapter then, on the training batch only:

1. takes the gathered rewards from ``_calculate_rewards`` (it wraps that method to see them),
2. gathers the completions of all processes, and their lengths from the loss mask (tool output is not the
   policy's), and cuts them into groups ``[i*G : (i+1)*G]``,
3. on process 0 only, runs :func:`gfpo_filters.step.gfpo_step`: the filter once on all groups, the top k of each
   group, then a few next-ranked completions until the kept rows are a multiple of processes x
   ``steps_per_generation``, and the advantages over the kept set (population std, paper Eq. 1; with
   ``multi_objective_aggregation="normalize_then_sum"`` each reward function over it, then their weighted sum),
4. broadcasts that decision, so every process trains the same rows whatever its own state, and
5. keeps only the kept rows, an equal contiguous share per process, with no padding row: TRL's ``_prepare_inputs``
   then cuts each share into the equal micro-batches GRPOTrainer would train with ``per_device_train_batch_size``
   = kept / (processes x ``steps_per_generation``), so the update is GRPOTrainer's on the kept rows, for every loss
   type and loss term, by construction (tests/test_trainer_exact.py), at about k/G of GRPO's backward cost.

GRPOTrainer internals this relies on (checked on TRL 1.7.1 and 1.16.0; docs/trainer.md keeps the same list):
``__init__``'s signature (every argument is forwarded as given; only ``group_filter_func`` is ours);
``_calculate_rewards(inputs, prompts, completions, completion_ids_list)`` returning rewards gathered over
processes in process order (environment-owned rewards included); ``_generate_and_score_completions(inputs)``
returning a dict of per-row tensors (``prompt_ids``, ``prompt_mask``, ``completion_ids``, ``completion_mask``,
``advantages``, optional log-prob tensors, ``importance_sampling_ratio``, ``tool_mask``, image and token-type
fields, padded as :data:`COMPLETION_FIELDS` says), per-row lists (``num_images``) and ``num_items_in_batch`` (the
gathered loss-mask sum); ``_prepare_inputs`` shuffling and splitting the batch into ``steps_per_generation`` equal
chunks; ``trl.trainer.utils.split_pixel_values_by_grid`` and ``unsplit_pixel_values_by_grid``; the attributes
``reward_weights``, ``num_generations``, ``scale_rewards``, ``multi_objective_aggregation``, ``pad_to_multiple_of``,
``_metrics``, ``_logs``, ``_tokenizer`` and ``args.steps_per_generation``; and ``_save_checkpoint`` /
``_load_optimizer_and_scheduler`` for the filter and adaptive-k state.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from gfpo_filters.adaptive import AdaptiveK
from gfpo_filters.base import GroupFilter
from gfpo_filters.integrations.trl_pruning import PruningMixin
from gfpo_filters.pruning import MODES as PRUNE_MODES
from gfpo_filters.selection import normalize_then_sum
from gfpo_filters.step import (
    accepted_kwargs,
    filter_state,
    gfpo_step,
    group_rows,
    keep_signal_mode,
    load_filter_state,
    resolve_filter,
)

logger = logging.getLogger(__name__)

STATE_FILE = "gfpo_state.json"
#: Fields of the generation batch whose second dimension is the prompt (left-padded), and the value TRL pads with.
PROMPT_FIELDS = {"prompt_ids": "pad", "prompt_mask": 0}
#: Fields whose second dimension is the completion (right-padded), and the value a column past a row's end gets when
#: rows of several processes are joined. Where TRL pads explicitly, its value (``pad`` = the pad token id, masks 0,
#: ``tool_mask`` 1, ``sampling_per_token_logps`` 0, ``importance_sampling_ratio`` exp(0) = 1: VESPO sums its log over
#: every column, unmasked). Where TRL's value is a model's output (old and reference log-probs), one that keeps each
#: masked loss term finite: old 0 (ratio exp(logp - 0) <= 1), reference -1e4 (KL's exp(ref - logp) = 0, not inf).
COMPLETION_FIELDS = {
    "completion_ids": "pad",
    "completion_mask": 0,
    "tool_mask": 1,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": -1e4,
    "sampling_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
}
#: Fields whose second dimension is the prompt followed by the completion (VLMs' token types); split in two to move.
JOINT_FIELDS = ("token_type_ids", "mm_token_type_ids")
#: Loss types whose normaliser is num_items_in_batch (a token count over the generation batch).
TOKEN_SUM_LOSSES = ("dapo", "cispo", "vespo")


@dataclass
class GFPOConfig(GRPOConfig):
    """GRPOConfig plus the GFPO settings.

    With ``adaptive_k`` unset, every group keeps ``num_remains_in_group``. With ``adaptive_k``
    (4 values: very hard, hard, medium, easy), k follows the prompt's difficulty bucket after
    ``adaptive_warmup_steps`` optimizer steps; before that, and for groups with no reward at
    all, every group keeps ``num_remains_in_group``.
    """

    group_filter: str | None = field(
        default=None,
        metadata={
            "help": "Name of a registered group filter ('gfpo-filters list'), e.g. 'token_efficiency' or 'length'. "
            "The trainer's group_filter_func argument, when given, is used instead (it must not differ)."
        },
    )
    group_filter_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Parameters of group_filter, a dict (a JSON object on the command line)."},
    )
    num_remains_in_group: int | None = field(
        default=None,
        metadata={"help": "k: completions kept per group (2 .. num_generations - 1). Required with a filter."},
    )
    adaptive_k: list[int] | None = field(
        default=None,
        metadata={"help": "Adaptive Difficulty GFPO: k for very hard, hard, medium, easy prompts, e.g. 8 8 6 4."},
    )
    adaptive_warmup_steps: int = field(
        default=0, metadata={"help": "Optimizer steps during which every group keeps num_remains_in_group."}
    )
    adaptive_window: int = field(
        default=4096, metadata={"help": "How many recent prompts' difficulties define the quartiles."}
    )
    gfpo_loss_normalizer: str = field(
        default="kept",
        metadata={
            "help": "Token count that token-sum losses (dapo, cispo, vespo) divide by: 'kept' (tokens of the kept "
            "completions, as if they were the whole batch) or 'all' (tokens of all G completions, the paper's Eq. 2)."
        },
    )
    keep_signal: str = field(
        default="off",
        metadata={
            "help": "Keep reward variance in kept sets that lost it (docs/keep_signal.md): 'off' or False (the "
            "paper), True (= 'swap') or a mode: 'swap', 'swap_long', 'group_baseline', 'balanced'."
        },
    )

    gfpo_prune: str = field(
        default="auto",
        metadata={
            "help": "Stop generating completions that can no longer be kept (docs/pruning.md): 'auto' (where exact: "
            "the length filter with keep_signal off, on the generate, continuous batching and vLLM colocate paths), "
            "'exact' (as auto, an error where not exact), 'approximate' (stop a group's rest once "
            "max(gfpo_prune_m, k) have finished) or 'off'."
        },
    )
    gfpo_prune_m: int | None = field(
        default=None,
        metadata={"help": "gfpo_prune='approximate': completions per group to finish before the rest stop (>= k)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.gfpo_prune not in PRUNE_MODES:
            raise ValueError(f"gfpo_prune must be one of {PRUNE_MODES}, got {self.gfpo_prune!r}")
        self.keep_signal = keep_signal_mode(self.keep_signal)  # a mode name; an unknown one fails here
        if self.keep_signal == "group_baseline" and self.multi_objective_aggregation == "normalize_then_sum":
            raise ValueError(
                "keep_signal='group_baseline' standardises the summed reward over the whole group; it does not "
                "combine with multi_objective_aggregation='normalize_then_sum' (keep_signal=True does)"
            )
        if isinstance(self.group_filter_kwargs, str):
            try:
                self.group_filter_kwargs = json.loads(self.group_filter_kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"group_filter_kwargs must be a JSON object, got {self.group_filter_kwargs!r}") from e
        if self.group_filter_kwargs is not None and not isinstance(self.group_filter_kwargs, dict):
            raise ValueError(f"group_filter_kwargs must be a dict, got {type(self.group_filter_kwargs).__name__}")
        if self.group_filter_kwargs and self.group_filter is None:
            raise ValueError("group_filter_kwargs is set but group_filter is not: name the filter they belong to")
        if self.group_filter is not None and self.num_remains_in_group is None:
            raise ValueError(
                f"group_filter={self.group_filter!r} needs num_remains_in_group (k, 2 <= k < num_generations)"
            )
        g = self.num_generations
        k = self.num_remains_in_group
        if k is not None and (not isinstance(k, int) or not 2 <= k <= g - 1):
            raise ValueError(
                f"num_remains_in_group={k!r} is out of range: with num_generations={g} it must be an int from 2 "
                f"to {g - 1} (k=1 leaves no reward variance, so every advantage would be 0; k={g} is plain GRPO)"
            )
        if self.adaptive_k is not None:
            values = list(self.adaptive_k)
            if k is None:
                raise ValueError("adaptive_k needs num_remains_in_group too: it is the k used during warm-up")
            if len(values) != 4 or not all(isinstance(v, int) and 2 <= v <= g for v in values):
                raise ValueError(
                    f"adaptive_k={values!r} must be 4 ints (very hard, hard, medium, easy), each from 2 to "
                    f"num_generations={g}"
                )
            if self.adaptive_warmup_steps < 0 or self.adaptive_window < 1:
                raise ValueError("adaptive_warmup_steps must be >= 0 and adaptive_window >= 1")
        if self.gfpo_loss_normalizer not in ("kept", "all"):
            raise ValueError(f"gfpo_loss_normalizer must be 'kept' or 'all', got {self.gfpo_loss_normalizer!r}")
        if self.gfpo_loss_normalizer == "all" and self.loss_type not in TOKEN_SUM_LOSSES:
            raise ValueError(
                f"gfpo_loss_normalizer='all' only applies to token-sum losses {TOKEN_SUM_LOSSES}; "
                f"loss_type={self.loss_type!r} normalises within each micro-batch"
            )


#: GRPOTrainer's constructor parameters in the installed TRL (GFPOTrainer takes them all).
_GRPO_PARAMETERS = inspect.signature(GRPOTrainer.__init__).parameters


def _filter_from(group_filter_func: Any, config: Any) -> Any:
    """The run's filter: ``group_filter_func`` if given, else the one the configuration names; both must agree."""
    name = getattr(config, "group_filter", None)
    params = getattr(config, "group_filter_kwargs", None) or {}
    given = resolve_filter(group_filter_func)
    if name is None:
        return given
    configured = resolve_filter(name, params)
    if given is None:
        return configured
    same = isinstance(given, GroupFilter) and given.name == configured.name and given.params == configured.params
    if not same:
        raise ValueError(
            f"two different group filters: group_filter_func={given!r} and GFPOConfig(group_filter={name!r}, "
            f"group_filter_kwargs={params!r}); give one of them"
        )
    return given


def _loss_mask(batch: dict[str, Any]) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion mask without tool-result tokens (``tool_mask`` 0)."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


def _side(key: str) -> str | None:
    """Which end of a row a field's second dimension belongs to: 'prompt' (left-padded), 'completion', or None."""
    if key in PROMPT_FIELDS or key.endswith(":prompt"):
        return "prompt"
    if key in COMPLETION_FIELDS or key.endswith(":completion"):
        return "completion"
    return None


def _split_joint(batch: dict[str, Any]) -> dict[str, Any]:
    """Cut (prompt + completion)-wide fields into their prompt and completion parts, so each is padded and trimmed
    like the prompt and completion fields."""
    width = batch["prompt_ids"].shape[1]
    out = {}
    for key, value in batch.items():
        if key in JOINT_FIELDS and torch.is_tensor(value) and value.ndim == 2:
            out[f"{key}:prompt"], out[f"{key}:completion"] = value[:, :width], value[:, width:]
        else:
            out[key] = value
    return out


def _join_joint(batch: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in batch.items() if not key.endswith((":prompt", ":completion"))}
    for key in JOINT_FIELDS:
        if f"{key}:prompt" in batch:
            out[key] = torch.cat([batch[f"{key}:prompt"], batch[f"{key}:completion"]], dim=1)
    return out


class GFPOTrainer(PruningMixin, GRPOTrainer):
    """GRPOTrainer that trains on the top ``num_remains_in_group`` completions of each group.

    ``group_filter_func`` is a registered filter name (``"token_efficiency"``), a filter from
    :func:`gfpo_filters.load_filter`, or any callable
    ``f(group_completions=..., group_rewards=..., **kwargs) -> list[list[float]]`` (higher = keep).
    """

    def __init__(self, *args: Any, group_filter_func: Any = None, **kwargs: Any) -> None:
        # Every argument of the installed GRPOTrainer, positional or by name, goes to it untouched (and so does any
        # argument a newer TRL adds); only group_filter_func is GFPO's. The signature shown is GRPOTrainer's plus it.
        names = [n for n in _GRPO_PARAMETERS if n != "self"]
        at = names.index("args") if "args" in names else len(args)
        config = kwargs["args"] if "args" in kwargs else (args[at] if len(args) > at else None)
        if "callbacks" in names and len(args) > names.index("callbacks"):
            callbacks = args[names.index("callbacks")]
            if callbacks is not None and not isinstance(callbacks, (list, tuple)):
                raise TypeError(
                    f"GFPOTrainer's positional argument {names.index('callbacks') + 1} is GRPOTrainer's callbacks, got "
                    f"{callbacks!r}: pass the filter by name, group_filter_func=... (TRL 1.7.1's GFPOTrainer took it "
                    "at that position)"
                )
        k = getattr(config, "num_remains_in_group", None)
        group_filter_func = _filter_from(group_filter_func, config)
        if group_filter_func is not None and k is None:
            raise ValueError(
                "a group_filter_func was given but num_remains_in_group is not set: pass "
                "args=GFPOConfig(num_remains_in_group=k, ...) with 2 <= k < num_generations"
            )
        if group_filter_func is None and k is not None:
            raise ValueError(
                f"num_remains_in_group={k} is set but no group_filter_func was given and GFPOConfig.group_filter is "
                "not set: name a filter, e.g. group_filter='token_efficiency' (see 'gfpo-filters list')"
            )
        self.group_filter_func = group_filter_func
        super().__init__(*args, **kwargs)
        config = self.args
        self.num_remains_in_group = k
        if self.group_filter_func is None:
            logger.warning("GFPOTrainer without a group filter: it trains exactly like GRPOTrainer")
            return
        self._filter_kwargs = accepted_kwargs(self.group_filter_func)
        self._adaptive = None
        if config.adaptive_k is not None:
            self._adaptive = AdaptiveK(config.adaptive_k, k, config.adaptive_warmup_steps, config.adaptive_window)
        self._rewards_capture: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ GRPOTrainer hooks
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_capture = (prompts, completions, completion_ids_list, rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._rewards_capture = None
        output = super()._generate_and_score_completions(inputs)
        if self.group_filter_func is None or not self.model.training:
            return output  # evaluation is unfiltered
        if self._rewards_capture is None:
            raise RuntimeError(
                "GFPOTrainer: GRPOTrainer._generate_and_score_completions did not call _calculate_rewards; "
                "this TRL version is not supported (tested: 1.7.1 to 1.16)"
            )
        capture, self._rewards_capture = self._rewards_capture, None
        return self._filter_batch(output, *capture)

    # ------------------------------------------------------------------ the GFPO step
    def _filter_batch(self, output, prompts, completions, completion_ids_list, rewards_per_func):
        """Translate TRL's generation batch into groups, let process 0 run the GFPO step, and keep its rows."""
        acc = self.accelerator
        g = self.num_generations
        n_local = len(prompts)

        # One reward per completion, as GRPO sums them; unscorable (all functions None) -> NaN.
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        rewards = rewards.double().cpu().numpy()
        n_total = rewards.shape[0]
        if n_total != n_local * acc.num_processes or n_total % g:
            raise RuntimeError(
                f"GFPOTrainer: {n_total} gathered rewards do not form groups of {g} over "
                f"{acc.num_processes} process(es) with {n_local} rows each"
            )
        # A completion's length is the tokens the policy wrote: its loss mask, without tool-result tokens.
        lengths = _loss_mask(output).sum(dim=1)
        lengths = (acc.gather(lengths) if acc.num_processes > 1 else lengths).cpu().numpy().reshape(-1, g)
        # Gathered completions, cut into the right groups: rows [i*G, (i+1)*G) belong to prompt i.
        gathered = [gather_object(list(x)) for x in (completions, [list(ids) for ids in completion_ids_list], prompts)]
        result = error = None
        if acc.is_main_process:
            try:
                result = self._decide(rewards, rewards_per_func, weights, lengths, *gathered)
            except Exception as e:  # the other processes must hear of it, not wait for a decision
                error = e
        if acc.num_processes > 1:
            result, error_text = broadcast_object_list([result, None if error is None else repr(error)])
            if error is None and error_text is not None:
                raise RuntimeError(f"GFPOTrainer: process 0 failed to select rows: {error_text}")
        if error is not None:
            raise error
        self._log_selection(result, n_total)
        return self._select_rows(output, result, lengths.reshape(-1), n_local)

    def _decide(self, rewards, rewards_per_func, weights, lengths, completions, completion_ids, prompts):
        """Process 0's decision for the whole batch: k, the kept rows (a multiple of processes x
        steps_per_generation, so that they fill equal micro-batches) and their advantages."""
        g = self.num_generations
        result = gfpo_step(
            self.group_filter_func,
            completions=group_rows(completions, g),
            rewards=rewards.reshape(-1, g),
            k=self.num_remains_in_group,
            completion_ids=group_rows(completion_ids, g),
            lengths=lengths,
            prompts=prompts[::g],
            scale={True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards),
            adaptive=self._adaptive,
            global_step=self.state.global_step,
            filter_kwargs=self._filter_kwargs,
            keep_signal=getattr(self.args, "keep_signal", "off"),
            row_multiple=self.accelerator.num_processes * self.args.steps_per_generation,
        )
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":
            per_func = rewards_per_func.double().cpu().numpy().reshape(-1, g, rewards_per_func.shape[1])
            result.advantages = normalize_then_sum(per_func, result.kept, weights.double().cpu().numpy())
        return result

    def _select_rows(self, output, result, lengths, n_local):
        """Keep the decided rows of every per-row field, an equal contiguous share on each process, no padding row.

        The kept rows are a multiple of processes x ``steps_per_generation``, so TRL's ``_prepare_inputs`` (shuffle,
        then ``split_tensor_dict`` into ``steps_per_generation`` chunks) cuts each share into equal micro-batches:
        every micro-batch is one that GRPOTrainer with ``per_device_train_batch_size = kept / (processes x
        steps_per_generation)`` would train, and every loss normaliser of TRL's is the one it would use.

        Per-row fields are tensors whose first dimension is the row, and lists with one entry per row (``num_images``,
        and image tensors, which TRL's ``split_pixel_values_by_grid`` cuts into one entry per row: a row's images
        travel with it). Tensors move between processes with tensor gathers, lists (and row tensors of unknown
        layout) as objects.
        """
        acc = self.accelerator
        rank, world = acc.process_index, acc.num_processes
        kept_rows = np.flatnonzero(result.kept.reshape(-1))  # global row indices, in order
        n_kept = kept_rows.size
        share = n_kept // world
        if n_kept % (world * self.args.steps_per_generation):
            raise RuntimeError(
                f"GFPOTrainer: {n_kept} kept rows do not fill {world} x {self.args.steps_per_generation} equal "
                "micro-batches; gfpo_step's row_multiple should have rounded them up"
            )
        output = _split_joint(split_pixel_values_by_grid(output))

        tensors, objects, stacked = {}, {}, set()
        for key, value in output.items():
            if key == "advantages" or not (isinstance(value, list) or (torch.is_tensor(value) and value.ndim >= 1)):
                continue
            if len(value) != n_local:
                raise NotImplementedError(
                    f"GFPOTrainer cannot tell which rows batch field {key!r} belongs to: it has {len(value)} entries "
                    f"for {n_local} rows; please report this with your TRL version and model"
                )
            if isinstance(value, list):
                objects[key] = value
            elif _side(key) is None and world > 1:
                objects[key], stacked = list(value), stacked | {key}  # unknown layout: moved as one object per row
            else:
                tensors[key] = value

        if world == 1:
            index = torch.as_tensor(kept_rows, dtype=torch.long, device=acc.device)
            fields = {key: value[index] for key, value in tensors.items()}
            lists = {key: [value[i] for i in kept_rows.tolist()] for key, value in objects.items()}
        else:
            # Every process's kept rows in global order, then this process's contiguous share.
            local = (kept_rows >= rank * n_local) & (kept_rows < (rank + 1) * n_local)
            local_list = (kept_rows[local] - rank * n_local).tolist()
            local_idx = torch.as_tensor(local_list, dtype=torch.long, device=acc.device)
            rows = self._gather_kept_rows({key: value[local_idx] for key, value in tensors.items()}, kept_rows, n_local)
            begin = rank * share
            fields = {key: value[begin : begin + share] for key, value in rows.items()}
            lists = {
                key: gather_object([value[i] for i in local_list])[begin : begin + share]
                for key, value in objects.items()
            }
        mine = kept_rows[rank * share : (rank + 1) * share]

        fields = self._trim_width(fields)
        for key in stacked:
            fields[key] = torch.stack(lists.pop(key)).to(output[key][0].device)
        batch = {key: value for key, value in output.items() if key not in tensors and key not in objects}
        batch.update(fields)
        batch.update(lists)
        like = output["advantages"]
        batch["advantages"] = torch.as_tensor(result.advantages.reshape(-1)[mine]).to(like.device, like.dtype)
        if getattr(self.args, "gfpo_loss_normalizer", "kept") == "kept":
            # TRL's count: the loss tokens of the whole (kept) generation batch, all processes together.
            count = output["num_items_in_batch"]
            batch["num_items_in_batch"] = torch.full_like(count, float(lengths[kept_rows].sum()))
        # else GRPO's count over all G completions stays: the paper's Eq. 2
        return unsplit_pixel_values_by_grid(_join_joint(batch))

    def _gather_kept_rows(self, rows, kept_rows, n_local):
        """Every process's kept rows, concatenated in global row order, padded to common widths.

        Prompt fields are padded on the left, completion fields on the right, as TRL pads them.
        """
        acc = self.accelerator
        counts = [
            int(((kept_rows >= r * n_local) & (kept_rows < (r + 1) * n_local)).sum()) for r in range(acc.num_processes)
        ]
        most = max(counts)
        pad_id = getattr(getattr(self, "_tokenizer", None), "pad_token_id", None) or 0
        gathered = {}
        for key, value in rows.items():
            pad_value = PROMPT_FIELDS.get(key, COMPLETION_FIELDS.get(key, 0))
            pad_value = pad_id if pad_value == "pad" else pad_value
            if value.ndim >= 2:
                value = acc.pad_across_processes(value, dim=1, pad_index=pad_value, pad_first=_side(key) == "prompt")
            value = acc.pad_across_processes(value, dim=0, pad_index=pad_value)
            everything = acc.gather(value)
            gathered[key] = torch.cat([everything[r * most : r * most + counts[r]] for r in range(acc.num_processes)])
        return gathered

    def _trim_width(self, fields):
        """Drop the prompt columns (on the left) and completion columns (on the right) that no kept row uses: the
        width TRL's own batch of these rows would have (to ``pad_to_multiple_of``). Kept rows are often the short
        ones, and rows that moved between processes were padded to the widest process's batch."""
        multiple = getattr(self, "pad_to_multiple_of", None)
        for side, mask_key in (("prompt", "prompt_mask"), ("completion", "completion_mask")):
            mask = fields.get(mask_key)
            if mask is None or mask.numel() == 0:
                continue
            used = mask.any(dim=0).nonzero()
            full = mask.shape[1]
            width = (full - int(used.min()) if side == "prompt" else int(used.max()) + 1) if used.numel() else 1
            if multiple:
                width = math.ceil(width / multiple) * multiple
            if width >= full:
                continue
            cut = slice(full - width, None) if side == "prompt" else slice(None, width)
            fields = {
                key: value[:, cut] if _side(key) == side and value.ndim >= 2 and value.shape[1] == full else value
                for key, value in fields.items()
            }
        return fields

    # ------------------------------------------------------------------ logging
    def _log_selection(self, result, n_total):
        metrics = self._metrics["train"]
        for name, value in result.metrics.items():
            metrics[name].append(value)
        # The completions table shows GFPO advantages (0 when rejected) and what was kept.
        logs = getattr(self, "_logs", None)
        if isinstance(logs, dict) and "advantages" in logs and len(logs["advantages"]) >= n_total:
            for _ in range(n_total):
                logs["advantages"].pop()
            logs["advantages"].extend(result.advantages.reshape(-1).tolist())
            if "extra" in logs:
                logs["extra"]["gfpo_kept"].extend(result.kept.reshape(-1).tolist())

    # ------------------------------------------------------------------ checkpoints (filter and adaptive-k state)
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # Process 0 decides the rows, so its filter and adaptive-k state is the run's.
        if getattr(self, "group_filter_func", None) is not None and self.accelerator.is_main_process:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(filter_state(self.group_filter_func, self._adaptive), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if getattr(self, "group_filter_func", None) is None or checkpoint is None:
            return
        if self.accelerator.is_main_process:  # the others never run the filter
            path = os.path.join(checkpoint, STATE_FILE)
            state = None
            if os.path.exists(path):
                with open(path) as f:
                    state = json.load(f)
            load_filter_state(self.group_filter_func, self._adaptive, state)  # warns when state is missing


def _init_signature() -> inspect.Signature:
    """GRPOTrainer's constructor signature plus the keyword-only ``group_filter_func`` (what help() and IDEs show)."""
    params = list(_GRPO_PARAMETERS.values())
    plain = [p for p in params if p.kind is not p.VAR_KEYWORD]
    extra = inspect.Parameter("group_filter_func", inspect.Parameter.KEYWORD_ONLY, default=None)
    return inspect.Signature([*plain, extra, *[p for p in params if p.kind is p.VAR_KEYWORD]])


GFPOTrainer.__init__.__signature__ = _init_signature()
