"""Built-in filters against hand-computed expectations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gfpo_filters import FilterParameterError, GFPOFilterWarning, Groups, load_filter, topk_mask
from gfpo_filters.selection import max_variance_mask

NAN = float("nan")


def call(name, completions, rewards, **kwargs):
    params = kwargs.pop("params", {})
    return np.array(load_filter(name, **params)(group_completions=completions, group_rewards=rewards, **kwargs))


def kept(scores, k):
    return [sorted(np.flatnonzero(row).tolist()) for row in topk_mask(np.asarray(scores), k)]


# ---------------------------------------------------------------------- length
def test_length_keeps_shortest_by_characters_without_token_info():
    scores = call("length", [["abcd", "a", "abc", "ab"]], [[1, 1, 1, 1]])
    assert scores.tolist() == [[-4.0, -1.0, -3.0, -2.0]]
    assert kept(scores, 2) == [[1, 3]]


def test_length_prefers_trainer_token_counts_over_text():
    # Texts say the first is longest; the token counts the trainer passes say it is shortest.
    scores = call("length", [["long text", "a", "bb"]], [[0, 0, 0]], completion_lengths=[[1, 5, 3]])
    assert scores.tolist() == [[-1.0, -5.0, -3.0]]


def test_length_uses_completion_ids_when_lengths_absent():
    ids = [[[1, 2, 3], [4], [5, 6]]]
    scores = call("length", [["x", "y", "z"]], [[0, 0, 0]], completion_ids=ids)
    assert scores.tolist() == [[-3.0, -1.0, -2.0]]


def test_length_uses_tokenizer_parameter():
    words = lambda text: text.split()  # noqa: E731 - a callable tokenizer: str -> tokens
    scores = call("length", [["a b c", "abcdefgh", "a b"]], [[0, 0, 0]], params={"tokenizer": words})
    assert scores.tolist() == [[-3.0, -1.0, -2.0]]


def test_length_ties_keep_the_earlier_completion():
    scores = call("length", [["aa", "bb", "c", "dd"]], [[0, 0, 0, 0]])
    assert kept(scores, 2) == [[0, 2]]  # "c" is shortest; "aa" wins the tie with "bb" and "dd"


def test_length_never_keeps_missing_reward_over_scored():
    # The shortest completion has no reward: it must rank below every scored one.
    scores = call("length", [["a", "bbbbbb", "cc", "ddd"]], [[None, 0.0, 1.0, NAN]])
    assert kept(scores, 2) == [[1, 2]]
    assert np.isfinite(scores).all()
    assert scores[0, 0] > scores[0, 3]  # among the unscored, the shorter still ranks first


def test_length_warns_about_empty_completions():
    with pytest.warns(GFPOFilterWarning, match=r"1 empty completion.*group 0, completion 1"):
        scores = call("length", [["ab", ""]], [[1, 1]])
    assert scores.tolist() == [[-2.0, 0.0]]


def test_message_list_completions_are_measured_by_content():
    completions = [
        [[{"role": "assistant", "content": "abc"}], [{"role": "assistant", "content": "a"}]],
        [[{"role": "assistant", "content": [{"type": "text", "text": "xy"}]}], [{"role": "assistant", "content": ""}]],
    ]
    with pytest.warns(GFPOFilterWarning):
        scores = call("length", completions, [[1, 1], [1, 1]])
    assert scores.tolist() == [[-3.0, -1.0], [-2.0, 0.0]]


# ---------------------------------------------------------------------- token efficiency
def test_token_efficiency_is_reward_per_token_for_positive_rewards():
    scores = call("token_efficiency", [["x"] * 3], [[1.0, 1.0, 0.5]], completion_lengths=[[10, 4, 1]])
    assert scores.tolist() == [[0.1, 0.25, 0.5]]


def test_token_efficiency_correct_short_beats_correct_long_beats_wrong():
    # 0/1 rewards: correct ones by R/L, all above the wrong ones; wrong ones longer first.
    lengths = [[30, 10, 5, 50, 20]]
    scores = call("token_efficiency", [["x"] * 5], [[1, 1, 0, 1, 0]], completion_lengths=lengths)
    order = np.argsort(-scores[0], kind="stable").tolist()
    assert order == [1, 0, 3, 4, 2]
    assert scores[0, 1] == pytest.approx(0.1)
    assert (scores[0, [2, 4]] < -1).all() and (scores[0, [2, 4]] > -2).all()


def test_token_efficiency_with_nonpositive_rewards_orders_by_reward_then_longer():
    # Negative rewards: higher reward first; at equal reward the longer first, as R/L would for R < 0.
    # lmax = 41, G = 4: score = -1 - (rank_R * 41 + (40 - L)) / (5 * 41)
    scores = call("token_efficiency", [["x"] * 4], [[-1, -0.5, -0.5, -1]], completion_lengths=[[5, 40, 10, 3]])
    assert np.argsort(-scores[0], kind="stable").tolist() == [1, 2, 0, 3]
    assert scores[0, 1] == pytest.approx(-1 - (1 * 41 + 0) / 205)
    assert scores[0, 0] == pytest.approx(-1 - (2 * 41 + 35) / 205)
    # Agrees with the paper's R/L wherever R/L orders a negative reward by length alone.
    plain = np.array([[-1 / 5, -0.5 / 40, -0.5 / 10, -1 / 3]])
    assert np.argsort(-plain[0]).tolist()[:2] == [1, 2]


def test_token_efficiency_empty_completion_counts_one_token():
    with pytest.warns(GFPOFilterWarning, match="empty"):
        scores = call("token_efficiency", [["", "abcd"]], [[1.0, 1.0]])
    assert scores.tolist() == [[1.0, 0.25]]


def test_token_efficiency_nan_reward_ranks_last_even_if_shortest():
    scores = call("token_efficiency", [["a", "bb", "ccc"]], [[NAN, 0.0, 1.0]])
    assert np.argsort(-scores[0], kind="stable").tolist() == [2, 1, 0]


# ---------------------------------------------------------------------- reward and random
def test_reward_keeps_highest_and_threshold_makes_it_binary():
    scores = call("reward", [["a"] * 4], [[0.2, 0.9, None, 0.5]])
    assert kept(scores, 2) == [[1, 3]]
    binary = call("reward", [["a"] * 4], [[0.2, 0.9, None, 0.5]], params={"threshold": 0.5})
    assert binary[0, [0, 1, 3]].tolist() == [0.0, 1.0, 1.0]
    assert binary[0, 2] < 0.0


def test_all_equal_rewards_tie_to_the_first_k():
    scores = call("reward", [["a"] * 5], [[1.0] * 5])
    assert kept(scores, 3) == [[0, 1, 2]]


def test_random_is_seeded_and_uniform():
    groups = [["a"] * 8] * 4
    rewards = [[0.0] * 8] * 4
    a = load_filter("random", seed=3)(group_completions=groups, group_rewards=rewards)
    b = load_filter("random", seed=3)(group_completions=groups, group_rewards=rewards)
    c = load_filter("random", seed=4)(group_completions=groups, group_rewards=rewards)
    assert a == b and a != c
    # Uniform over positions: each of 8 positions kept about k/G = 1/2 of the time.
    f = load_filter("random", seed=0)
    counts = np.zeros(8)
    for _ in range(500):
        counts += topk_mask(np.array(f(group_completions=groups, group_rewards=rewards)), 4).sum(axis=0)
    freq = counts / (500 * 4)
    assert np.abs(freq - 0.5).max() < 0.05


def test_random_still_ranks_missing_rewards_last():
    f = load_filter("random", seed=1)
    for _ in range(20):
        scores = np.array(f(group_completions=[["a"] * 4], group_rewards=[[None, 1, NAN, 0]]))
        assert min(scores[0, 1], scores[0, 3]) > max(scores[0, 0], scores[0, 2])


# ---------------------------------------------------------------------- max variance
def brute_force_max_var(rewards, k):
    return max(np.var([rewards[i] for i in subset]) for subset in itertools.combinations(range(len(rewards)), k))


def test_max_variance_hand_example():
    # Rewards 0, 1, 0.5, 0.2 with k=2: the extremes {0, 1} have the largest variance.
    scores = call("max_variance", [["a"] * 4], [[0, 1, 0.5, 0.2]], params={"k": 2})
    assert scores.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    # k=3: {0, 0.2, 1} (var 0.1956) beats {0, 0.5, 1} (var 0.1667).
    scores = call("max_variance", [["a"] * 4], [[0, 1, 0.5, 0.2]], params={"k": 3})
    assert scores.tolist() == [[1.0, 1.0, 0.0, 1.0]]


@pytest.mark.parametrize("seed", range(40))
def test_max_variance_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    g = int(rng.integers(2, 9))
    n = 5
    rewards = rng.choice([0.0, 0.25, 1.0, 2.0, -1.0], size=(n, g)) if seed % 2 else rng.normal(size=(n, g))
    k = rng.integers(1, g + 1, size=n)
    mask = max_variance_mask(rewards, np.ones_like(rewards, dtype=bool), k)
    for i in range(n):
        assert mask[i].sum() == k[i]
        assert np.var(rewards[i][mask[i]]) == pytest.approx(brute_force_max_var(rewards[i], k[i]), abs=1e-12)


def test_max_variance_takes_k_from_trainer_and_handles_missing_rewards():
    rewards = [[0.0, NAN, 1.0, 0.4, 0.6], [0.0, 0.0, 0.0, 1.0, 0.5]]
    scores = call("max_variance", [["a"] * 5] * 2, rewards, num_remains_in_group=[2, 3])
    # Group 1 sorted: 0, 0, 0, 0.5, 1. Splits (low j + high 3-j): j=2 -> {0, 0, 1} has var 2/9, the maximum.
    assert kept(scores, [2, 3]) == [[0, 2], [0, 1, 3]]
    # The missing reward never makes it in while scorable ones remain.
    assert scores[0, 1] < scores[0, [0, 2, 3, 4]].min()


def test_max_variance_brute_force_with_missing_rewards():
    rng = np.random.default_rng(7)
    for _ in range(30):
        r = rng.normal(size=6)
        valid = rng.random(6) > 0.3
        k = int(rng.integers(1, 7))
        mask = max_variance_mask(np.where(valid, r, np.nan)[None], valid[None], np.array([k]))[0]
        kk = min(k, valid.sum())
        assert mask.sum() == kk and not (mask & ~valid).any()
        if kk:
            assert np.var(r[mask]) == pytest.approx(brute_force_max_var(r[valid].tolist(), kk), abs=1e-12)


def test_max_variance_without_k_is_a_clear_error():
    with pytest.raises(FilterParameterError, match=r"max_variance.*num_remains_in_group.*k="):
        call("max_variance", [["a", "b"]], [[0, 1]])


def test_max_variance_k_larger_than_group_is_an_error():
    with pytest.raises(FilterParameterError, match=r"k=5 is larger than the group size G=3"):
        call("max_variance", [["a"] * 3], [[0, 1, 2]], params={"k": 5})


# ---------------------------------------------------------------------- combinations
def test_chain_correct_first_then_shortest():
    completions = [["aaaa", "a", "aa", "", "aaa"]]
    rewards = [[1, 1, 0, 0, 1]]
    with pytest.warns(GFPOFilterWarning):
        scores = call("chain", completions, rewards, params={"filters": [("reward", {"threshold": 1}), "length"]})
    assert np.argsort(-scores[0], kind="stable").tolist() == [1, 4, 0, 3, 2]


def test_chain_keeps_full_ties_tied():
    scores = call("chain", [["ab", "cd", "e"]], [[1, 1, 0]], params={"filters": ["reward", "length"]})
    assert scores[0, 0] == scores[0, 1] > scores[0, 2]


def test_weighted_rank_normalisation_by_hand():
    # reward ranks (average, /(G-1)): [0, 1, 0.5]; length ranks (shorter = higher): lengths 3,2,1 -> [0, 0.5, 1]
    scores = call(
        "weighted", [["aaa", "aa", "a"]], [[0.0, 2.0, 1.0]], params={"filters": ["reward", "length"], "weights": [2, 1]}
    )
    assert scores[0].tolist() == pytest.approx([0.0, 2.5, 2.0])


def test_weighted_accepts_mapping_and_other_normalisations():
    completions, rewards = [["aaa", "aa", "a"]], [[0.0, 2.0, 1.0]]
    minmax = call("weighted", completions, rewards, params={"filters": {"reward": 1.0}, "normalize": "minmax"})
    assert minmax[0].tolist() == pytest.approx([0.0, 1.0, 0.5])
    z = call("weighted", completions, rewards, params={"filters": {"reward": 1.0}, "normalize": "zscore"})
    assert z[0].tolist() == pytest.approx([-1.2247449, 1.2247449, 0.0])


def test_weighted_all_equal_group_normalises_to_zero():
    scores = call("weighted", [["a", "b"]], [[1.0, 1.0]], params={"filters": ["reward"], "normalize": "zscore"})
    assert scores.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"filters": []}, "non-empty list"),
        ({"filters": "length"}, "non-empty list"),
        ({"filters": ["length"], "weights": [1, 2]}, "one finite weight per filter"),
        ({"filters": ["length"], "normalize": "softmax"}, "normalize"),
        ({"filters": ["lenght"]}, "Did you mean 'length'"),
    ],
)
def test_weighted_bad_parameters(params, match):
    with pytest.raises((FilterParameterError, KeyError), match=match):
        load_filter("weighted", **params)


def test_combinations_pass_trainer_kwargs_to_components():
    f = load_filter("chain", filters=["max_variance", "length"])
    scores = np.array(
        f(group_completions=[["a", "bb", "c", "d"]], group_rewards=[[0, 1, 0.5, 0.5]], num_remains_in_group=2)
    )
    assert kept(scores, 2) == [[0, 1]]


# ---------------------------------------------------------------------- batches
def test_many_groups_are_scored_independently():
    completions = [["aaa", "a", "aa"], ["b", "bbb", "bb"]]
    scores = call("length", completions, [[0, 0, 0], [0, 0, 0]])
    assert kept(scores, 1) == [[1], [0]]


def test_accepts_numpy_and_torch_rewards():
    torch = pytest.importorskip("torch")
    rewards = torch.tensor([[1.0, 0.0], [0.5, float("nan")]])
    scores = call("reward", [["a", "b"], ["c", "d"]], rewards)
    assert scores[0].tolist() == [1.0, 0.0] and scores[1, 0] > scores[1, 1]
    scores_np = call("reward", [["a", "b"], ["c", "d"]], rewards.numpy())
    assert np.array_equal(scores, scores_np)


def test_empty_batch_returns_empty_list():
    assert load_filter("length")(group_completions=[], group_rewards=[]) == []


def test_groups_lengths_report_their_unit():
    g = Groups([["ab", "c"]], [[0, 0]])
    assert g.length_unit == "characters" and g.lengths.tolist() == [[2, 1]]
    g = Groups([["ab", "c"]], [[0, 0]], completion_lengths=[[7, 9]])
    assert g.length_unit == "tokens" and g.lengths.tolist() == [[7, 9]]
    assert math.isnan(Groups([["a"]], [[None]]).rewards[0, 0])
