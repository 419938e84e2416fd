"""GFPOReplayBuffer against real verl objects: TransferQueue, verl's ReplayBuffer, the trainer's
``_build_replay_buffer`` and ``_compute_advantage``, and ``core_algos``. Expectations are by hand."""

from __future__ import annotations

import contextlib
import math
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.v1 import get_trainer_cls  # noqa: E402

from gfpo_filters.errors import GFPOFilterWarning, GFPOStepWarning, IgnoredSettingWarning  # noqa: E402
from gfpo_filters.integrations.verl import GFPOReplayBuffer, GFPOReplayBufferAsync  # noqa: E402
from tests.verl.conftest import (  # noqa: E402
    build_buffer,
    gfpo_config,
    gfpo_overrides,
    new_uid,
    present_keys,
    write_group,
)

# ---------------------------------------------------------------------------------------------
# Selection on a sampled batch
# ---------------------------------------------------------------------------------------------

# Sessions as (response length, reward). The length filter keeps the 3 shortest of each prompt:
# A keeps s1 (2), s2 (3), s0 (5); B keeps s2 (1), s0 (4), s1 (4: ties go to the earlier session).
GROUP_A = [[(5, 1.0)], [(2, 0.0)], [(3, 1.0)], [(7, 0.0)]]
GROUP_B = [[(4, 0.5)], [(4, 1.0)], [(1, 0.0)], [(6, 1.0)]]


def test_keeps_top_k_per_uid_and_clears_the_rest(transfer_queue, partition, make_config):
    a, b = new_uid(), new_uid()
    write_group(transfer_queue, partition, a, GROUP_A)
    write_group(transfer_queue, partition, b, GROUP_B)
    buffer = build_buffer(gfpo_config(make_config))
    assert type(buffer) is GFPOReplayBuffer

    batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=2)

    kept = {f"{a}_1_0", f"{a}_2_0", f"{a}_0_0", f"{b}_2_0", f"{b}_0_0", f"{b}_1_0"}
    assert set(batch.keys) == kept and len(batch.keys) == 6
    assert all(tag["response_len"] in (1, 2, 3, 4, 5) for tag in batch.tags)  # tags travel with their keys
    assert present_keys(transfer_queue, partition) == kept  # the rejected rows are gone from TransferQueue
    assert metrics["gfpo/sampled_rows"] == 8 and metrics["gfpo/kept_rows"] == 6
    assert metrics["gfpo/k_mean"] == 3
    assert metrics["gfpo/all_length_mean"] == pytest.approx(32 / 8)
    assert metrics["gfpo/kept_length_mean"] == pytest.approx((2 + 3 + 5 + 1 + 4 + 4) / 6)
    assert metrics["gfpo/kept_reward_mean"] == pytest.approx((0 + 1 + 1 + 0 + 0.5 + 1) / 6)

    # verl's GRPO on the kept rows: advantages over the kept set, with torch.std (n - 1).
    data = transfer_queue.kv_batch_get(keys=batch.keys, partition_id=partition, select_fields=["rm_scores"])
    rewards = data["rm_scores"].to_padded_tensor(0.0)
    mask = data["rm_scores"].to_padded_tensor(-1.0) != -1.0
    uids = np.array([key.split("_")[0] for key in batch.keys], dtype=object)
    advantages, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask.float(), uids)
    by_key = dict(zip(batch.keys, advantages[:, 0].tolist()))
    s = 1 / math.sqrt(3)  # A's kept rewards 1, 0, 1: mean 2/3, sample std sqrt(1/3)
    expected = {
        f"{a}_0_0": (1 / 3) / s,
        f"{a}_1_0": (-2 / 3) / s,
        f"{a}_2_0": (1 / 3) / s,
        f"{b}_0_0": 0.0,  # B's kept rewards 0.5, 1, 0: mean 0.5, sample std 0.5
        f"{b}_1_0": 1.0,
        f"{b}_2_0": -1.0,
    }
    for key, value in expected.items():
        assert by_key[key] == pytest.approx(value, abs=1e-5), key


def test_multi_output_sessions_stay_whole(transfer_queue, partition, make_config):
    """A session is one completion: its length is all its outputs, its reward its last output's,
    and all its outputs are kept or dropped together. Checked through the trainer's own advantage step."""
    c = new_uid()
    # Totals 7, 5, 4, 6: the 2 shortest sessions are s2 and s1 (by first or last output it would differ).
    write_group(
        transfer_queue,
        partition,
        c,
        [[(1, 1.0), (6, 1.0)], [(5, 0.0)], [(3, 1.0), (1, 1.0)], [(2, 0.0), (4, 0.0)]],
    )
    # verl's GRPO counts each session once (gfpo refuses several outputs: tests/verl/test_advantages.py).
    config = gfpo_config(make_config, adv_estimator="grpo", num_remains_in_group=2, advantage_std="sample")
    buffer = build_buffer(config)
    batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=1)

    assert set(batch.keys) == {f"{c}_2_0", f"{c}_2_1", f"{c}_1_0"}
    assert metrics["gfpo/sampled_rows"] == 7 and metrics["gfpo/kept_rows"] == 3
    assert metrics["gfpo/kept_length_mean"] == pytest.approx((4 + 5) / 2)  # per session

    trainer = object.__new__(get_trainer_cls("sync"))
    trainer.config = config
    trainer._compute_advantage(batch, metrics={})
    out = transfer_queue.kv_batch_get(keys=batch.keys, partition_id=partition, select_fields=["advantages"])
    first = dict(zip(batch.keys, [row[0].item() for row in out["advantages"].unbind()]))
    s = math.sqrt(0.5)  # kept rewards 1 (s2) and 0 (s1): mean 0.5, sample std sqrt(0.5)
    assert first[f"{c}_2_0"] == pytest.approx(0.5 / s, abs=1e-5)
    assert first[f"{c}_2_1"] == pytest.approx(0.5 / s, abs=1e-5)
    assert first[f"{c}_1_0"] == pytest.approx(-0.5 / s, abs=1e-5)


@pytest.mark.parametrize(("missing", "kept_sessions"), [(1, (2, 0, 3)), (3, (1, 2, 0))])
def test_a_failed_session_is_never_kept(transfer_queue, partition, make_config, missing, kept_sessions):
    """verl samples failed groups with the sessions that finished; the missing one ranks last. The group
    still has rollout.n = 4 slots when its last session is the one that failed."""
    d = new_uid()
    write_group(transfer_queue, partition, d, GROUP_A, status="failure", missing=(missing,))
    buffer = build_buffer(gfpo_config(make_config))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GFPOFilterWarning)  # no "empty completion" for the missing session
        batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
    assert set(batch.keys) == {f"{d}_{s}_0" for s in kept_sessions}
    assert metrics["gfpo/sampled_rows"] == 3 and metrics["gfpo/kept_rows"] == 3
    lengths = [GROUP_A[s][0][0] for s in kept_sessions]
    assert metrics["gfpo/kept_length_mean"] == metrics["gfpo/all_length_mean"] == pytest.approx(sum(lengths) / 3)
    assert metrics["gfpo/kept_fraction"] == pytest.approx(3 / 4)  # of the 4 slots, the failed one included


# Lengths are tokens the policy wrote: response_mask sums. Session 0 has 9 response tokens of which 6
# are a tool's output (response_mask 0), so the policy wrote 3; the others wrote 4, 5 and 7.
TOOL_GROUP = [[(9, 1.0, 6)], [(4, 0.0)], [(5, 1.0)], [(7, 0.0)]]


def test_lengths_count_only_tokens_the_policy_wrote(transfer_queue, partition, make_config):
    """The length filter keeps the 2 sessions the policy wrote least for: s0 (3 of 9) and s1 (4). By
    len(responses) it would keep s1 (4) and s2 (5)."""
    u = new_uid()
    write_group(transfer_queue, partition, u, TOOL_GROUP)
    buffer = build_buffer(gfpo_config(make_config, num_remains_in_group=2))
    batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
    assert set(batch.keys) == {f"{u}_0_0", f"{u}_1_0"}
    assert metrics["gfpo/kept_length_mean"] == pytest.approx((3 + 4) / 2)
    assert metrics["gfpo/all_length_mean"] == pytest.approx((3 + 4 + 5 + 7) / 4)


def test_a_filter_is_given_the_policy_lengths(transfer_queue, partition):
    seen = {}

    def record(group_completions, group_rewards, completion_lengths):
        seen["lengths"] = [[int(n) for n in g] for g in completion_lengths]
        return [[0.0] * len(g) for g in group_completions]

    write_group(transfer_queue, partition, new_uid(), TOOL_GROUP)
    buffer = GFPOReplayBuffer(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs={"filter": record, "num_remains_in_group": 2},
    )
    buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
    assert seen["lengths"] == [[3, 4, 5, 7]]


def test_response_length_before_and_after_the_filter(transfer_queue, partition, make_config):
    """verl's response_length/* describe the kept rows only; the buffer logs the policy's own lengths over
    every sampled session next to the kept ones. A session is clipped when a response reached
    actor_rollout_ref.rollout.response_length (7 here): s3 of both groups (7), and s0 of TOOL_GROUP (9
    tokens with the tool's, though the policy wrote 3)."""
    a, t = new_uid(), new_uid()
    write_group(transfer_queue, partition, a, GROUP_A)
    write_group(transfer_queue, partition, t, TOOL_GROUP)
    config = gfpo_config(make_config)
    config.actor_rollout_ref.rollout.response_length = 7
    batch, metrics = build_buffer(config).sample(global_steps=0, partition_id=partition, batch_size=2)
    # GROUP_A keeps lengths 2, 3, 5; TOOL_GROUP keeps 3 (clipped), 4, 5.
    assert metrics["gfpo/sampled_response_length/mean"] == pytest.approx((5 + 2 + 3 + 7 + 3 + 4 + 5 + 7) / 8)
    assert metrics["gfpo/sampled_response_length/max"] == 7
    assert metrics["gfpo/sampled_response_length/min"] == 2
    assert metrics["gfpo/sampled_response_length/clip_ratio"] == pytest.approx(3 / 8)
    assert metrics["gfpo/kept_response_length/mean"] == pytest.approx((2 + 3 + 5 + 3 + 4 + 5) / 6)
    assert metrics["gfpo/kept_response_length/max"] == 5
    assert metrics["gfpo/kept_response_length/min"] == 2
    assert metrics["gfpo/kept_response_length/clip_ratio"] == pytest.approx(1 / 6)


def test_validation_is_not_filtered(transfer_queue, make_config):
    e = new_uid()
    keys = write_group(transfer_queue, "val", e, GROUP_A)
    buffer = build_buffer(gfpo_config(make_config))
    try:
        batch, metrics = buffer.sample(global_steps=0, partition_id="val", batch_size=1)
        assert set(batch.keys) == set(keys) and not any(k.startswith("gfpo/") for k in metrics)
    finally:
        transfer_queue.kv_clear(keys=keys, partition_id="val")


def test_async_modes_build_the_async_buffer(transfer_queue, partition, make_config):
    f = new_uid()
    write_group(transfer_queue, partition, f, GROUP_B)
    buffer = build_buffer(gfpo_config(make_config, mode="colocate_async"))
    assert type(buffer) is GFPOReplayBufferAsync
    assert hasattr(buffer, "wait_for_sampleable") and hasattr(buffer, "get_sampleable_count")
    batch, _ = buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
    assert set(batch.keys) == {f"{f}_2_0", f"{f}_0_0", f"{f}_1_0"}


def test_adaptive_k_per_prompt(transfer_queue, partition, make_config):
    """Four prompts with mean rewards 0, 1/4, 1/2, 1 fall in four buckets (window = this batch):
    very hard, hard, medium, easy keep 3, 3, 2, 2."""
    uids = [new_uid() for _ in range(4)]
    for uid, rewards in zip(uids, ([0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1])):
        write_group(transfer_queue, partition, uid, [[(s + 1, float(r))] for s, r in enumerate(rewards)])
    buffer = build_buffer(gfpo_config(make_config, num_remains_in_group=2, adaptive_k=[3, 3, 2, 2]))
    batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=4)
    kept = {uid: sorted(k for k in batch.keys if k.startswith(uid)) for uid in uids}
    assert [len(v) for v in kept.values()] == [3, 3, 2, 2]
    assert kept[uids[0]] == [f"{uids[0]}_{s}_0" for s in range(3)]  # the shortest: sessions 0, 1, 2
    assert metrics["gfpo/k_mean"] == pytest.approx(2.5)
    assert metrics["gfpo/bucket_very_hard_frac"] == metrics["gfpo/bucket_easy_frac"] == pytest.approx(0.25)


def test_keep_signal_swaps_a_wrong_answer_into_an_all_correct_kept_set(transfer_queue, partition, make_config):
    """The 2 shortest of (1, 1.0), (2, 1.0), (3, 0.0), (4, 1.0) are both correct: no variance, no gradient.
    keep_signal swaps the lower-ranked kept session (s1) for the best-ranked one of another reward (s2)."""
    u = new_uid()
    write_group(transfer_queue, partition, u, [[(1, 1.0)], [(2, 1.0)], [(3, 0.0)], [(4, 1.0)]])
    buffer = build_buffer(gfpo_config(make_config, num_remains_in_group=2, keep_signal="swap"))
    assert buffer.keep_signal == "swap"
    batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
    assert set(batch.keys) == {f"{u}_0_0", f"{u}_2_0"}
    assert present_keys(transfer_queue, partition) == {f"{u}_0_0", f"{u}_2_0"}
    assert metrics["gfpo/keep_signal_swaps"] == 1
    assert metrics["gfpo/frac_kept_zero_std_before"] == 1.0 and metrics["gfpo/frac_kept_zero_std"] == 0.0


def test_tokenizer_gives_filters_text(transfer_queue, partition, make_config, tmp_path):
    from gfpo_filters.experiments.toy import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    seen = {}

    def shortest_text(group_completions, group_rewards, completion_ids):
        seen["text"], seen["ids"] = group_completions, completion_ids
        return [[-len(t) for t in group] for group in group_completions]

    g = new_uid()
    write_group(transfer_queue, partition, g, [[(2, 1.0)], [(1, 0.0)], [(3, 1.0)], [(1, 0.0)]])
    buffer = GFPOReplayBuffer(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs={"filter": shortest_text, "num_remains_in_group": 2, "tokenizer": str(tmp_path)},
    )
    batch, _ = buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
    # Session s's token t is 2 + (10 s + t) % 26, the letter ascii_lowercase[(10 s + t) % 26].
    assert seen["ids"] == [[[2, 3], [12], [22, 23, 24], [6]]]
    assert seen["text"] == [["ab", "k", "uvw", "e"]]
    assert set(batch.keys) == {f"{g}_1_0", f"{g}_3_0"}  # the two one-letter texts


# ---------------------------------------------------------------------------------------------
# Construction from verl's config, and its errors
# ---------------------------------------------------------------------------------------------


def test_the_trainer_builds_it_from_the_documented_config(make_config):
    """The full ``PPOTrainerSync.__init__`` on the config lines of docs/verl.md (no GPUs needed to construct)."""
    config = make_config(
        **{
            "actor_rollout_ref.rollout.n": 8,
            "data.train_batch_size": 8,
            "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
            "algorithm.adv_estimator": "gfpo",
        },
        **gfpo_overrides(filter="token_efficiency", num_remains_in_group=4),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", GFPOFilterWarning)
        trainer = get_trainer_cls("sync")(config=config)
    buffer = trainer.replay_buffer
    assert type(buffer) is GFPOReplayBuffer
    assert buffer.group_filter.name == "token_efficiency" and buffer.num_remains_in_group == 4
    trainer.global_steps = 0
    # 8 prompts x k=4 = 32 rows per step; 32 is a multiple of ppo_mini_batch_size * n = 32 and of dp=2.
    assert trainer._get_required_batch_multiple(dp_size=2) == 32


def test_filter_params_reach_the_filter(make_config):
    params = {"filters": {"length": 1.0, "reward": 2.0}, "normalize": "zscore"}
    buffer = build_buffer(gfpo_config(make_config, filter="weighted", filter_params=params))
    assert buffer.group_filter.name == "weighted"
    assert buffer.group_filter.weights == [1.0, 2.0] and buffer.group_filter.normalize == "zscore"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"filter": "shortest"}, r"unknown filter 'shortest'.*Available filters: .*token_efficiency"),
        ({"filter": None}, r"sampler_kwargs.filter is not set"),
        ({"num_remains_in_group": None}, r"num_remains_in_group is not set"),
        ({"num_remains_in_group": 4}, r"num_remains_in_group=4 is out of range: .* from 2 to 3 \(.*rollout.n=4\)"),
        ({"num_remains_in_group": 1}, r"num_remains_in_group=1 is out of range"),
        ({"num_remains_in_group": "3"}, r"num_remains_in_group='3' is out of range"),
        ({"adaptive_k": [3, 3, 2]}, r"adaptive_k=\[3, 3, 2\] must be 4 ints"),
        ({"num_remain_in_group": 3}, r"unknown keys \['num_remain_in_group'\]"),
        ({"keep_signal": "group_baseline"}, r"keep_signal='group_baseline' changes only the advantages"),
        ({"keep_signal": "sometimes"}, r"sampler_kwargs.keep_signal must be True, False or one of"),
    ],
)
def test_construction_errors(make_config, overrides, message):
    with pytest.raises((ValueError, KeyError), match=message):
        build_buffer(gfpo_config(make_config, **overrides))


def test_a_colocated_reward_model_is_refused_with_what_to_configure(make_config):
    config = gfpo_config(make_config)
    config.reward.reward_model.enable = True
    with pytest.raises(ValueError, match=r"enable_resource_pool=False.*rule-based reward.*enable_resource_pool=True"):
        build_buffer(config)
    config.reward.reward_model.enable_resource_pool = True  # reward model on its own GPUs: scored before sampling
    assert build_buffer(config).num_remains_in_group == 3


# Settings verl's PPOTrainer._build_replay_buffer passes only to its own buffers (verl 0.9.1), per mode.
IGNORED = [
    ("algorithm.filter_groups.enable", "sync", r"algorithm.filter_groups .*DAPO.* is ignored"),
    ("algorithm.filter_groups.enable", "colocate_async", r"algorithm.filter_groups .*DAPO.* is ignored"),
    ("algorithm.filter_groups.enable", "separate_async", r"algorithm.filter_groups .*DAPO.* is ignored"),
    ("trainer.v1.sampler.sync_refill_failed_groups", "sync", r"sync_refill_failed_groups=True is ignored"),
]


@pytest.mark.parametrize(("setting", "mode", "message"), IGNORED)
def test_settings_verl_drops_for_a_custom_sampler_are_named(make_config, setting, mode, message):
    config = gfpo_config(make_config, mode=mode)
    assert not ignored_setting_warnings(config)  # not set: no word
    OmegaConf.update(config, setting, True)
    (warning,) = ignored_setting_warnings(config)
    assert re.search(message, str(warning.message))


@pytest.mark.parametrize("mode", ["colocate_async", "separate_async"])
def test_sync_refill_is_not_reported_in_async_modes(make_config, mode):
    """verl's own async buffer always refills failed groups and reads no sync_refill_failed_groups: nothing is lost."""
    config = gfpo_config(make_config, mode=mode)
    config.trainer.v1.sampler.sync_refill_failed_groups = True
    assert not ignored_setting_warnings(config)


def ignored_setting_warnings(config) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        build_buffer(config)
    return [w for w in record if issubclass(w.category, IgnoredSettingWarning)]


def test_async_buffer_refuses_sync_mode(make_config):
    config = gfpo_config(make_config)
    config.trainer.v1.sampler.custom_sampler.name = "GFPOReplayBufferAsync"
    with pytest.raises(ValueError, match="custom_sampler.name=GFPOReplayBuffer"):
        build_buffer(config)


def test_missing_rewards_at_sampling_say_what_to_configure(transfer_queue, partition, make_config):
    h = new_uid()
    write_group(transfer_queue, partition, h, GROUP_A, reward=False)
    buffer = build_buffer(gfpo_config(make_config))
    with pytest.raises(RuntimeError, match=r"no rm_scores.*enable_resource_pool=True"):
        buffer.sample(global_steps=0, partition_id=partition, batch_size=1)


# ---------------------------------------------------------------------------------------------
# The compute saving and verl's batch padding
# ---------------------------------------------------------------------------------------------


def padded_rows(config, kept, transfer_queue, dp_size=2):
    """Rows verl's ``_balance_batch`` hands to the update: the batch after ``upsample_batch_to_divisible_size``."""
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size

    trainer = object.__new__(get_trainer_cls("sync"))
    trainer.config, trainer.use_critic, trainer.global_steps = config, False, 0
    padded = upsample_batch_to_divisible_size(kept, trainer._get_required_batch_multiple(dp_size), eos_token_id=2)
    synthetic = [key for key, tag in zip(padded.keys, padded.tags) if tag.get("is_padding")]
    transfer_queue.kv_clear(keys=padded.keys, partition_id=padded.partition_id)
    return len(padded), len(synthetic)


def test_batch_padding_with_and_without_the_sizing_rule(transfer_queue, partition, make_config):
    """The issue's case: 4 prompts, n=8, k=3, 2 ranks, ppo_mini_batch_size=4 (GRPO's one step per batch):
    verl pads the 12 kept rows to 32. With 8 prompts and ppo_mini_batch_size = 8 * 3 / 8 = 3, none."""
    sessions = [[(s + 1, float(s % 2))] for s in range(8)]

    def run(prompts, mini):
        for _ in range(prompts):
            write_group(transfer_queue, partition, new_uid(), sessions)
        config = make_config(
            **{
                "actor_rollout_ref.rollout.n": 8,
                "data.train_batch_size": prompts,
                "actor_rollout_ref.actor.ppo_mini_batch_size": mini,
                "algorithm.adv_estimator": "gfpo",
            },
            **gfpo_overrides(filter="length", num_remains_in_group=3),
        )
        with pytest.warns(GFPOFilterWarning) if 3 * prompts % (8 * mini) else _no_gfpo_warning() as record:
            buffer = build_buffer(config)
        batch, _ = buffer.sample(global_steps=0, partition_id=partition, batch_size=prompts)
        return len(batch), padded_rows(config, batch, transfer_queue), record

    kept, (rows, synthetic), record = run(prompts=4, mini=4)
    assert (kept, rows, synthetic) == (12, 32, 20)
    text = " ".join(str(w.message) for w in record)
    assert "12 rows per step" in text and "20 synthetic rows" in text and "multiple of 8 (rollout.n / gcd" in text

    kept, (rows, synthetic), _ = run(prompts=8, mini=3)
    assert (kept, rows, synthetic) == (24, 24, 0)


def test_fill_batch_multiple_keeps_real_rows_instead_of_synthetic_ones(transfer_queue, partition, make_config):
    """Adaptive k with 4 prompts of n = 8 and ppo_mini_batch_size = 1: verl's multiple is 8 rows. Mean rewards
    0, 1/8, 1/2 and 1 fall in the 4 buckets, which keep 3, 3, 2 and 2: 10 rows, which verl pads to 16 with 6
    synthetic ones. With fill_batch_multiple the buffer keeps 6 more ranked rows instead, hardest prompts first,
    one per prompt per round: 2 rounds over the prompts (very hard, hard, medium, easy), then very hard and hard
    once more. The length filter ranks by length, so each prompt adds its next shortest sessions."""
    rewards = ([0] * 8, [1] + [0] * 7, [1, 0] * 4, [1] * 8)

    def run(fill):
        uids = [new_uid() for _ in rewards]
        for uid, r in zip(uids, rewards):
            write_group(transfer_queue, partition, uid, [[(s + 1, float(x))] for s, x in enumerate(r)])
        config = make_config(
            **{
                "actor_rollout_ref.rollout.n": 8,
                "data.train_batch_size": 4,
                "actor_rollout_ref.actor.ppo_mini_batch_size": 1,
                "algorithm.adv_estimator": "gfpo",
            },
            **gfpo_overrides(
                filter="length",
                num_remains_in_group=2,
                adaptive_k=[3, 3, 2, 2],
                fill_batch_multiple=fill,
            ),
        )
        buffer = build_buffer(config)
        batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=4)
        per_prompt = [sum(key.startswith(uid) for key in batch.keys) for uid in uids]
        return per_prompt, metrics, padded_rows(config, batch, transfer_queue)

    per_prompt, metrics, (rows, synthetic) = run(False)
    assert (per_prompt, rows, synthetic, metrics["gfpo/rounding_rows"]) == ([3, 3, 2, 2], 16, 6, 0)
    per_prompt, metrics, (rows, synthetic) = run(True)
    assert (per_prompt, rows, synthetic, metrics["gfpo/rounding_rows"]) == ([5, 5, 3, 3], 16, 0, 6)
    assert metrics["gfpo/kept_rows"] == 16


def test_fill_batch_multiple_with_a_failed_session_fills_with_real_sessions_and_counts_them(
    transfer_queue, partition, make_config
):
    """Issue 21, finding 6: the same batch with session 7 of the easy prompt failed. Rounding never picks the
    failed session (it would be dropped again, leaving verl to pad), the metrics recomputed without it still count
    the 6 rows added as rounding (not as keep_signal swaps), and the rounding is warned about."""
    rewards = ([0] * 8, [1] + [0] * 7, [1, 0] * 4, [1] * 8)
    uids = [new_uid() for _ in rewards]
    for i, (uid, r) in enumerate(zip(uids, rewards)):
        sessions = [[(s + 1, float(x))] for s, x in enumerate(r)]
        write_group(transfer_queue, partition, uid, sessions, missing=(7,) if i == 3 else ())
    config = make_config(
        **{
            "actor_rollout_ref.rollout.n": 8,
            "data.train_batch_size": 4,
            "actor_rollout_ref.actor.ppo_mini_batch_size": 1,
            "algorithm.adv_estimator": "gfpo",
        },
        **gfpo_overrides(filter="length", num_remains_in_group=2, adaptive_k=[3, 3, 2, 2], fill_batch_multiple=True),
    )
    buffer = build_buffer(config)
    with pytest.warns(GFPOStepWarning, match=r"row_multiple: rows the filter rejected are kept and trained"):
        batch, metrics = buffer.sample(global_steps=0, partition_id=partition, batch_size=4)
    assert not any(key.startswith(f"{uids[3]}_7_") for key in batch.keys)
    assert metrics["gfpo/kept_rows"] == 16 and padded_rows(config, batch, transfer_queue)[1] == 0
    assert metrics["gfpo/rounding_rows"] == 6 and metrics["gfpo/keep_signal_swaps"] == 0


def test_fill_batch_multiple_needs_whole_mini_batches_in_the_sampled_batch(make_config):
    """With 6 prompts and ppo_mini_batch_size = 4, 48 sampled rows are not a multiple of 4 x 8 = 32: filling could
    ask for more rows than were sampled, so the buffer refuses it at construction."""
    config = make_config(
        **{
            "actor_rollout_ref.rollout.n": 8,
            "data.train_batch_size": 6,
            "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
            "algorithm.adv_estimator": "gfpo",
        },
        **gfpo_overrides(filter="length", num_remains_in_group=2, adaptive_k=[3, 3, 2, 2], fill_batch_multiple=True),
    )
    with pytest.raises(ValueError, match=r"fill_batch_multiple.*48 rows.*multiple of 32.*train_batch_size"):
        build_buffer(config)


@contextlib.contextmanager
def _no_gfpo_warning():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield record
    assert not [w for w in record if issubclass(w.category, GFPOFilterWarning)]


def test_segment_sums_and_regular_tensors():
    """Rows stored as a regular tensor (all the same length) read like jagged ones."""
    from gfpo_filters.integrations.verl import _rows

    values, counts = _rows(torch.tensor([[1, 2], [3, 4]]))
    assert values.tolist() == [1, 2, 3, 4] and counts.tolist() == [2, 2]
    nested = torch.nested.as_nested_tensor([torch.tensor([1.0]), torch.tensor([2.0, 3.0])], layout=torch.jagged)
    values, counts = _rows(nested)
    assert values.tolist() == [1.0, 2.0, 3.0] and counts.tolist() == [1, 2]
