"""GFPOTrainer: GFPO as a thin layer over TRL's GRPOTrainer (TRL 1.7.1 to 1.16), for every GRPO run TRL supports.

GRPOTrainer generates, scores and computes GRPO advantages for the whole generation batch.
This adapter then, on the training batch only:

1. takes the gathered rewards from ``_calculate_rewards`` (it wraps that method to see them),
2. gathers the completions of all processes and their lengths (the tokens the policy wrote: generated ids less
   tool-result tokens, whatever masks the loss), and cuts them into groups ``[i*G : (i+1)*G]``,
3. on process 0 only, runs :func:`gfpo_filters.step.gfpo_step`: the filter once on all groups, the top k of each
   group and the advantages over the kept set (population std, paper Eq. 1; with
   ``multi_objective_aggregation="normalize_then_sum"`` each reward function over it, then their weighted sum),
4. broadcasts that decision, so every process trains the same rows whatever its own state,
5. keeps each process's own kept rows, as TRL laid them out (rows never move: their old and reference log-probs
   were computed with that padding), and
6. cuts them into ``steps_per_generation`` micro-batches by :func:`micro_batch_plan`: in GRPOTrainer's own shape
   (equal counts that divide evenly) TRL's own shuffle and split, so the update is GRPOTrainer's on the kept rows
   bit for bit; otherwise micro-batches of unequal sizes, placeholder rows (no loss token) where a process has no
   row for a slot, and a loss scale per micro-batch that gives every kept row its weight in GRPO's update
   (docs/trainer.md, "Batch shapes"). No rejected row is ever trained.

GRPOTrainer internals this relies on (checked on TRL 1.7.1 and 1.16.0; docs/trainer.md keeps the same list):
``__init__``'s signature (every argument is forwarded as given; only ``group_filter_func`` is ours);
``_generate(prompts)`` returning the per-completion tool masks third; ``_get_per_token_logps_and_entropies``
(its old and reference passes deferred to the kept rows: TRL reads them only after scoring, except vLLM's
importance-sampling correction, which keeps the eager pass); ``_calculate_rewards(inputs, prompts,
completions, completion_ids_list)`` returning rewards gathered over processes in process order (environment-owned
rewards included); ``_generate_and_score_completions(inputs)`` returning a dict of per-row tensors
(``prompt_ids``, ``prompt_mask``, ``completion_ids``, ``completion_mask``, ``advantages``, optional log-prob
tensors, ``importance_sampling_ratio``, ``tool_mask``, image and token-type fields), per-row lists
(``num_images``) and ``num_items_in_batch`` (the gathered loss-mask sum); ``_prepare_inputs``' buffering
(``_step``, ``_buffered_inputs``, ``num_iterations``), replaced with the filter on; ``compute_loss`` (extended by a
scale); the loss normalisers of ``_compute_loss`` (token sums over ``num_items_in_batch``, the others per
micro-batch) and its per-micro-batch metric gathers (equal sizes on every process);
``trl.trainer.utils.shuffle_sequence_dict``, ``split_tensor_dict``, ``split_pixel_values_by_grid`` and
``unsplit_pixel_values_by_grid``; the attributes ``reward_weights``, ``num_generations``, ``scale_rewards``,
``multi_objective_aggregation``, ``pad_to_multiple_of``, ``loss_type``, ``_metrics``, ``_logs``, ``_tokenizer`` and
``args.steps_per_generation``; and ``_save_checkpoint`` / ``_load_optimizer_and_scheduler`` for the filter and
adaptive-k state.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from gfpo_filters.adaptive import AdaptiveK
from gfpo_filters.base import GroupFilter
from gfpo_filters.errors import FilterStateError, GFPOStepWarning
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
#: Fields of the generation batch whose second dimension is the prompt (left-padded).
PROMPT_FIELDS = ("prompt_ids", "prompt_mask")
#: Fields whose second dimension is the completion (right-padded): cut with the completion columns.
COMPLETION_FIELDS = (
    "completion_ids",
    "completion_mask",
    "tool_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
)
#: Fields whose second dimension is the prompt followed by the completion (VLMs' token types); split in two to move.
JOINT_FIELDS = ("token_type_ids", "mm_token_type_ids")
#: Loss types whose normaliser is num_items_in_batch (a token count over the generation batch).
TOKEN_SUM_LOSSES = ("dapo", "cispo", "vespo")
#: Options of ``_get_per_token_logps_and_entropies`` that are not model inputs (a pass with any other input set, an
#: image field, is not deferred).
LOGP_OPTIONS = ("batch_size", "compute_entropy", "compute_aux_loss")
#: The micro-batch key that carries a loss scale from :meth:`GFPOTrainer._micro_batches` to ``compute_loss``.
LOSS_SCALE = "gfpo_loss_scale"


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
            "paper), True (= 'typical') or a mode: 'typical', 'swap', 'swap_long', 'group_baseline', 'balanced'."
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


def _policy_lengths(completion_ids: list[Any], tool_masks: list[Any] | None) -> torch.Tensor:
    """Tokens the policy wrote per completion: its generated ids less tool-result tokens (``tool_mask`` 0), counted
    from TRL's unpadded lists, so that no loss mask (``mask_truncated_completions``, tools) changes a length."""
    if tool_masks is None:
        return torch.tensor([len(ids) for ids in completion_ids], dtype=torch.long)
    return torch.tensor([int(sum(mask)) for mask in tool_masks], dtype=torch.long)


def _is_row_field(value: Any) -> bool:
    return isinstance(value, list) or (torch.is_tensor(value) and value.ndim >= 1)


def _rows_of(value: Any, index: list[int]) -> Any:
    if isinstance(value, list):
        return [value[i] for i in index]
    return value[torch.as_tensor(index, dtype=torch.long, device=value.device)]


def _trim_completions(fields: dict[str, Any], width: int) -> dict[str, Any]:
    """Completion-side fields cut to ``width`` columns (those past it are padding for every row kept)."""
    full = fields["completion_ids"].shape[1]
    if width >= full:
        return fields
    return {
        key: value[:, :width]
        if _side(key) == "completion" and torch.is_tensor(value) and value.ndim >= 2 and value.shape[1] == full
        else value
        for key, value in fields.items()
    }


def _concat_rows(batch: dict[str, Any], row: dict[str, Any], copies: int) -> dict[str, Any]:
    """``batch`` followed by ``copies`` copies of the one-row batch ``row`` (per-row fields; the others as in batch)."""
    if copies == 0:
        return batch
    out = dict(batch)
    for key, value in batch.items():
        if isinstance(value, list):
            out[key] = value + row[key] * copies
        elif torch.is_tensor(value) and value.ndim >= 1:
            out[key] = torch.cat([value, row[key].repeat(copies, *([1] * (value.ndim - 1)))])
    return out


def _slice_rows(batch: dict[str, Any], begin: int, end: int) -> dict[str, Any]:
    return {key: value[begin:end] if _is_row_field(value) else value for key, value in batch.items()}


@dataclass
class MicroBatchPlan:
    """How one generation batch's kept rows become ``steps_per_generation`` micro-batches on every process.

    ``sizes[j]``: rows of micro-batch j, the same on every process (TRL gathers per-row metrics in the loss);
    ``real[r, j]``: how many of them are process r's kept rows, the rest being placeholders (completion mask 0);
    ``total``: kept rows over all processes.
    """

    sizes: np.ndarray
    real: np.ndarray
    total: int

    @property
    def equal(self) -> bool:
        """Every micro-batch of every process holds the same number of kept rows: GRPOTrainer's own shape."""
        return bool(self.total) and bool((self.real == self.sizes[0]).all())

    @property
    def placeholders(self) -> int:
        return int(self.real.shape[0] * self.sizes.sum() - self.total)

    def scales(self, rank: int, loss_type: str) -> list[float]:
        """Process ``rank``'s loss scale per micro-batch.

        Token-sum losses (``dapo``, ``cispo``, ``vespo``) divide by one count for the whole generation batch, so a
        token weighs the same in any micro-batch: scale 1. The other losses (``grpo``, ``sapo``, ``luspo``, ``bnpo``,
        ``dr_grpo``) average over a micro-batch's rows (or its tokens, ``bnpo``); scaling micro-batch j by
        ``sizes[j] / mean`` (mean = kept rows per process and micro-batch) gives every row the weight it has in
        GRPO's equal micro-batches of ``mean`` rows. A micro-batch with no kept row of this process gets 0 (it
        holds only placeholders: no router or entropy term either).
        """
        spg = len(self.sizes)
        mean = self.total / (self.real.shape[0] * spg) if self.total else 1.0
        scales = [1.0 if loss_type in TOKEN_SUM_LOSSES else float(size) / mean for size in self.sizes]
        return [scale if self.real[rank, j] else 0.0 for j, scale in enumerate(scales)]


def micro_batch_plan(counts: Any, steps_per_generation: int) -> MicroBatchPlan:
    """The micro-batches of a generation batch whose processes keep ``counts[r]`` rows each.

    Every process runs ``steps_per_generation`` micro-batches (TRL's step, accumulation and scheduler counting stay
    GRPOTrainer's). The largest count is split as evenly as possible, larger micro-batches first; a micro-batch gets
    at least one row (a placeholder when no process has a row for it). Each process's rows fill its micro-batches in
    order. No kept row is dropped or added: placeholders carry no loss token.
    """
    counts = np.asarray(counts, dtype=np.int64)
    base, extra = divmod(int(counts.max(initial=0)), steps_per_generation)
    sizes = np.maximum(np.array([base + (j < extra) for j in range(steps_per_generation)], dtype=np.int64), 1)
    before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    real = np.clip(counts[:, None] - before[None, :], 0, sizes[None, :])
    return MicroBatchPlan(sizes, real, int(counts.sum()))


class GFPOTrainer(PruningMixin, GRPOTrainer):
    """GRPOTrainer that trains on the top ``num_remains_in_group`` completions of each group.

    ``group_filter_func`` is a registered filter name (``"token_efficiency"``), a filter from
    :func:`gfpo_filters.load_filter`, or any callable
    ``f(group_completions=..., group_rewards=..., **kwargs) -> list[list[float]]`` (higher = keep).
    """

    #: Run the old and reference log-prob passes on the kept rows only (after the filter), not on all G rows.
    defer_log_probs: bool = True

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
        self._deferred = None
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
    def _generate(self, prompts):
        output = super()._generate(prompts)
        # (prompt_ids, completion_ids, tool_mask, ...) on TRL 1.7.1 to 1.16: the per-token tool masks, unmasked
        self._tool_masks = output[2]
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_capture = (prompts, completions, completion_ids_list, rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        self._rewards_capture = self._tool_masks = None
        filtering = self.group_filter_func is not None and self.model.training
        self._deferred = [] if filtering and self.defer_log_probs else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            deferred, self._deferred = self._deferred, None
        if not filtering:
            return output  # evaluation is unfiltered
        if self._rewards_capture is None:
            raise RuntimeError(
                "GFPOTrainer: GRPOTrainer._generate_and_score_completions did not call _calculate_rewards; "
                "this TRL version is not supported (tested: 1.7.1 to 1.16)"
            )
        capture, self._rewards_capture = self._rewards_capture, None
        self._deferred_calls = deferred or []
        return self._filter_batch(output, *capture)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """GRPOTrainer's log-prob pass; while a training batch is generated and scored, the old and reference passes
        are deferred until the filter has chosen, and then run on the kept rows only (:meth:`_run_deferred`)."""
        key = None if self._deferred is None or torch.is_grad_enabled() else self._deferrable(model, kwargs)
        if key is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        self._deferred.append((key, model, input_ids, attention_mask, logits_to_keep, args, kwargs))
        return input_ids.new_zeros((input_ids.shape[0], logits_to_keep), dtype=torch.float32), None, None

    def _deferrable(self, model, kwargs):
        """Which batch field a no-grad log-prob pass fills, when it can wait for the filter: ``old_per_token_logps``
        (the policy's, unless vLLM's importance-sampling correction reads it at once) or ``ref_per_token_logps``
        (a separate reference model). None: run it now (a PEFT reference, which TRL computes inside an
        adapter-switching context, and any pass with images, whose inputs are not one entry per row)."""
        if any(value is not None for name, value in kwargs.items() if name not in LOGP_OPTIONS):
            return None
        if getattr(self, "ref_model", None) is not None and model is self.ref_model:
            return "ref_per_token_logps"
        args = self.args
        old_needed = args.gradient_accumulation_steps % (args.steps_per_generation * self.num_iterations) != 0
        vllm_ratio = getattr(self, "use_vllm", False) and getattr(self, "vllm_importance_sampling_correction", True)
        if model is self.model and old_needed and not vllm_ratio:
            if not any(key == "old_per_token_logps" for key, *_ in self._deferred):
                return "old_per_token_logps"
        return None

    def _run_deferred(self, output, rows, widths):
        """The deferred old and reference log-prob passes, on this process's kept rows (``rows``) only, laid out as
        TRL laid them out (completion columns past the longest kept one dropped: a causal model's earlier tokens
        never see them); the other rows keep 0, as they are never trained."""
        calls, self._deferred_calls = self._deferred_calls, []
        width = max((widths[i] for i in rows.tolist()), default=0)
        if not width:  # no kept row with a token here: the passes have nothing to compute
            return
        for key, model, input_ids, attention_mask, logits_to_keep, args, kwargs in calls:
            index = torch.as_tensor(rows, dtype=torch.long, device=input_ids.device)
            end = input_ids.shape[1] - logits_to_keep + width
            with torch.no_grad():
                logps, _, _ = super()._get_per_token_logps_and_entropies(
                    model, input_ids[index, :end], attention_mask[index, :end], width, *args, **kwargs
                )
            output[key][index, :width] = logps.to(output[key].dtype)

    def _prepare_inputs(self, generation_batch):
        """TRL's buffering of one generation batch into ``steps_per_generation`` micro-batches, with GFPO's plan.

        The same as GRPOTrainer's (generate every ``steps_per_generation * num_iterations`` steps, shuffle with TRL's
        ``shuffle_sequence_dict``, one micro-batch per step), except for the split: the kept rows need not divide into
        equal micro-batches, so :meth:`_micro_batches` cuts them by :func:`micro_batch_plan`.
        """
        if self.group_filter_func is None or not self.model.training:
            return super()._prepare_inputs(generation_batch)
        spg = self.args.steps_per_generation
        if self._step % (spg * self.num_iterations) == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            self._buffered_inputs = self._micro_batches(batch)
        return self._buffered_inputs[self._step % spg]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scale = inputs.get(LOSS_SCALE) if isinstance(inputs, dict) else None
        if scale is not None:
            inputs = {key: value for key, value in inputs.items() if key != LOSS_SCALE}
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        return loss if scale is None else loss * scale

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
        # Per row: the tokens the policy wrote (whatever masks the loss: truncation, tools) and the loss tokens.
        policy = _policy_lengths(completion_ids_list, self._tool_masks)
        counts = torch.stack([policy, _loss_mask(output).sum(dim=1).cpu().long()]).to(acc.device)
        counts = (acc.gather(counts.T.contiguous()).T if acc.num_processes > 1 else counts).cpu().numpy()
        lengths, loss_tokens = counts[0].reshape(-1, g), counts[1]
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
        kept = result.kept.reshape(acc.num_processes, n_local)
        if not kept.any():
            warnings.warn(
                f"GFPOTrainer: no completion of this batch ({n_total // g} groups of {g}) has a reward, so none is "
                "kept: this step trains on nothing (a zero update; GRPOTrainer's would be its KL and entropy terms "
                "alone, every advantage being 0)",
                GFPOStepWarning,
                stacklevel=2,
            )
        plan = micro_batch_plan(kept.sum(axis=1), self.args.steps_per_generation)
        self._log_selection(result, n_total, plan)
        rank = acc.process_index
        widths = [len(ids) for ids in completion_ids_list]
        advantages = result.advantages.reshape(acc.num_processes, n_local)[rank]
        self._run_deferred(output, np.flatnonzero(kept[rank]), widths)
        batch, placeholder = self._keep_rows(output, np.flatnonzero(kept[rank]), widths, advantages)
        if getattr(self.args, "gfpo_loss_normalizer", "kept") == "kept":
            # TRL's count: the loss tokens of the whole (kept) generation batch, all processes together; at least 1
            # (TRL 1.7.1 divides by it unclamped, and a batch that keeps no loss token sums to 0 anyway).
            count = output["num_items_in_batch"]
            kept_tokens = max(float(loss_tokens[result.kept.reshape(-1)].sum()), 1.0)
            batch["num_items_in_batch"] = torch.full_like(count, kept_tokens)
        # else GRPO's count over all G completions stays: the paper's Eq. 2
        self._plan = (plan, placeholder)
        return batch

    def _decide(self, rewards, rewards_per_func, weights, lengths, completions, completion_ids, prompts):
        """Process 0's decision for the whole batch: k, the kept rows and their advantages."""
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
        )
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":
            per_func = rewards_per_func.double().cpu().numpy().reshape(-1, g, rewards_per_func.shape[1])
            result.advantages = normalize_then_sum(per_func, result.kept, weights.double().cpu().numpy())
        return result

    def _keep_rows(self, output, rows, widths, advantages):
        """This process's kept rows (``rows``: local indices, in order) of every per-row field, as TRL laid them out.

        Rows never move between processes, and their prompts keep the left padding of the batch their old and
        reference log-probs were computed in (a model with learned absolute positions reads it). Completion columns
        past the longest kept completion are dropped (to ``pad_to_multiple_of``): a causal model's tokens never see
        later columns. Returns the kept batch (advantages from the decision) and a one-row placeholder laid out like
        it: a kept row (the first; row 0 of the batch when none is kept) with its completion mask and advantage 0,
        which fills micro-batch slots that no kept row fills (:func:`micro_batch_plan`).

        Per-row fields are tensors whose first dimension is the row, and lists with one entry per row (``num_images``,
        and image tensors, which TRL's ``split_pixel_values_by_grid`` cuts into one entry per row).
        """
        n_local = len(widths)
        output = _split_joint(split_pixel_values_by_grid(output))
        per_row = {}
        for key, value in output.items():
            if key == "advantages" or not (isinstance(value, list) or (torch.is_tensor(value) and value.ndim >= 1)):
                continue
            if len(value) != n_local:
                raise NotImplementedError(
                    f"GFPOTrainer cannot tell which rows batch field {key!r} belongs to: it has {len(value)} entries "
                    f"for {n_local} rows; please report this with your TRL version and model"
                )
            per_row[key] = value
        like = output["advantages"]
        advantages = torch.as_tensor(advantages).to(like.device, like.dtype)

        def take(index, width):
            fields = {key: _rows_of(value, index) for key, value in per_row.items()}
            fields["advantages"] = advantages[torch.as_tensor(index, dtype=torch.long, device=like.device)]
            if self.pad_to_multiple_of:
                width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
            fields = _trim_completions(fields, max(width, 1))
            return {key: fields.get(key, value) for key, value in output.items()}  # TRL's key order

        index = rows.tolist()
        batch = take(index, max((widths[i] for i in index), default=1))
        if index:
            placeholder = {key: _rows_of(value, [0]) if key in per_row or key == "advantages" else value
                           for key, value in batch.items()}  # fmt: skip
        else:
            placeholder = take([0], 1)
        placeholder["completion_mask"] = torch.zeros_like(placeholder["completion_mask"])
        placeholder["advantages"] = torch.zeros_like(placeholder["advantages"])
        return unsplit_pixel_values_by_grid(_join_joint(batch)), unsplit_pixel_values_by_grid(_join_joint(placeholder))

    def _micro_batches(self, batch):
        """Shuffle the kept rows (TRL's ``shuffle_sequence_dict``) and cut them into this generation's micro-batches.

        When every process keeps the same count, a multiple of ``steps_per_generation``, this is TRL's own
        ``split_tensor_dict`` into equal micro-batches (GRPOTrainer's update on these rows, bit for bit). Otherwise
        :func:`micro_batch_plan` gives every micro-batch its size (the same on every process, as TRL's metric gathers
        need), this process's rows fill them in order and placeholder rows (completion mask 0: no loss token, no
        gradient) fill the rest, and each micro-batch carries the loss scale that makes every kept row weigh what it
        weighs in GRPO's update on the kept rows (docs/trainer.md, "Batch shapes").
        """
        plan, placeholder = self._plan
        spg = len(plan.sizes)  # steps_per_generation
        batch = shuffle_sequence_dict(split_pixel_values_by_grid(batch))
        rank = self.accelerator.process_index
        if plan.equal:
            chunks = split_tensor_dict(batch, spg)
        else:
            real = plan.real[rank]
            placeholder = split_pixel_values_by_grid(placeholder)
            filler = int(plan.sizes.sum() - real.sum())
            rows = _concat_rows(batch, placeholder, filler)
            bounds = np.concatenate([[0], np.cumsum(plan.sizes)]).tolist()
            chunks = [_slice_rows(rows, bounds[j], bounds[j + 1]) for j in range(spg)]
            for chunk, scale in zip(chunks, plan.scales(rank, self.loss_type)):
                if scale != 1.0:
                    chunk[LOSS_SCALE] = scale
        return [unsplit_pixel_values_by_grid(chunk) for chunk in chunks]

    # ------------------------------------------------------------------ logging
    def _log_selection(self, result, n_total, plan):
        metrics = self._metrics["train"]
        for name, value in result.metrics.items():
            metrics[name].append(value)
        # Rows trained: exactly the kept ones; placeholders (no loss token) only fill micro-batch slots.
        metrics["gfpo/trained_rows"].append(float(plan.total))
        metrics["gfpo/placeholder_rows"].append(float(plan.placeholders))
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
        # Written first, so that a checkpoint pushed to the Hub (at the end of super()'s save) carries it. Process 0
        # decides the rows, so its filter and adaptive-k state is the run's.
        if getattr(self, "group_filter_func", None) is not None and self.accelerator.is_main_process:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(filter_state(self.group_filter_func, self._adaptive), f)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if getattr(self, "group_filter_func", None) is None or checkpoint is None:
            return
        error = None
        if self.accelerator.is_main_process:  # the others never run the filter
            path = os.path.join(checkpoint, STATE_FILE)
            state = None
            if os.path.exists(path):
                with open(path) as f:
                    state = json.load(f)
            try:
                load_filter_state(self.group_filter_func, self._adaptive, state)  # warns when state is missing
            except FilterStateError as e:
                error = e
        if self.accelerator.num_processes > 1:  # every process stops with process 0's error, none waits for it
            (text,) = broadcast_object_list([None if error is None else str(error)])
            if error is None and text is not None:
                raise FilterStateError(f"process 0 could not resume the filter state: {text}")
        if error is not None:
            raise error


def _init_signature() -> inspect.Signature:
    """GRPOTrainer's constructor signature plus the keyword-only ``group_filter_func`` (what help() and IDEs show)."""
    params = list(_GRPO_PARAMETERS.values())
    plain = [p for p in params if p.kind is not p.VAR_KEYWORD]
    extra = inspect.Parameter("group_filter_func", inspect.Parameter.KEYWORD_ONLY, default=None)
    return inspect.Signature([*plain, extra, *[p for p in params if p.kind is p.VAR_KEYWORD]])


GFPOTrainer.__init__.__signature__ = _init_signature()
