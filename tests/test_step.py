"""The engine-neutral GFPO step: hand-computed kept sets, advantages and metrics."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from gfpo_filters import (
    FilterOutputError,
    FilterStateError,
    FilterStateWarning,
    GFPOStepWarning,
    GroupInputError,
    load_filter,
)
from gfpo_filters.adaptive import AdaptiveK
from gfpo_filters.step import (
    filter_state,
    gfpo_step,
    group_rows,
    has_signal,
    load_filter_state,
    resolve_filter,
    selection_metrics,
)

NAN = float("nan")


def test_length_filter_keeps_the_shortest_and_standardises_over_the_kept_set():
    ids = [[[1] * 5, [1] * 2, [1] * 9, [1] * 3], [[1] * 4, [1] * 4, [1] * 1, [1] * 7]]
    rewards = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    result = gfpo_step(load_filter("length"), completions=[["a"] * 4] * 2, rewards=rewards, k=2, completion_ids=ids)
    # Group 0: lengths 5 2 9 3 -> keep 2 and 3 (rows 1, 3); group 1: lengths 4 4 1 7 -> keep 1, then the earlier 4.
    np.testing.assert_array_equal(result.kept, [[False, True, False, True], [True, False, True, False]])
    # Kept rewards {0, 1}: mean 0.5, population std 0.5 -> advantages -1 and +1 (eps 1e-4 in the denominator).
    a = 0.5 / (0.5 + 1e-4)
    np.testing.assert_allclose(result.advantages, [[0, -a, 0, a], [-a, 0, a, 0]])
    np.testing.assert_array_equal(result.k, [2, 2])
    m = result.metrics
    assert m["gfpo/kept_length_mean"] == pytest.approx((2 + 3 + 4 + 1) / 4)
    assert m["gfpo/all_length_mean"] == pytest.approx((5 + 2 + 9 + 3 + 4 + 4 + 1 + 7) / 8)
    assert m["gfpo/kept_reward_mean"] == pytest.approx(0.5)
    assert m["gfpo/frac_kept_zero_std"] == 0.0
    assert m["gfpo/kept_fraction"] == 0.5
    assert m["gfpo/filter_seconds"] >= 0


def test_k_per_group_and_missing_rewards_rank_last():
    rewards = np.array([[1.0, NAN, 0.5, 0.0], [0.2, 0.4, 0.6, 0.8]])
    result = gfpo_step(load_filter("reward"), completions=[["x"] * 4] * 2, rewards=rewards, k=[3, 2])
    # Group 0 keeps its three known rewards, never the missing one; group 1 keeps the two highest.
    np.testing.assert_array_equal(result.kept, [[True, False, True, True], [False, False, True, True]])
    assert result.advantages[0, 1] == 0.0
    assert result.metrics["gfpo/missing_reward_frac"] == pytest.approx(1 / 8)


def test_a_plain_callable_gets_lists_and_only_the_arguments_it_takes():
    seen = {}

    def prefer_last(group_completions, group_rewards, num_remains_in_group):
        seen.update(rewards=group_rewards, k=num_remains_in_group)
        return [list(range(len(g))) for g in group_completions]

    rewards = np.array([[1.0, NAN, 0.0]])
    result = gfpo_step(prefer_last, completions=[["a", "b", "c"]], rewards=rewards, k=2, lengths=np.ones((1, 3)))
    assert isinstance(seen["rewards"], list) and seen["rewards"][0][0] == 1.0 and math.isnan(seen["rewards"][0][1])
    assert seen["k"] == 2
    # Scores 0, 1, 2, but completion 1 has no reward: kept are 2 and then 0.
    np.testing.assert_array_equal(result.kept, [[True, False, True]])


def test_sync_scores_decides_the_selection():
    # On many processes the engine replaces local scores by process 0's: the step must use what it returns.
    rewards = np.array([[0.0, 1.0, 0.0, 1.0]])
    result = gfpo_step(
        load_filter("reward"),
        completions=[["a"] * 4],
        rewards=rewards,
        k=2,
        sync_scores=lambda s: np.array([[4.0, 3.0, 2.0, 1.0]]),
    )
    np.testing.assert_array_equal(result.kept, [[True, True, False, False]])


def test_adaptive_k_comes_from_the_window_after_warmup():
    adaptive = AdaptiveK([4, 3, 3, 2], warmup_k=2, warmup_steps=1)
    rewards = np.array([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]] * 2)
    warm = gfpo_step(
        load_filter("length"), completions=[["a"] * 4] * 4, rewards=rewards, k=2, adaptive=adaptive, global_step=0
    )
    np.testing.assert_array_equal(warm.k, [2, 2, 2, 2])
    after = gfpo_step(
        load_filter("length"), completions=[["a"] * 4] * 4, rewards=rewards, k=2, adaptive=adaptive, global_step=1
    )
    # Difficulties 0.25 and 0.75 in equal numbers: mid-rank percentiles 0.25 (hard) and 0.75 (easy).
    np.testing.assert_array_equal(after.buckets, [1, 3, 1, 3])
    np.testing.assert_array_equal(after.k, [3, 2, 3, 2])
    assert after.metrics["gfpo/bucket_hard_frac"] == 0.5 and after.metrics["gfpo/bucket_easy_frac"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 5}, r"k=5 for group 0 is out of range: groups have 4 completions"),
        ({"k": [2]}, r"k must be one int or 2 ints"),
        ({"k": 2, "completions": [["a"] * 4]}, r"completions must be 2 groups of 4"),
        ({"k": 2, "lengths": np.ones((2, 3))}, r"lengths have shape \(2, 3\); expected \(2, 4\)"),
    ],
)
def test_bad_batches_are_named(kwargs, match):
    call = {"completions": [["a"] * 4] * 2, "rewards": np.zeros((2, 4)), **kwargs}
    with pytest.raises(ValueError, match=match):
        gfpo_step(load_filter("length"), **call)


def test_a_filter_returning_the_wrong_shape_is_named():
    def bad(group_completions, group_rewards):
        return [[0.0, 1.0]]

    with pytest.raises(
        FilterOutputError, match=r"filter '\S*<locals>.bad' returned scores of shape \(1, 2\); expected"
    ):
        gfpo_step(bad, completions=[["a", "b", "c"]], rewards=np.zeros((1, 3)), k=2)


def test_helpers():
    assert group_rows([1, 2, 3, 4, 5, 6], 3) == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="5 rows do not form whole groups of 2"):
        group_rows([1, 2, 3, 4, 5], 2)
    rewards = np.array([[1.0, 1.0, 0.0], [1.0, NAN, 1.0]])
    np.testing.assert_array_equal(has_signal(rewards, np.ones((2, 3), bool)), [True, False])
    np.testing.assert_array_equal(has_signal(rewards, [[True, True, False], [True, True, True]]), [False, False])
    m = selection_metrics(
        rewards, np.ones((2, 3)), np.array([[True, False, True], [True, True, False]]), np.array([2, 2])
    )
    assert m["gfpo/frac_kept_zero_std"] == 0.5
    assert resolve_filter("reward", {"threshold": 0.5}).threshold == 0.5
    with pytest.raises(ValueError, match="need a filter name"):
        resolve_filter(lambda **kw: None, {"x": 1})


def test_row_multiple_adds_the_next_ranked_rows_of_the_hardest_groups_first():
    # reward filter, k=2: 6 rows kept; row_multiple=4 needs 2 more. Mean rewards 0.5, 0.25, 0.75: group 1 is
    # the hardest, then group 0; each adds its best-ranked completion not kept (ties by position: row 1).
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    result = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 3, rewards=rewards, k=2, row_multiple=4)
    np.testing.assert_array_equal(
        result.kept, [[True, True, True, False], [True, True, True, False], [True, True, False, False]]
    )
    # Advantages over the final kept sets: {1, 0, 1} -> mean 2/3, std sqrt(2)/3; {0, 0, 1} -> mean 1/3; {1, 1} -> 0.
    s = math.sqrt(2) / 3 + 1e-4
    np.testing.assert_allclose(
        result.advantages, [[1 / 3 / s, -2 / 3 / s, 1 / 3 / s, 0], [-1 / 3 / s, -1 / 3 / s, 2 / 3 / s, 0], [0] * 4]
    )
    assert result.metrics["gfpo/rounding_rows"] == 2.0
    assert result.metrics["gfpo/keep_signal_swaps"] == 0.0
    assert result.metrics["gfpo/kept_fraction"] == 8 / 12
    np.testing.assert_array_equal(result.k, [2, 2, 2])  # k stays what the filter was asked for


def test_row_multiple_goes_round_by_round_and_breaks_ties_by_group_index():
    # Equal mean rewards: group 0 before group 1; 3 rows kept of 8, row_multiple=7 adds 4: two rounds of both groups.
    rewards = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    kept = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 2, rewards=rewards, k=[2, 1], row_multiple=7).kept
    np.testing.assert_array_equal(kept, [[True, True, True, True], [False, True, True, True]])
    # One more row than a round: group 0 (first by index) gets it.
    kept = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 2, rewards=rewards, k=1, row_multiple=3).kept
    np.testing.assert_array_equal(kept, [[True, True, False, False], [False, False, False, True]])


def test_row_multiple_adds_rows_without_a_reward_only_when_nothing_else_is_left():
    rewards = np.array([[1.0, NAN, 0.0, NAN], [0.0, 1.0, 0.0, 1.0]])
    # 4 kept, row_multiple=6: group 0 has no scorable row left, group 1 (mean 0.5) adds its next two.
    result = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 2, rewards=rewards, k=2, row_multiple=6)
    np.testing.assert_array_equal(result.kept, [[True, False, True, False], [True, True, True, True]])
    with pytest.warns(GFPOStepWarning, match=r"row_multiple=7: .* 1 of the 3 rows added .* have no reward"):
        result = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 2, rewards=rewards, k=2, row_multiple=7)
    # The first missing row by rank (position 1) comes in, with advantage 0.
    np.testing.assert_array_equal(result.kept, [[True, True, True, False], [True, True, True, True]])
    assert result.advantages[0, 1] == 0.0


def test_row_multiple_never_keeps_an_unavailable_slot():
    # reward filter, k=2, row_multiple=4 needs 2 more rows; group 1 (the hardest) would add its completion 3 first,
    # but that slot does not exist (a failed session): its next available row and group 0's best are added.
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, np.nan], [1.0, 1.0, 1.0, 0.0]])
    available = np.ones((3, 4), dtype=bool)
    available[1, 3] = False
    with pytest.warns(GFPOStepWarning, match="rows the filter rejected are kept"):
        result = gfpo_step(
            load_filter("reward"), completions=[["a"] * 4] * 3, rewards=rewards, k=2, row_multiple=4,
            available=available,
        )  # fmt: skip
    assert not result.kept[1, 3] and result.kept.sum() == 8
    assert result.added.sum() == 2 and result.metrics["gfpo/rounding_rows"] == 2.0
    with pytest.raises(GroupInputError, match=r"row_multiple=12: .* has only 5 rows left"):
        gfpo_step(
            load_filter("reward"), completions=[["a"] * 4] * 3, rewards=rewards, k=2, row_multiple=12,
            available=available,
        )  # fmt: skip


def test_row_multiple_that_the_batch_cannot_reach_is_an_error():
    with pytest.raises(GroupInputError, match=r"row_multiple=5: 2 kept rows need 3 more .* has only 2 rows left"):
        gfpo_step(load_filter("reward"), completions=[["a"] * 2] * 2, rewards=np.zeros((2, 2)), k=1, row_multiple=5)
    with pytest.raises(ValueError, match=r"row_multiple must be an int >= 1, got 0"):
        gfpo_step(load_filter("reward"), completions=[["a"] * 2], rewards=np.zeros((1, 2)), k=1, row_multiple=0)


@pytest.mark.parametrize("mode", ["off", "swap", "swap_long", "group_baseline", "balanced"])
def test_row_multiple_gives_a_multiple_in_every_keep_signal_mode(mode):
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, size=(6, 8)).astype(float)
    lengths = rng.integers(1, 50, size=(6, 8))
    result = gfpo_step(
        load_filter("length"),
        completions=[["a"] * 8] * 6,
        rewards=rewards,
        lengths=lengths,
        k=3,
        keep_signal=mode,
        row_multiple=8,
    )
    assert result.kept.sum() == 24 and result.metrics["gfpo/rounding_rows"] == 6.0
    assert (result.kept >= result.top).all() or mode in ("swap", "swap_long", "balanced")


# ---------------------------------------------------------------- bad input is rejected or named (issue 16, item 6)


def test_a_filter_returning_nan_scores_is_named_and_the_group_keeps_its_first_k():
    def half_nan(group_completions, group_rewards):
        return [[NAN] * 4, [3.0, NAN, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0]]

    rewards = np.array([[0.0, 1.0, 0.0, 1.0]] * 3)
    with pytest.warns(GFPOStepWarning) as record:
        result = gfpo_step(half_nan, completions=[["a"] * 4] * 3, rewards=rewards, k=2)
    message = " ".join(str(w.message) for w in record)
    assert "half_nan" in message
    assert "1 group(s) got only NaN scores (groups [0])" in message and "first 2 completions" in message
    assert "1 NaN score(s) where the reward is known (first: group 1, completion 1)" in message
    # All NaN: sample order (first k with a reward); partly NaN: the NaN ranks last.
    np.testing.assert_array_equal(
        result.kept, [[True, True, False, False], [True, False, False, True], [False, False, True, True]]
    )


def test_a_filter_returning_only_nan_scores_for_the_batch_is_named():
    def all_nan(group_completions, group_rewards):
        return [[NAN] * 3 for _ in group_completions]

    with pytest.warns(GFPOStepWarning, match=r"all_nan.* 2 group\(s\) got only NaN scores \(groups \[0, 1\]\)"):
        gfpo_step(all_nan, completions=[["a"] * 3] * 2, rewards=np.zeros((2, 3)), k=1)


def test_nan_scores_where_the_reward_is_missing_are_fine():
    def nan_where_missing(group_completions, group_rewards):
        return [[NAN if math.isnan(r) else 1.0 for r in g] for g in group_rewards]

    rewards = np.array([[0.0, NAN, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gfpo_step(nan_where_missing, completions=[["a"] * 3], rewards=rewards, k=2)


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_an_infinite_reward_is_an_error_naming_group_and_completion(bad):
    rewards = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, bad]])
    with pytest.raises(GroupInputError, match=rf"reward {bad} for group 1, completion 2 .*1 such reward"):
        gfpo_step(load_filter("reward"), completions=[["a"] * 3] * 2, rewards=rewards, k=2)


def test_adaptive_k_larger_than_g_is_an_error():
    with pytest.raises(ValueError, match=r"k_map \[8, 8, 6, 4\] .* groups of 4 completions"):
        AdaptiveK([8, 8, 6, 4], warmup_k=4, group_size=4)
    with pytest.raises(ValueError, match=r"warmup_k=5 .* groups of 4 completions"):
        AdaptiveK([4, 4, 3, 2], warmup_k=5, group_size=4)
    with pytest.raises(ValueError, match=r"k_map values must be >= 1"):
        AdaptiveK([4, 0, 3, 2], warmup_k=2)
    # Built without the group size, it is checked against the first batch.
    adaptive = AdaptiveK([8, 8, 6, 4], warmup_k=4)
    with pytest.raises(ValueError, match=r"k_map \[8, 8, 6, 4\] .* groups of 4 completions"):
        gfpo_step(load_filter("reward"), completions=[["a"] * 4], rewards=np.zeros((1, 4)), k=2, adaptive=adaptive)


def test_rows_without_a_reward_never_fill_kept_slots():
    # Group 0 knows 2 rewards of 4 and keeps only those; group 1 knows none and keeps nothing.
    rewards = np.array([[1.0, NAN, 0.0, NAN], [NAN] * 4, [0.0, 1.0, 1.0, 0.0]])
    with pytest.warns(
        GFPOStepWarning,
        match=r"2 group\(s\) have fewer known rewards than k \(groups \[0, 1\]\).*"
        r"2 completion\(s\) kept instead of 6",
    ):
        result = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 3, rewards=rewards, k=3)
    np.testing.assert_array_equal(result.kept, [[True, False, True, False], [False] * 4, [True, True, True, False]])
    np.testing.assert_array_equal(result.kept.sum(axis=1), [2, 0, 3])


def test_row_multiple_does_not_add_rows_without_a_reward_while_others_are_left():
    rewards = np.array([[1.0, NAN, 0.0, NAN], [0.0, 1.0, 0.0, 1.0]])
    # Group 0 keeps its 2 known rewards (k=3), group 1 keeps 3: 5 rows; row_multiple=6 adds group 1's last row.
    with pytest.warns(GFPOStepWarning, match="fewer known rewards than k"):
        result = gfpo_step(load_filter("reward"), completions=[["a"] * 4] * 2, rewards=rewards, k=3, row_multiple=6)
    np.testing.assert_array_equal(result.kept, [[True, False, True, False], [True, True, True, True]])


def test_frac_no_signal_counts_groups_whose_advantages_are_all_zero():
    # group_baseline, k=2: `reward` keeps the two 1.0... use `length` to keep the two 0.5 rewards, the group's mean.
    rewards = np.array([[0.5, 0.5, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    lengths = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    result = gfpo_step(
        load_filter("length"),
        completions=[["a"] * 4] * 2,
        rewards=rewards,
        lengths=lengths,
        k=2,
        keep_signal="group_baseline",
    )
    assert not result.advantages[0].any() and result.advantages[1].any()
    assert result.metrics["gfpo/frac_no_signal"] == 0.5
    np.testing.assert_array_equal(result.signal, [False, True])


# ---------------------------------------------------------------- filter state across a resume (issue 16, item 7)


def _run(filter_fn, adaptive, rewards, steps, start=0):
    out = []
    for step in range(start, start + steps):
        r = rewards[step % len(rewards)]
        result = gfpo_step(
            filter_fn, completions=[["a"] * r.shape[1]] * r.shape[0], rewards=r, k=2, adaptive=adaptive,
            global_step=step,
        )  # fmt: skip
        out.append(result)
    return out


def test_a_resumed_run_keeps_the_rows_of_an_uninterrupted_one():
    rng = np.random.default_rng(0)
    rewards = [rng.integers(0, 2, (6, 4)).astype(float) for _ in range(5)]

    def build():
        return load_filter("random", seed=3), AdaptiveK([4, 3, 3, 2], warmup_k=2, warmup_steps=1, window=8)

    filter_fn, adaptive = build()
    uninterrupted = _run(filter_fn, adaptive, rewards, 5)

    filter_fn, adaptive = build()
    _run(filter_fn, adaptive, rewards, 2)
    saved = json.loads(json.dumps(filter_state(filter_fn, adaptive)))  # as a checkpoint stores it
    assert saved["filter"] == "random" and saved["adaptive"]["values"]
    filter_fn, adaptive = build()
    load_filter_state(filter_fn, adaptive, saved)
    resumed = _run(filter_fn, adaptive, rewards, 3, start=2)
    for a, b in zip(uninterrupted[2:], resumed):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.k, b.k)
        np.testing.assert_array_equal(a.kept, b.kept)
    assert len({tuple(r.k) for r in resumed}) > 1  # adaptive k varies with the window

    # Without the saved state the resumed run replays the first draws: another selection.
    filter_fn, adaptive = build()
    with pytest.warns(FilterStateWarning) as record:
        load_filter_state(filter_fn, adaptive, {})
    assert [str(w.message)[:60] for w in record] == [
        "the checkpoint has no state for filter 'random', which keeps",
        "the checkpoint has no adaptive-k window: it starts empty, so",
    ]
    assert not np.array_equal(_run(filter_fn, adaptive, rewards, 1, start=2)[0].scores, uninterrupted[2].scores)


def test_combinations_save_the_state_of_their_components():
    def build():
        return load_filter("weighted", filters=["length", ("random", {"seed": 1})], weights=[1.0, 1.0])

    rewards = np.zeros((3, 4))
    f = build()
    f(group_completions=[["a"] * 4] * 3, group_rewards=rewards)
    state = json.loads(json.dumps(f.state_dict()))
    assert [c["name"] for c in state["components"]] == ["length", "random"] and state["components"][0]["state"] == {}
    g = build()
    g.load_state_dict(state)
    np.testing.assert_array_equal(
        f(group_completions=[["a"] * 4] * 3, group_rewards=rewards),
        g(group_completions=[["a"] * 4] * 3, group_rewards=rewards),
    )
    with pytest.raises(FilterStateError, match=r"'chain': the saved state is for components \['length', 'random'\]"):
        load_filter("chain", filters=["random", "length"]).load_state_dict(state)
    assert load_filter("chain", filters=["length", "reward"]).state_dict() == {}


def test_a_state_from_another_filter_is_an_error():
    saved = filter_state(load_filter("random"), None)
    with pytest.raises(FilterStateError, match=r"belongs to filter 'random', but this run uses 'length'"):
        load_filter_state(load_filter("length"), None, saved)
    with pytest.raises(FilterStateError, match=r"filter 'length' keeps no state, but was given a state"):
        load_filter("length").load_state_dict({"bit_generator": {}})
    with pytest.raises(FilterStateError, match=r"filter 'random': expected a state with a 'bit_generator'"):
        load_filter("random").load_state_dict({"seed": 0})
    with pytest.warns(FilterStateWarning, match="this run has no adaptive k: the window is ignored"):
        load_filter_state(load_filter("random"), None, {**saved, "adaptive": AdaptiveK([2] * 4, 2).state_dict()})


def test_the_state_saved_before_filters_had_one_still_loads():
    adaptive = AdaptiveK([4, 3, 3, 2], warmup_k=2)
    adaptive.update(np.array([0.25, 0.5]))
    restored = AdaptiveK([4, 3, 3, 2], warmup_k=2)
    load_filter_state(load_filter("length"), restored, {"adaptive": adaptive.state_dict()})
    assert len(restored) == 2


def test_plain_callables_keep_their_state_if_they_have_one():
    class Counter:
        def __init__(self):
            self.calls = 0

        def __call__(self, group_completions, group_rewards):
            self.calls += 1
            return [[float(self.calls)] * len(g) for g in group_completions]

        def state_dict(self):
            return {"calls": self.calls}

        def load_state_dict(self, state):
            self.calls = state["calls"]

    c = Counter()
    gfpo_step(c, completions=[["a"] * 2], rewards=np.zeros((1, 2)), k=1)
    saved = filter_state(c)
    assert saved == {"filter": "Counter",
                     "filter_state": {"calls": 1}, "adaptive": None}  # fmt: skip
    fresh = Counter()
    load_filter_state(fresh, None, saved)
    assert fresh.calls == 1

    def stateless(group_completions, group_rewards):
        return [[0.0] * len(g) for g in group_completions]

    assert filter_state(stateless)["filter_state"] == {}
    load_filter_state(stateless, None, filter_state(stateless))

    class Unsafe(Counter):
        def state_dict(self):
            return {"array": np.zeros(2)}

    with pytest.raises(FilterStateError, match="state_dict\\(\\) must return a JSON-serialisable dict"):
        filter_state(Unsafe())


def test_learned_refuses_a_state_saved_with_another_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    first = load_filter("learned", model=torch.nn.Linear(3, 1))
    saved = json.loads(json.dumps(filter_state(first)))
    assert saved["filter_state"]["model"] == "module Linear" and len(saved["filter_state"]["fingerprint"]) == 64
    same = load_filter("learned", model=first.model)
    load_filter_state(same, None, saved)
    other = load_filter("learned", model=torch.nn.Linear(3, 1))  # other random weights
    with pytest.raises(FilterStateError, match=r"'learned': the checkpoint was saved with model 'module Linear'"):
        load_filter_state(other, None, saved)
