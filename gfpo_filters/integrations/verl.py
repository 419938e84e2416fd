"""GFPO on verl: a replay buffer for verl's v1 trainer that trains on the top k of each group.

verl's v1 trainer takes its replay buffer from the config; this one samples as verl does, then
keeps the top ``num_remains_in_group`` sessions of each prompt and drops the rest before the
old/ref log-probs, the advantages and the actor update ever see them::

    algorithm.adv_estimator=gfpo
    trainer.v1.sampler.custom_sampler.path=pkg://gfpo_filters.integrations.verl
    trainer.v1.sampler.custom_sampler.name=GFPOReplayBuffer
    +trainer.v1.sampler.sampler_kwargs.filter=token_efficiency
    +trainer.v1.sampler.sampler_kwargs.num_remains_in_group=4

On each ``sample`` it:

1. takes the batch verl's own ``ReplayBuffer`` (or ``ReplayBufferAsync`` in the async modes)
   selected, and groups its trajectories by uid; a session (``{uid}_{session}``) is one
   completion, and a session with several outputs stays whole,
2. reads each session's token ids (``responses``, outputs concatenated), length (the tokens the
   policy wrote: ``response_mask`` sums, so a tool's output does not count) and reward (the
   ``rm_scores`` sum of its last output, the one verl's GRPO reads) from TransferQueue,
3. calls the engine-neutral GFPO step (:func:`gfpo_filters.step.gfpo_step`) once on all groups,
4. clears the rejected sessions' keys from TransferQueue and returns the kept batch with
   ``gfpo/*`` metrics, the policy's response length before and after the filter among them.

verl then computes the advantages per uid over the kept rows. Importing this module registers the
``gfpo`` advantage estimator (:func:`compute_gfpo_outcome_advantage`): GRPO's, with the paper's
population std where verl's ``grpo`` uses torch's sample std.

Validation batches (partition ``val``) are not filtered.

verl internals this relies on (checked on verl 0.9.1 with TransferQueue 0.1.11):
``verl.trainer.ppo.v1.replay_buffer.ReplayBuffer`` and ``ReplayBufferAsync`` (constructor keywords
``trainer_mode, trainer_config, max_off_policy_threshold, max_off_policy_strategy, sampler_kwargs,
refill_fn``; ``sample(global_steps, partition_id, batch_size) -> (KVBatchMeta, metrics)``), as
``PPOTrainer._build_replay_buffer`` builds a custom sampler; trajectory keys
``{uid}_{session_id}_{index}`` with fields ``responses``, ``response_mask`` and ``rm_scores``
(token-level, the reward on the last token) as ``agent_loop_tq`` writes them; ``algorithm.filter_groups``
and ``sampler.sync_refill_failed_groups`` reaching only verl's own buffers (warned about);
``core_algos.register_adv_est`` and ``compute_advantage`` passing a custom estimator ``config`` (the
``algorithm`` node) but not ``norm_adv_by_std_in_grpo``, with the session grouping of
``compute_advantage_for_multi_trajectories`` for ``grpo`` only; ``transfer_queue.kv_batch_get`` /
``kv_clear`` and ``KVBatchMeta.select_keys``; ``sampler_kwargs`` being a node of the trainer's
whole OmegaConf config (``_get_root()``), from which the construction checks read
``actor_rollout_ref.rollout.n``, ``reward.reward_model.{enable,enable_resource_pool}`` (verl
computes rewards before sampling only for rule-based or separately placed reward models), and
the batch sizes of ``PPOTrainer._get_required_batch_multiple``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

try:
    import transfer_queue as tq
    from omegaconf import DictConfig, OmegaConf
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
except ImportError as e:
    raise ImportError(
        f"gfpo_filters.integrations.verl needs verl 0.9.1 and TransferQueue ({e}): pip install 'gfpo-filters[verl]'"
    ) from e

from gfpo_filters.adaptive import AdaptiveK
from gfpo_filters.errors import AdvantageStdWarning, GFPOFilterWarning, IgnoredSettingWarning
from gfpo_filters.selection import gfpo_advantages
from gfpo_filters.step import accepted_kwargs, gfpo_step, keep_signal_mode, resolve_filter, selection_metrics

logger = logging.getLogger(__name__)

#: The ``trainer.v1.sampler.sampler_kwargs`` this buffer reads.
SAMPLER_KWARGS = (
    "filter",
    "num_remains_in_group",
    "filter_params",
    "adaptive_k",
    "adaptive_warmup_steps",
    "adaptive_window",
    "tokenizer",
    "keep_signal",
    "advantage_std",
    "fill_batch_multiple",
)
PREFIX = "trainer.v1.sampler.sampler_kwargs"
#: ``advantage_std``: the paper's population std over the kept set (Eq. 1, the TRL adapter's), or torch's sample std.
ADVANTAGE_STD = ("population", "sample")


class GFPOReplayBuffer(ReplayBuffer):
    """verl's replay buffer, keeping the top ``num_remains_in_group`` sessions of each prompt.

    ``sampler_kwargs`` (``trainer.v1.sampler.sampler_kwargs``):

    * ``filter``: a registered filter name (``gfpo-filters list``) or, from Python, any
      ``group_filter_func`` callable. Required.
    * ``num_remains_in_group``: k, sessions kept per prompt, 2 <= k < ``rollout.n``. Required.
    * ``filter_params``: the filter's parameters (a mapping), optional.
    * ``adaptive_k``, ``adaptive_warmup_steps``, ``adaptive_window``: Adaptive Difficulty GFPO
      (see ``docs/adaptive.md``); ``num_remains_in_group`` is then the warm-up k.
    * ``keep_signal``: keep reward variance in kept sets that lost it (``docs/keep_signal.md``):
      False (default, the paper), True (``"typical"``), ``"typical"``, ``"swap"``, ``"swap_long"`` or
      ``"balanced"``.
      ``"group_baseline"`` is refused: it changes advantages only, and verl computes those itself
      from the kept rows.
    * ``advantage_std``: ``"population"`` (default; the paper's Eq. 1 and the TRL adapter's) or
      ``"sample"`` (torch's ``std``, n - 1, verl's GRPO): the std ``algorithm.adv_estimator=gfpo``
      divides by (:func:`compute_gfpo_outcome_advantage`). With ``adv_estimator=grpo``, verl's
      GRPO divides by the sample std; the buffer warns unless ``advantage_std="sample"``.
    * ``fill_batch_multiple``: True to keep more ranked sessions (hardest prompts first, see
      :func:`gfpo_filters.selection.round_up_rows`) until the kept rows are a multiple of verl's
      ``ppo_mini_batch_size * rollout.n``, so verl adds no synthetic rows (e.g. with adaptive k).
      Default False: exactly k per prompt, the paper.
    * ``tokenizer``: a Hugging Face tokenizer path (e.g. ``${actor_rollout_ref.model.path}``);
      with it, filters get decoded text as completions, else token-id lists. Token ids and
      lengths are passed either way.

    In the async trainer modes it builds :class:`GFPOReplayBufferAsync` instead, so the one name
    serves every ``trainer.v1.trainer_mode``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> GFPOReplayBuffer:
        mode = kwargs.get("trainer_mode", args[0] if args else "sync")
        if mode != "sync" and cls is GFPOReplayBuffer:
            cls = GFPOReplayBufferAsync
        elif mode == "sync" and issubclass(cls, ReplayBufferAsync):
            raise ValueError(
                f"{cls.__name__} is for verl's async trainer modes; with trainer_mode='sync' use "
                "trainer.v1.sampler.custom_sampler.name=GFPOReplayBuffer"
            )
        return object.__new__(cls)

    def __init__(
        self,
        trainer_mode: str,
        trainer_config: Any,
        max_off_policy_threshold: int | None,
        max_off_policy_strategy: str,
        sampler_kwargs: Any,
        poll_interval: float = 2.0,
        refill_fn: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            trainer_mode=trainer_mode,
            trainer_config=trainer_config,
            max_off_policy_threshold=max_off_policy_threshold,
            max_off_policy_strategy=max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval,
            refill_fn=refill_fn,
            **kwargs,
        )
        root = sampler_kwargs._get_root() if isinstance(sampler_kwargs, DictConfig) else None
        options = _plain(sampler_kwargs)
        unknown = sorted(set(options) - set(SAMPLER_KWARGS))
        if unknown:
            raise ValueError(f"{PREFIX}: unknown keys {unknown}; GFPOReplayBuffer reads {list(SAMPLER_KWARGS)}")
        if options.get("filter") is None:
            raise ValueError(
                f"{PREFIX}.filter is not set: name a group filter, e.g. "
                f"+{PREFIX}.filter=token_efficiency (see 'gfpo-filters list')"
            )
        self.group_filter = resolve_filter(options["filter"], options.get("filter_params"))
        n = self.rollout_n = _get(root, "actor_rollout_ref.rollout.n")
        self.num_remains_in_group = _check_k(options.get("num_remains_in_group"), n)
        self._adaptive = None
        if options.get("adaptive_k") is not None:
            self._adaptive = AdaptiveK(
                _check_adaptive_k(options["adaptive_k"], n),
                self.num_remains_in_group,
                int(options.get("adaptive_warmup_steps", 0)),
                int(options.get("adaptive_window", 4096)),
            )
        self.keep_signal = _check_keep_signal(options.get("keep_signal", False))
        self.advantage_std = _check_advantage_std(options.get("advantage_std"))
        self.tokenizer = _load_tokenizer(options.get("tokenizer"))
        self._filter_kwargs = accepted_kwargs(self.group_filter)
        self.adv_estimator = _get(root, "algorithm.adv_estimator")
        self.max_response_length = _get(root, "actor_rollout_ref.rollout.response_length")
        # fill_batch_multiple: keep more ranked rows until verl needs no synthetic ones (gfpo_step's row_multiple).
        self.row_multiple = _fill_multiple(root, trainer_mode) if options.get("fill_batch_multiple") else 1
        if root is not None:
            _check_reward_at_sampling(root)
            if self.row_multiple == 1:
                _check_batch_sizes(root, trainer_mode, self.num_remains_in_group, self._adaptive is not None)
            _check_ignored_settings(root, trainer_mode)
            if self.adv_estimator == "grpo" and self.advantage_std == "population":
                _warn(
                    "algorithm.adv_estimator=grpo: verl's GRPO standardises the kept rewards with torch's sample std "
                    "(n - 1), so a kept pair of rewards 1 and 0 gets advantages +-0.707 where the paper (Eq. 1) and "
                    "the TRL adapter give +-1. Set algorithm.adv_estimator=gfpo for the paper's population std, or "
                    f"+{PREFIX}.advantage_std=sample to keep verl's GRPO",
                    AdvantageStdWarning,
                )

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[KVBatchMeta, dict]:
        """verl's sample, then the GFPO selection on the training partition."""
        batch, metrics = super().sample(global_steps=global_steps, partition_id=partition_id, batch_size=batch_size)
        if partition_id == "val" or len(batch) == 0:
            return batch, metrics
        kept, gfpo_metrics = self.filter_batch(batch, global_steps)
        return kept, {**metrics, **gfpo_metrics}

    def filter_batch(self, batch: KVBatchMeta, global_steps: int = 0) -> tuple[KVBatchMeta, dict[str, float]]:
        """Keep the top k sessions of each uid in ``batch``; clear the other keys from TransferQueue."""
        groups = _Groups.of(batch.keys, self.rollout_n)
        fields = ["responses", "response_mask", "rm_scores"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        if "rm_scores" not in data.keys():
            raise RuntimeError(
                "GFPOReplayBuffer: the sampled trajectories have no rm_scores, so there are no rewards to select "
                "by. " + REWARD_ADVICE
            )
        if "response_mask" not in data.keys():
            raise RuntimeError(
                "GFPOReplayBuffer: the sampled trajectories have no response_mask, so the tokens the policy wrote "
                "cannot be told from tool output; verl's agent loop writes it with every trajectory"
            )
        tokens, n_tokens = _rows(data["responses"])
        row_ids = [ids.tolist() for ids in np.split(tokens, np.cumsum(n_tokens)[:-1])]
        row_rewards = _row_sums(data["rm_scores"])
        # Lengths are the tokens the policy wrote (response_mask 1): a tool's output in the response is not.
        rewards, completion_ids = groups.sessions(row_rewards, row_ids)
        lengths = groups.sum(_row_sums(data["response_mask"]))
        lengths[~groups.present] = 1  # no session: not 0, which length filters would report as an empty completion
        completions = completion_ids
        if self.tokenizer is not None:
            flat = self.tokenizer.batch_decode([c for group in completion_ids for c in group], skip_special_tokens=True)
            completions = [flat[i : i + groups.g] for i in range(0, len(flat), groups.g)]
        prompts = self._prompts(batch, groups) if "prompts" in self._filter_kwargs else None

        result = gfpo_step(
            self.group_filter,
            completions=completions,
            rewards=rewards,
            k=self.num_remains_in_group,
            completion_ids=completion_ids,
            lengths=lengths,
            prompts=prompts,
            adaptive=self._adaptive,
            global_step=global_steps,
            filter_kwargs=self._filter_kwargs,
            keep_signal=self.keep_signal,
            row_multiple=self.row_multiple,
            available=groups.present,
        )
        kept = result.kept  # a failed session is never kept, not even to fill a multiple
        outputs = groups.sum(np.ones(len(batch)))
        if self.adv_estimator == "gfpo" and (outputs[kept] > 1).any():
            raise ValueError(
                "GFPOReplayBuffer: kept sessions have several outputs (a multi-output agent loop), and verl 0.9 hands "
                "every advantage estimator but grpo one row per output, so algorithm.adv_estimator=gfpo would count "
                "such a session once per output in its prompt's mean and std. Use algorithm.adv_estimator=grpo "
                f"(verl counts each session once) with +{PREFIX}.advantage_std=sample"
            )
        metrics = dict(result.metrics)
        if not groups.present.all():  # failed sessions (never kept): count only the sessions that exist
            metrics.update(
                selection_metrics(
                    rewards,
                    lengths,
                    kept,
                    result.k,
                    result.buckets,
                    top=result.top & groups.present,
                    signal=result.signal,
                    added=result.added,
                )
            )
            metrics["gfpo/all_length_mean"] = float(lengths[groups.present].mean())
        clipped = None
        if isinstance(self.max_response_length, int):  # a response reached the rollout's cap (tool tokens count)
            clipped = groups.sum((n_tokens >= self.max_response_length).astype(np.float64)) > 0
        metrics.update(length_metrics("sampled", lengths, groups.present, clipped))
        metrics.update(length_metrics("kept", lengths, kept, clipped))
        keep_row = kept[groups.row_group, groups.row_session]
        rejected = [key for key, keep in zip(batch.keys, keep_row) if not keep]
        if rejected:
            tq.kv_clear(keys=rejected, partition_id=batch.partition_id)
        metrics["gfpo/sampled_rows"] = float(len(batch))
        metrics["gfpo/kept_rows"] = float(keep_row.sum())
        return batch.select_keys([key for key, keep in zip(batch.keys, keep_row) if keep]), metrics

    def _prompts(self, batch: KVBatchMeta, groups: _Groups) -> list[Any] | None:
        """One prompt per group (``raw_prompt`` of its first row) for filters that take prompts; None if absent."""
        keys = [batch.keys[i] for i in groups.first_row]
        data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["raw_prompt"])
        return list(data["raw_prompt"]) if "raw_prompt" in data.keys() else None


class GFPOReplayBufferAsync(GFPOReplayBuffer, ReplayBufferAsync):
    """:class:`GFPOReplayBuffer` over verl's ``ReplayBufferAsync`` (trainer modes ``colocate_async`` and
    ``separate_async``): eviction of stale and failed groups, refills and waiting stay verl's."""


REWARD_ADVICE = (
    "verl has rewards when the replay buffer samples only with a rule-based reward "
    "(reward.reward_model.enable=False) or a reward model on its own GPUs "
    "(reward.reward_model.enable_resource_pool=True); a colocated reward model scores after sampling."
)


class _Groups:
    """Where each row of a batch sits: group (uid, in first-seen order), session, output index."""

    def __init__(
        self, row_group: np.ndarray, row_session: np.ndarray, row_index: np.ndarray, n_groups: int, g: int | None
    ) -> None:
        self.row_group, self.row_session, self.row_index = row_group, row_session, row_index
        self.n_groups = n_groups
        # G: rollout.n where known (sessions that failed in every group still count), else the sessions seen.
        self.g = max(g or 0, int(row_session.max()) + 1 if row_session.size else 0)
        self.present = np.zeros((n_groups, self.g), dtype=bool)
        self.present[row_group, row_session] = True
        self.first_row = np.unique(row_group, return_index=True)[1]  # groups are numbered in first-seen order

    @classmethod
    def of(cls, keys: Sequence[str], g: int | None = None) -> _Groups:
        parts = [key.rsplit("_", 2) for key in keys]
        bad = [key for key, p in zip(keys, parts) if len(p) != 3 or not (p[1].isdigit() and p[2].isdigit())]
        if bad:
            raise ValueError(f"GFPOReplayBuffer: keys {bad[:3]} are not verl trajectory keys {{uid}}_{{session}}_{{i}}")
        uids = {uid: i for i, uid in enumerate(dict.fromkeys(p[0] for p in parts))}
        row_group = np.array([uids[p[0]] for p in parts], dtype=np.int64)
        row_session = np.array([int(p[1]) for p in parts], dtype=np.int64)
        row_index = np.array([int(p[2]) for p in parts], dtype=np.int64)
        return cls(row_group, row_session, row_index, len(uids), g)

    def sum(self, row_values: np.ndarray) -> np.ndarray:
        """``(n_groups, G)``: the sum of a per-row value over each session's outputs (0 where no session)."""
        out = np.zeros((self.n_groups, self.g))
        np.add.at(out, (self.row_group, self.row_session), row_values)
        return out

    def sessions(self, row_rewards: np.ndarray, row_ids: list[list[int]]) -> tuple[np.ndarray, list[list[list[int]]]]:
        """Per session: the reward of its last output (NaN where the session failed, which ranks it below
        every session with a reward) and its token ids over all outputs, concatenated."""
        rewards = np.full((self.n_groups, self.g), np.nan)
        ids: list[list[list[int]]] = [[[] for _ in range(self.g)] for _ in range(self.n_groups)]
        # Outputs in order of (group, session, index): the last one written is the session's last output.
        for i in np.lexsort((self.row_index, self.row_session, self.row_group)):
            gi, si = self.row_group[i], self.row_session[i]
            rewards[gi, si] = row_rewards[i]
            ids[gi][si].extend(row_ids[i])
        return rewards, ids


def length_metrics(name: str, lengths: np.ndarray, rows: np.ndarray, clipped: np.ndarray | None) -> dict[str, float]:
    """``gfpo/{name}_response_length/{mean,max,min,clip_ratio}`` over the sessions in ``rows``: tokens the
    policy wrote, and the share of sessions with a response cut at the rollout's ``response_length``."""
    prefix = f"gfpo/{name}_response_length"
    if not rows.any():
        return {}
    values = lengths[rows]
    metrics = {f"{prefix}/mean": float(values.mean()), f"{prefix}/max": float(values.max())}
    metrics[f"{prefix}/min"] = float(values.min())
    if clipped is not None:
        metrics[f"{prefix}/clip_ratio"] = float(clipped[rows].mean())
    return metrics


def _rows(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A batch field, one row per trajectory (jagged nested, or regular when all rows are equally
    long), as its flat values and the number of values in each row."""
    if t.is_nested:
        return t.values().numpy(), t.offsets().diff().numpy()
    flat = t.reshape(len(t), -1)
    return flat.reshape(-1).numpy(), np.full(len(t), flat.shape[1], dtype=np.int64)


def _row_sums(t: torch.Tensor) -> np.ndarray:
    """A batch field's sum over each row."""
    values, counts = _rows(t)
    return np.bincount(np.repeat(np.arange(len(counts)), counts), weights=values, minlength=len(counts))


@core_algos.register_adv_est("gfpo")
def compute_gfpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``algorithm.adv_estimator=gfpo``: GRPO's outcome advantage per uid with the paper's population std.

    ``A_i = (R_i - mean_S R) / (std_S R + epsilon)`` over the rows S of each uid (the kept set), std
    dividing by |S| (:func:`gfpo_filters.selection.gfpo_advantages`, the TRL adapter's formula) and
    epsilon verl's 1e-6. A uid with one row gets 0 (verl's GRPO gives it its reward). With
    ``sampler_kwargs.advantage_std=sample`` it is verl's ``compute_grpo_outcome_advantage``;
    ``algorithm.norm_adv_by_std_in_grpo=False`` leaves the advantages mean-centred, as for grpo.
    verl passes custom estimators ``config`` (the ``algorithm`` node) but not
    ``norm_adv_by_std_in_grpo``, so both options are read from ``config``.
    """
    if config is not None:
        norm_adv_by_std_in_grpo = bool(config.get("norm_adv_by_std_in_grpo", True))
    root = config._get_root() if isinstance(config, DictConfig) else None
    if _check_advantage_std(_get(root, f"{PREFIX}.advantage_std")) == "sample":
        return core_algos.compute_grpo_outcome_advantage(
            token_level_rewards, response_mask, index, epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
        )
    scores = token_level_rewards.sum(dim=-1).detach().cpu().double().numpy()
    # Rows to a (uids, rows per uid) table, NaN where a uid has fewer rows, for the engine-neutral formula.
    _, group = np.unique(np.asarray(index).astype(str), return_inverse=True)
    counts = np.bincount(group)
    order = np.argsort(group, kind="stable")
    slot = np.empty(len(group), dtype=np.int64)
    slot[order] = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((len(counts), counts.max(initial=0)), np.nan)
    table[group, slot] = scores
    scale = "group" if norm_adv_by_std_in_grpo else "none"
    advantages = gfpo_advantages(table, np.isfinite(table), scale=scale, eps=epsilon)[group, slot]
    out = torch.as_tensor(advantages, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
    out = out.unsqueeze(-1) * response_mask
    return out, out


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def _get(root: Any, path: str) -> Any:
    return None if root is None else OmegaConf.select(root, path, default=None)


def _check_k(k: Any, n: int | None) -> int:
    if k is None:
        raise ValueError(
            f"{PREFIX}.num_remains_in_group is not set: give k, the sessions kept per prompt, "
            f"e.g. +{PREFIX}.num_remains_in_group=4 (2 <= k < actor_rollout_ref.rollout.n)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or (n is not None and k >= n):
        top = f"{n - 1} (actor_rollout_ref.rollout.n={n})" if n else "rollout.n - 1"
        raise ValueError(
            f"{PREFIX}.num_remains_in_group={k!r} is out of range: it must be an int from 2 to {top}; "
            "k=1 leaves no reward variance, so every advantage would be 0, and k=n is plain GRPO"
        )
    return k


def _check_keep_signal(value: Any) -> str:
    try:
        mode = keep_signal_mode(value)
    except ValueError as e:
        raise ValueError(f"{PREFIX}.{e}") from None
    if mode == "group_baseline":
        raise ValueError(
            f"{PREFIX}.keep_signal='group_baseline' changes only the advantages, and verl computes advantages "
            "itself from the kept rows (GRPO per uid); use keep_signal=True ('typical'), 'swap' or 'balanced'"
        )
    return mode


def _check_advantage_std(value: Any) -> str:
    if value is None:
        return "population"
    if value not in ADVANTAGE_STD:
        raise ValueError(
            f"{PREFIX}.advantage_std={value!r} must be 'population' (the paper's Eq. 1, the default) or 'sample' "
            "(torch's std, n - 1, as verl's GRPO)"
        )
    return value


def _check_ignored_settings(root: DictConfig, mode: str) -> None:
    """Warn for each setting verl 0.9's ``PPOTrainer._build_replay_buffer`` passes only to its own buffers."""
    if _get(root, "algorithm.filter_groups.enable"):
        _warn(
            "algorithm.filter_groups (DAPO dynamic sampling) is ignored: verl 0.9 applies it only in its "
            "built-in replay buffer, not in a custom sampler such as GFPOReplayBuffer "
            "(keep_signal keeps reward variance in the kept sets instead, docs/keep_signal.md)",
            IgnoredSettingWarning,
        )
    if mode == "sync" and _get(root, "trainer.v1.sampler.sync_refill_failed_groups"):
        _warn(
            "trainer.v1.sampler.sync_refill_failed_groups=True is ignored: verl 0.9 passes it only to its "
            "built-in replay buffer, not to a custom sampler such as GFPOReplayBuffer. Failed groups stay "
            "sampleable (their failed sessions are never kept), a batch in which no selected group has a finished "
            "session stops with verl's RuntimeError, and verl still sets data.gen_batch_size=1 for it",
            IgnoredSettingWarning,
        )


def _check_adaptive_k(values: Any, n: int | None) -> list[int]:
    values = list(values)
    if len(values) != 4 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= (n or v) for v in values
    ):
        raise ValueError(
            f"{PREFIX}.adaptive_k={values!r} must be 4 ints (very hard, hard, medium, easy), each from 2 to "
            f"actor_rollout_ref.rollout.n={n}"
        )
    return values


def _load_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or not isinstance(tokenizer, str):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer)


def _check_reward_at_sampling(root: DictConfig) -> None:
    if _get(root, "reward.reward_model.enable") and not _get(root, "reward.reward_model.enable_resource_pool"):
        raise ValueError(
            "GFPOReplayBuffer selects by reward when it samples, but reward.reward_model.enable=True with "
            "enable_resource_pool=False scores only after sampling. " + REWARD_ADVICE
        )


def _batch_layout(root: DictConfig | None, mode: str) -> tuple[int, int, int, bool] | None:
    """Prompts per sampled batch, rollout.n, the row multiple verl pads a batch to (as
    ``PPOTrainer._get_required_batch_multiple``, leaving out the data-parallel size) and whether a
    critic is trained; None when the config does not say."""
    n = _get(root, "actor_rollout_ref.rollout.n")
    prompts = _get(root, "data.train_batch_size")
    mini = _get(root, "actor_rollout_ref.actor.ppo_mini_batch_size")
    if not all(isinstance(v, int) for v in (n, prompts, mini)):
        return None
    prompts //= _get(root, f"trainer.v1.{mode}.parameter_sync_step") or 1
    multiple = mini * n
    critic_mini = _get(root, "critic.ppo_mini_batch_size")
    critic = _get(root, "critic.enable")
    critic = _get(root, "algorithm.adv_estimator") == "gae" if critic is None else critic  # as verl's need_critic
    if critic and isinstance(critic_mini, int):
        multiple = math.lcm(multiple, critic_mini * n)
    return prompts, n, multiple, bool(critic)


def _fill_multiple(root: DictConfig | None, mode: str) -> int:
    """``fill_batch_multiple``: the row multiple to keep, checked so that a sampled batch can always reach it."""
    layout = _batch_layout(root, mode)
    if layout is None:
        raise ValueError(
            f"{PREFIX}.fill_batch_multiple needs data.train_batch_size, actor_rollout_ref.rollout.n and "
            "actor_rollout_ref.actor.ppo_mini_batch_size as ints in verl's config"
        )
    prompts, n, multiple, _ = layout
    if prompts * n % multiple:
        raise ValueError(
            f"{PREFIX}.fill_batch_multiple: a sampled batch has {prompts} prompts x rollout.n={n} = {prompts * n} "
            f"rows, not a multiple of {multiple} (ppo_mini_batch_size * rollout.n), so filling the kept rows up to "
            "one could need more rows than were sampled; make data.train_batch_size (per parameter_sync_step) a "
            "multiple of ppo_mini_batch_size"
        )
    return multiple


def _check_batch_sizes(root: DictConfig, mode: str, k: int, adaptive: bool) -> None:
    """Warn when verl would pad the kept rows back up with synthetic ones (see docs/verl.md)."""
    layout = _batch_layout(root, mode)
    if layout is None:
        return
    prompts, n, multiple, critic = layout
    rows = prompts * k
    pad = -rows % multiple  # the synthetic rows upsample_batch_to_divisible_size adds
    if pad == 0:
        return
    one_step = rows // n if rows % n == 0 else None  # the ppo_mini_batch_size of one optimizer step per batch
    fix = (
        f"set actor_rollout_ref.actor.ppo_mini_batch_size to a divisor of {one_step} (train_batch_size * k / "
        f"rollout.n), e.g. {one_step} for one optimizer step per batch"
        if one_step
        else f"make the prompts per step a multiple of {n // math.gcd(n, k)} (rollout.n / gcd(rollout.n, k)) "
        f"and ppo_mini_batch_size a divisor of prompts * k / rollout.n"
    )
    if critic:
        fix += " (and critic.ppo_mini_batch_size likewise)"
    message = (
        f"GFPO keeps {prompts} prompts x k={k} = {rows} rows per step, but verl pads a batch to a multiple of "
        f"ppo_mini_batch_size * rollout.n = {multiple}: {pad} synthetic rows per step"
        f"{' (warm-up k; adaptive k varies)' if adaptive else ''}. To train on the kept rows only, {fix}."
    )
    _warn(message)


def _warn(message: str, category: type[Warning] = GFPOFilterWarning) -> None:
    logger.warning(message)
    warnings.warn(message, category, stacklevel=4)
