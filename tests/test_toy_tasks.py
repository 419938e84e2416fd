"""The toy task family (gfpo_filters.experiments.toy.TASKS): plain TRL reward functions, checked by hand."""

from __future__ import annotations

import pytest

from gfpo_filters.experiments.toy import (
    BINARY_TASKS,
    FULL_COUNT,
    MIN_LETTERS,
    TASKS,
    contains_prompt_target,
    count_target,
    long_with_target,
    prompt_target,
)


def test_prompt_target_is_a_fixed_hash_of_the_prompt():
    # a=0, b=1, c=2, d=3: sum 6 -> "g"; z=25 four times: 100 % 26 = 22 -> "w".
    assert prompt_target("abcd") == "g" and prompt_target("zzzz") == "w"
    assert len({prompt_target(p) for p in ("abcd", "abce", "bbce", "qxyz")}) == 4


def test_prompt_letter_rewards_the_prompts_own_letter():
    prompts = ["abcd", "abcd", "zzzz", "zzzz"]
    completions = ["xxgq", "xxwq", "w", "g"]
    assert contains_prompt_target(completions, prompts=prompts) == [1.0, 0.0, 1.0, 0.0]
    # Conversational completions (TRL's message lists) are read the same way.
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    assert contains_prompt_target(chat, prompts=chat_prompts) == [1.0, 0.0, 1.0, 0.0]


def test_long_x_needs_the_letter_and_enough_letters():
    short, enough = "x" + "a" * (MIN_LETTERS - 2), "x" + "a" * (MIN_LETTERS - 1)
    assert long_with_target([short, enough, "a" * 40, ""]) == [0.0, 1.0, 0.0, 0.0]


def test_count_x_gives_partial_credit_per_x_up_to_full():
    assert FULL_COUNT == 3
    assert count_target(["", "ab", "xa", "axbx", "xxx", "xxxxxx"]) == [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]
    assert count_target([[{"role": "assistant", "content": "xx"}]]) == [2 / 3]
    assert set(BINARY_TASKS) == set(TASKS) - {"count_x"}


def test_every_task_is_a_reward_function_and_train_variant_checks_the_name():
    for func, description in TASKS.values():
        assert callable(func) and description
    assert TASKS["x"][0](["ax", "ab"]) == [1.0, 0.0]
    from gfpo_filters.experiments.demo import train_variant

    with pytest.raises(
        ValueError, match=r"unknown task 'y': choose one of \['count_x', 'long_x', 'prompt_letter', 'x'\]"
    ):
        train_variant("GRPO", None, None, 1, 0, 1e-3, task="y")


def test_length_controls_train_through_trl_and_log_the_task_reward():
    """GFPO (length, 2 of 4) with Kimi's length reward and Dr. GRPO's loss runs in the real trainer (2 steps); the
    history keeps the task reward apart from TRL's shaped ``reward``."""
    from gfpo_filters.experiments.demo import length_controlled_reward, train_variant

    run = train_variant(
        "kimi", "length", 2, 2, 0, 1e-3, task="long_x", num_generations=4, length_reward="kimi", loss_type="dr_grpo"
    )
    assert (run["num_generations"], run["length_reward"], run["loss_type"]) == (4, "kimi", "dr_grpo")
    h = run["history"][0]
    assert 0.0 <= h["task_reward"] <= 1.0 and h["task_reward"] != h["reward"]  # the term is not all zero here
    with pytest.raises(
        ValueError, match="unknown length_reward 'l1': choose one of kimi, kimi_correct, overlong or None"
    ):
        length_controlled_reward(TASKS["x"][0], "l1", 4, 48)
    # kimi_correct: lengths relative to the correct answers only. Group of 4, lengths 2, 4, 6, 1 (the last wrong):
    # among the correct ones min 2, max 6: lambda = 0.5, 0, -0.5; the wrong answer keeps its 0.
    shaped = length_controlled_reward(TASKS["x"][0], "kimi_correct", 4, 48)
    assert shaped(["xa", "xabc", "xabcde", "a"], completion_ids=[[1] * 2, [1] * 4, [1] * 6, [1]]) == [
        1.5,
        1.0,
        0.5,
        0.0,
    ]
    assert length_controlled_reward(TASKS["x"][0], None, 4, 48) is TASKS["x"][0]
