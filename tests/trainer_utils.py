"""Helpers shared by the trainer tests and the two-process worker (tiny models, no downloads)."""

from __future__ import annotations

import math
from typing import Any

import torch

from gfpo_filters.toy import build_dataset, build_model, build_tokenizer

torch.set_num_threads(1)


class Recorder:
    """A reward function that remembers every (prompt, completion) row, in batch order.

    Reward = (number of characters mod 5) / 4, so rewards vary and are easy to recompute.
    """

    __name__ = "recorder"

    def __init__(self, constant_below: str = "") -> None:
        self.rows: list[tuple[str, str]] = []
        self.constant_below = constant_below  # prompts sorting before this get reward 1 for every completion

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        self.rows = list(zip(prompts, completions))
        return [1.0 if p < self.constant_below else reward_of(c) for p, c in zip(prompts, completions)]


def reward_of(text: str) -> float:
    return (len(text) % 5) / 4


class CheckingFilter:
    """A group filter that asserts it received whole groups of one prompt, then keeps the shortest."""

    def __init__(self, recorder: Recorder, group_size: int) -> None:
        self.recorder, self.g = recorder, group_size
        self.calls: list[dict[str, Any]] = []

    def __call__(self, group_completions, group_rewards, **kwargs):
        self.calls.append({"group_completions": group_completions, "group_rewards": group_rewards, **kwargs})
        rows = self.recorder.rows
        for i, group in enumerate(group_completions):
            expected = rows[i * self.g : (i + 1) * self.g]
            prompts = {p for p, _ in expected}
            assert len(prompts) == 1, f"rows {i * self.g}..{(i + 1) * self.g - 1} hold several prompts {prompts}"
            assert list(group) == [c for _, c in expected], (
                f"group {i} received completions of other prompts: {list(group)} != {[c for _, c in expected]}"
            )
        lengths = kwargs.get("completion_lengths")
        if lengths is None:
            lengths = [[len(c) for c in group] for group in group_completions]
        return [[-float(x) for x in row] for row in lengths]


def expected_selection(lengths: list[list[int]], rewards: list[list[float]], k: int):
    """By hand: keep the k shortest (ties: earlier first); population-std advantages over them."""
    kept, advantages = [], []
    for row_len, row_r in zip(lengths, rewards):
        order = sorted(range(len(row_len)), key=lambda j: (row_len[j], j))[:k]
        mean = sum(row_r[j] for j in order) / k
        std = math.sqrt(sum((row_r[j] - mean) ** 2 for j in order) / k)
        kept.append(sorted(order))
        advantages.append([(row_r[j] - mean) / (std + 1e-4) if j in order else 0.0 for j in range(len(row_r))])
    return kept, advantages


def tiny_args(output_dir: str, **overrides: Any):
    from gfpo_filters.trainer import GFPOConfig

    config = dict(
        output_dir=output_dir,
        per_device_train_batch_size=12,
        num_generations=4,
        num_remains_in_group=3,
        max_completion_length=10,
        learning_rate=1e-3,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        beta=0.0,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        bf16=False,
    )
    config.update(overrides)
    return GFPOConfig(**config)


def tiny_parts():
    return {
        "model": build_model(0, hidden=16, layers=1),
        "processing_class": build_tokenizer(),
        "train_dataset": build_dataset(24),
    }


def capture_batches(trainer) -> list[dict[str, Any]]:
    """Record every batch GFPOTrainer hands to the loss (the output of _generate_and_score_completions)."""
    batches: list[dict[str, Any]] = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        out = original(inputs)
        batches.append(out)
        return out

    trainer._generate_and_score_completions = wrapped
    return batches


def decode_rows(batch, tokenizer) -> list[str]:
    """Texts of the rows of a batch, as the reward functions saw them."""
    texts = []
    for ids, mask in zip(batch["completion_ids"], batch["completion_mask"]):
        texts.append(tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True))
    return texts
