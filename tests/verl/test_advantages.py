"""GFPO advantages on verl: the ``gfpo`` estimator registered with verl's own registry, run by the
trainer's own ``_compute_advantage`` on batches GFPOReplayBuffer kept. Expectations are by hand."""

from __future__ import annotations

import math
import warnings

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.v1 import get_trainer_cls  # noqa: E402

from gfpo_filters.errors import AdvantageStdWarning, GFPOFilterWarning  # noqa: E402
from gfpo_filters.integrations import verl as gfpo_verl  # noqa: E402
from tests.verl.conftest import build_buffer, gfpo_config, new_uid, write_group  # noqa: E402

# The length filter keeps the 2 shortest: s0 (reward 1) and s1 (reward 0).
GROUP = [[(1, 1.0)], [(2, 0.0)], [(3, 1.0)], [(4, 0.0)]]


def kept_advantages(transfer_queue, partition, config, **sample) -> dict[str, float]:
    """Sample with the buffer verl builds from ``config``, then run the trainer's own advantage step on
    the kept batch; the first token's advantage of each kept key."""
    buffer = build_buffer(config)
    batch, _ = buffer.sample(global_steps=0, partition_id=partition, batch_size=sample.get("batch_size", 1))
    trainer = object.__new__(get_trainer_cls("sync"))
    trainer.config = config
    trainer._compute_advantage(batch, metrics={})
    out = transfer_queue.kv_batch_get(keys=batch.keys, partition_id=partition, select_fields=["advantages"])
    return {key: row[0].item() for key, row in zip(batch.keys, out["advantages"].unbind())}


def test_gfpo_is_registered_with_verl():
    assert core_algos.get_adv_estimator_fn("gfpo") is gfpo_verl.compute_gfpo_outcome_advantage


@pytest.mark.parametrize(
    ("options", "plus"),
    [
        ({}, 1.0),  # the paper's Eq. 1: population std over the kept set, rewards 1 and 0 -> +-1
        ({"advantage_std": "population"}, 1.0),
        ({"advantage_std": "sample"}, 1 / math.sqrt(2)),  # torch.std (n - 1), as verl's GRPO
    ],
)
def test_kept_pair_is_standardised_as_the_paper_says(transfer_queue, partition, make_config, options, plus):
    u = new_uid()
    write_group(transfer_queue, partition, u, GROUP)
    config = gfpo_config(make_config, num_remains_in_group=2, **options)
    advantages = kept_advantages(transfer_queue, partition, config)
    assert advantages == pytest.approx({f"{u}_0_0": plus, f"{u}_1_0": -plus}, abs=1e-5)


def test_no_std_division_when_verl_says_so(transfer_queue, partition, make_config):
    """``algorithm.norm_adv_by_std_in_grpo=False`` (Dr. GRPO) applies to gfpo as to grpo: mean-centred only."""
    u = new_uid()
    write_group(transfer_queue, partition, u, GROUP)
    config = gfpo_config(make_config, num_remains_in_group=2)
    config.algorithm.norm_adv_by_std_in_grpo = False
    assert kept_advantages(transfer_queue, partition, config) == pytest.approx(
        {f"{u}_0_0": 0.5, f"{u}_1_0": -0.5}, abs=1e-6
    )


def test_groups_are_standardised_separately_and_equal_rewards_give_zero(transfer_queue, partition, make_config):
    """Two prompts in one batch: kept rewards (1, 0, 1) and (1, 1, 1). Population std of (1, 0, 1) is
    sqrt(2)/3, so the advantages are (1/3) / (sqrt(2)/3) = 1/sqrt(2) and -sqrt(2); the second set is all 0."""
    a, b = new_uid(), new_uid()
    write_group(transfer_queue, partition, a, [[(1, 1.0)], [(2, 0.0)], [(3, 1.0)], [(4, 0.0)]])
    write_group(transfer_queue, partition, b, [[(1, 1.0)], [(2, 1.0)], [(3, 1.0)], [(4, 0.0)]])
    config = gfpo_config(make_config)
    advantages = kept_advantages(transfer_queue, partition, config, batch_size=2)
    r = 1 / math.sqrt(2)
    expected = {f"{a}_0_0": r, f"{a}_1_0": -2 * r, f"{a}_2_0": r, f"{b}_0_0": 0, f"{b}_1_0": 0, f"{b}_2_0": 0}
    assert advantages == pytest.approx(expected, abs=1e-5)


def test_verl_grpo_keeps_its_sample_std_and_says_so(make_config):
    """With algorithm.adv_estimator=grpo the buffer warns that verl divides by the sample std; choosing it
    explicitly (advantage_std=sample) is silent."""
    with pytest.warns(AdvantageStdWarning, match=r"sample std.*0\.707.*adv_estimator=gfpo.*advantage_std=sample"):
        build_buffer(gfpo_config(make_config, adv_estimator="grpo"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GFPOFilterWarning)
        build_buffer(gfpo_config(make_config, adv_estimator="grpo", advantage_std="sample"))
        build_buffer(gfpo_config(make_config))  # gfpo, population std: the documented config


def test_advantage_std_must_be_population_or_sample(make_config):
    with pytest.raises(ValueError, match=r"advantage_std='pop' must be 'population' .* or 'sample'"):
        build_buffer(gfpo_config(make_config, advantage_std="pop"))


def test_gfpo_with_sessions_of_several_outputs_is_refused(transfer_queue, partition, make_config):
    """verl hands every estimator but grpo one row per output, so a session of two outputs would count
    twice in its prompt's mean and std; the buffer stops with the fix before any advantage is computed."""
    c = new_uid()
    write_group(transfer_queue, partition, c, [[(1, 1.0), (2, 1.0)], [(5, 0.0)], [(3, 1.0)], [(4, 0.0)]])
    buffer = build_buffer(gfpo_config(make_config, num_remains_in_group=2))
    with pytest.raises(ValueError, match=r"several outputs.*adv_estimator=grpo.*advantage_std=sample"):
        buffer.sample(global_steps=0, partition_id=partition, batch_size=1)
