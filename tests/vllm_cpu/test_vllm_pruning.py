"""Pruning with TRL's vLLM colocate generation on vLLM's CPU backend: one request per row, the engine driven by
gfpo_filters.generation.engine_with_pruning, pruned requests aborted."""

from __future__ import annotations

import gc

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM tests run in their own environment (README)")
pytest.importorskip("trl")

from gfpo_filters.experiments.toy import build_dataset, build_tokenizer  # noqa: E402
from tests.test_generation_pruning import assert_pruned_rows_could_not_be_kept  # noqa: E402
from tests.vllm_cpu.vllm_utils import SHIFT, keep_cpu_weights_loadable, policy, vllm_args  # noqa: E402


def test_vllm_colocate_prunes_and_aborts(tmp_path, model_dir):
    from gfpo_filters.trainer import GFPOTrainer

    seen_rewards: list[list[str]] = []

    def reward(completions, **kwargs):
        seen_rewards.append(list(completions))
        return [(len(c) % 5) / 4 for c in completions]

    keep_cpu_weights_loadable()
    gc.collect()
    trainer = GFPOTrainer(
        model=policy(model_dir, SHIFT),
        reward_funcs=[reward],
        args=vllm_args(
            str(tmp_path), per_device_train_batch_size=16, num_generations=8, num_remains_in_group=3,
            max_completion_length=40,
        ),
        train_dataset=build_dataset(16),
        processing_class=build_tokenizer(),
        group_filter_func="length",
    )  # fmt: skip
    trainer.vllm_generation.sync_weights = lambda: None
    assert trainer._gfpo_prune_plan.exactness == "exact"
    seen = []
    generate = trainer._generate_single_turn

    def spy(*args, **kwargs):
        ids, logprobs = generate(*args, **kwargs)
        seen.append(([list(x) for x in ids], [list(x) for x in logprobs], trainer._gfpo_pruned.copy()))
        return ids, logprobs

    trainer._generate_single_turn = spy
    trainer.train()
    ((ids, logprobs, pruned),) = seen
    assert pruned.any()
    assert len(seen_rewards[0]) == 16 - pruned.sum()
    # Every row's sampled-token log-probs match its tokens (pruned rows were cut to what they wrote).
    assert [len(x) for x in logprobs] == [len(x) for x in ids]
    assert_pruned_rows_could_not_be_kept(ids, pruned, group_size=8, k=3)
    logs = {k: v for h in trainer.state.log_history for k, v in h.items() if k.startswith("gfpo/")}
    assert logs["gfpo/pruned_fraction"] == pytest.approx(pruned.mean())
    assert logs["gfpo/decode_steps"] < 40
