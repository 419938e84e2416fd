"""The toy task family (gfpo_filters.experiments.toy.TASKS): plain TRL reward functions, checked by hand."""

from __future__ import annotations

import pytest

from gfpo_filters.experiments.toy import MIN_LETTERS, TASKS, contains_prompt_target, long_with_target, prompt_target


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


def test_every_task_is_a_reward_function_and_train_variant_checks_the_name():
    for func, description in TASKS.values():
        assert callable(func) and description
    assert TASKS["x"][0](["ax", "ab"]) == [1.0, 0.0]
    from gfpo_filters.experiments.demo import train_variant

    with pytest.raises(ValueError, match=r"unknown task 'y': choose one of \['long_x', 'prompt_letter', 'x'\]"):
        train_variant("GRPO", None, None, 1, 0, 1e-3, task="y")
