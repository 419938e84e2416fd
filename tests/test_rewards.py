"""Length-control rewards (gfpo_filters.rewards): hand-computed values, TRL's formula, and the errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gfpo_filters.rewards import kimi_length_reward, length_penalty, overlong_punishment, soft_overlong


def given(rewards):
    """A task reward returning ``rewards`` whatever it is asked (records its keyword arguments)."""

    def task(completions, **kwargs):
        task.kwargs = kwargs
        return list(rewards)

    return task


def ids(*lengths):
    return [[7] * n for n in lengths]


def test_kimi_form_by_hand():
    # one group of 4: lengths 2, 6, 2, 10 -> min 2, max 10; lambda = 0.5 - (len - 2) / 8 = 0.5, 0, 0.5, -0.5
    # correct (1, 1, 0, 0): +lambda for the correct, min(0, lambda) for the wrong
    f = length_penalty(given([1, 1, 0, 0]), num_generations=4)
    assert f(["a"] * 4, completion_ids=ids(2, 6, 2, 10), prompts=["p"] * 4) == [1.5, 1.0, 0.0, -0.5]


def test_two_groups_are_separate_and_equal_lengths_give_zero():
    # group 1: lengths 4, 4 (span 0 -> lambda 0); group 2: lengths 1, 3 -> lambda 0.5, -0.5
    f = length_penalty(given([1, 0, 1, 1]), num_generations=2)
    out = f(["a"] * 4, completion_ids=ids(4, 4, 1, 3), prompts=["p", "p", "q", "q"])
    assert out == [1.0, 0.0, 1.5, 0.5]


def test_scale_and_among_correct():
    # among="correct": min/max over the correct answers only (lengths 2 and 6), wrong answers untouched
    f = length_penalty(given([1, 1, 0, 0]), num_generations=4, scale=0.2, among="correct")
    assert f(["a"] * 4, completion_ids=ids(2, 6, 1, 30), prompts=["p"] * 4) == pytest.approx([1.2, 0.8, 0.0, 0.0])
    # one correct answer: no span, no term
    f = length_penalty(given([1, 0, 0, 0]), num_generations=4, among="correct")
    assert f(["a"] * 4, completion_ids=ids(9, 1, 2, 3), prompts=["p"] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_threshold_for_graded_rewards():
    # graded reward: correct means >= 0.8 here; 0.5 is wrong, its lambda 0.5 is not paid (min(0, lambda) = 0)
    f = length_penalty(given([0.9, 0.5]), num_generations=2, threshold=0.8)
    assert f(["a", "b"], completion_ids=ids(5, 1), prompts=["p", "p"]) == pytest.approx([0.4, 0.5])


def test_none_reward_stays_none_and_counts_for_lengths():
    f = length_penalty(given([None, 1, 0]), num_generations=3)
    # lengths 10, 0, 5: min 0, max 10; lambda -0.5, 0.5, 0; the unscorable one stays None
    assert f(["a"] * 3, completion_ids=ids(10, 0, 5), prompts=["p"] * 3) == [None, 1.5, 0.0]


def test_passes_trl_kwargs_through():
    task = given([1, 0])
    f = length_penalty(task, num_generations=2)
    f(["a", "b"], completion_ids=ids(1, 2), prompts=["p", "p"], answer=[3, 3])
    assert task.kwargs["answer"] == [3, 3] and task.kwargs["prompts"] == ["p", "p"]
    assert task.kwargs["completion_ids"] == ids(1, 2)


def test_conversational_prompts_compare_by_value():
    p = [{"role": "user", "content": "2 + 2?"}]
    f = length_penalty(given([1, 1]), num_generations=2)
    assert f(["a", "b"], completion_ids=ids(1, 3), prompts=[list(p), list(p)]) == [1.5, 0.5]


def test_empty_batch_and_empty_completion():
    assert length_penalty(given([]), num_generations=2)([], completion_ids=[], prompts=[]) == []
    assert overlong_punishment(given([]), 10, 2)([], completion_ids=[]) == []
    # a zero-token completion is a length like any other
    f = length_penalty(given([1, 1]), num_generations=2)
    assert f(["", "abc"], completion_ids=[[], [1, 2, 3]], prompts=["p", "p"]) == [1.5, 0.5]


def test_partial_or_mixed_groups_are_refused():
    f = length_penalty(given([1] * 6), num_generations=4)
    with pytest.raises(ValueError, match="not whole groups of num_generations=4"):
        f(["a"] * 6, completion_ids=ids(*[1] * 6), prompts=["p"] * 6)
    # 8 rows, but the tail of one prompt's group and the head of the next: a group split between processes
    f = length_penalty(given([1] * 8), num_generations=4)
    with pytest.raises(ValueError, match="rows 0-3 hold more than one prompt"):
        f(["a"] * 8, completion_ids=ids(*[1] * 8), prompts=["p", "p", "q", "q", "q", "q", "r", "r"])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"scale must be in \(0, 0.5\]"):
        length_penalty(given([]), num_generations=4, scale=0.6)
    with pytest.raises(ValueError, match="scale"):
        length_penalty(given([]), num_generations=4, scale=0)
    with pytest.raises(ValueError, match="num_generations must be an int >= 2"):
        length_penalty(given([]), num_generations=1)
    with pytest.raises(ValueError, match="among must be one of group, correct"):
        length_penalty(given([]), num_generations=4, among="wrong")
    with pytest.raises(TypeError, match="wraps a reward function"):
        length_penalty("correct_sum", num_generations=4)
    with pytest.raises(ValueError, match="soft_punish_cache"):
        overlong_punishment(given([]), 10, 11)
    with pytest.raises(ValueError, match="max_completion_len"):
        overlong_punishment(given([]), 0, 0)
    f = length_penalty(given([1, 1]), num_generations=2)
    with pytest.raises(ValueError, match="needs completion_ids"):
        f(["a", "b"], prompts=["p", "p"])
    with pytest.raises(ValueError, match="2 completions but 3 completion_ids"):
        f(["a", "b"], completion_ids=ids(1, 2, 3), prompts=["p", "p"])
    g = length_penalty(given([1]), num_generations=2)
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        g(["a", "b"], completion_ids=ids(1, 2), prompts=["p", "p"])


def test_overlong_matches_trl():
    from trl.rewards import get_soft_overlong_punishment

    lengths = [0, 50, 79, 80, 81, 90, 99, 100, 101, 150]
    theirs = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)(ids(*lengths))
    assert soft_overlong(np.array(lengths), 100, 20).tolist() == pytest.approx(theirs)
    f = overlong_punishment(given([1.0] * len(lengths)), 100, 20)
    assert f(["a"] * len(lengths), completion_ids=ids(*lengths)) == pytest.approx([1 + t for t in theirs])
    # cache 0: no ramp, -1 only beyond the cap
    assert soft_overlong(np.array([10, 11]), 10, 0).tolist() == [0.0, -1.0]


def test_kimi_term_vectorised_matches_a_loop():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, 64).astype(float)
    lengths = rng.integers(1, 40, 64).astype(float)
    term = kimi_length_reward(rewards, lengths, 8)
    for g in range(8):
        r, n = rewards[g * 8 : (g + 1) * 8], lengths[g * 8 : (g + 1) * 8]
        for i in range(8):
            lam = 0.5 - (n[i] - n.min()) / (n.max() - n.min()) if n.max() > n.min() else 0.0
            assert term[g * 8 + i] == pytest.approx(lam if r[i] == 1 else min(0.0, lam))


def test_pickles_like_trls_rewards():
    from gfpo_filters.experiments.addition import correct_sum

    f = pickle.loads(pickle.dumps(length_penalty(correct_sum, num_generations=2)))
    assert f.__name__ == "correct_sum+length_penalty"
    assert f(["4", "so 4"], completion_ids=ids(1, 3), prompts=["p", "p"], answer=[4, 4]) == [1.5, 0.5]
    g = pickle.loads(pickle.dumps(overlong_punishment(correct_sum, 4, 1)))
    assert g(["4", "5"], completion_ids=ids(1, 4), answer=[4, 4]) == [1.0, -1.0]
