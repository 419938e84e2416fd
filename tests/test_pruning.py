"""Pruning during generation (gfpo_filters.pruning): the rules on hand-computed cases, the plan, the replay,
and the conformance check that holds an exact rule to its claim."""

from __future__ import annotations

import numpy as np
import pytest

from gfpo_filters import GFPOFilterWarning, load_filter
from gfpo_filters.pruning import (
    APPROXIMATE,
    EXACT,
    OFF,
    EfficiencyBound,
    FirstFinished,
    ScoreBound,
    ShortestK,
    plan_pruning,
    simulate,
)
from gfpo_filters.step import select
from gfpo_filters.testing import ConformanceError, check_filter, run_check

NAN = np.nan


def test_shortest_k_by_hand():
    # One group of 5, k = 2. Finished: rows 0 (length 4) and 3 (length 6). Running rows 1, 2, 4 have written
    # 5, 5 and 3 tokens, so they end with at least 6, 6 and 4.
    finished = [[True, False, False, True, False]]
    lengths = [[4, 5, 5, 6, 3]]
    pruned = ShortestK()(finished, lengths, k=2)
    # Row 1 (>= 6): row 0 (4 < 6) is ahead; row 3 (6 == 6) is ahead only of later rows -> 1 ahead, kept possible.
    # Row 2 (>= 6): row 0, and row 3? 3 > 2, so a tie at 6 goes to row 2 -> 1 ahead. Row 4 (>= 4): row 0 (4 == 4,
    # earlier) is ahead, row 3 (6) is not -> 1 ahead. Nothing is pruned.
    assert pruned.tolist() == [[False, False, False, False, False]]
    # One step later rows 1, 2, 4 have written 6, 6, 4 tokens (they end with >= 7, 7, 5): row 3 (6 < 7) is ahead
    # of rows 1 and 2 as well, so each has 2 ahead and is pruned; row 4 (>= 5) has only row 0 ahead (4 < 5).
    pruned = ShortestK()(finished, [[4, 6, 6, 6, 4]], k=2)
    assert pruned.tolist() == [[False, True, True, False, False]]


def test_shortest_k_tie_goes_to_the_earlier_completion():
    # k = 1: finished row 2 has length 3; running row 1 has written 2 tokens (ends with >= 3), row 3 too.
    pruned = ShortestK()([[False, False, True, False]], [[1, 2, 3, 2]], k=1)
    # Row 3 ending at 3 ties row 2 and loses (later index): pruned. Row 1 ending at 3 would win the tie: kept
    # possible. Row 0 (>= 2) can still be shorter.
    assert pruned.tolist() == [[False, False, False, True]]
    # Same state, checked against the step itself: lengths 3 for rows 1..3, row 0 length 5.
    kept = select(-np.array([[5.0, 3, 3, 3]]), np.ones((1, 4)), 1).kept
    assert kept.tolist() == [[False, True, False, False]]


def test_efficiency_bound_by_hand():
    # r_max = 1, k = 2. Finished rows 0 (R=1, L=4: 0.25), 1 (R=0.5, L=2: 0.25), 2 (R=0: never counts).
    # Running row 3 has written 3 tokens: at most 1/4 = 0.25; the ties at 0.25 go to rows 0 and 1 (earlier) ->
    # 2 ahead -> pruned. Running row 4 has written 2: at most 1/3 > 0.25 -> not pruned.
    rule = EfficiencyBound(1.0)
    finished = [[True, True, True, False, False]]
    pruned = rule(finished, [[4, 2, 5, 3, 2]], [[1.0, 0.5, 0.0, NAN, NAN]], k=2)
    assert pruned.tolist() == [[False, False, False, True, False]]
    # Unknown rewards of finished rows do not count: nothing is pruned.
    assert not rule(finished, [[4, 2, 5, 3, 2]], [[NAN, NAN, NAN, NAN, NAN]], k=2).any()
    # A bound <= 0 never prunes (among non-positive rewards the filter prefers longer completions).
    assert not EfficiencyBound(0.0)(finished, [[4, 2, 5, 9, 9]], [[-1.0, -1.0, -1.0, NAN, NAN]], k=1).any()


def test_first_finished_is_approximate_and_waits_for_max_m_k():
    rule = FirstFinished(3)
    assert rule.exactness == APPROXIMATE
    finished = [[True, True, False, False], [True, True, True, False]]
    assert rule(finished, [[1, 1, 1, 1], [1, 1, 1, 1]], k=2).tolist() == [
        [False, False, False, False],
        [False, False, False, True],
    ]
    assert not rule(finished, [[1, 1, 1, 1], [1, 1, 1, 1]], k=4).any()  # max(m, k) = 4 finished needed
    with pytest.raises(ValueError, match="m must be an int >= 1"):
        FirstFinished(0)


def test_bad_state_is_named():
    with pytest.raises(ValueError, match=r"lengths have shape \(1, 3\); expected \(1, 2\)"):
        ShortestK()([[True, False]], [[1, 2, 3]], k=1)
    with pytest.raises(ValueError, match="negative length -1 for group 0, completion 1"):
        ShortestK()([[True, False]], [[1, -1]], k=1)
    with pytest.raises(ValueError, match="one per group"):
        ShortestK()([[True, False]], [[1, 1]], k=[1, 2])


def test_simulate_by_hand():
    # Lengths 2, 5, 3, 7 and k = 2, lockstep decoding. After step 2 row 0 finishes; after step 3 row 2 (3).
    # At step 3 rows 1 and 3 have written 3 tokens (end >= 4): two finished rows are shorter -> both stop.
    sim = simulate(ShortestK(), [[2, 5, 3, 7]], np.zeros((1, 4)), 2)
    assert sim.pruned.tolist() == [[False, True, False, True]]
    assert sim.pruned_lengths.tolist() == [[2, 3, 3, 3]]
    assert (sim.decode_steps, sim.decode_steps_unpruned) == (3, 7)
    assert (sim.generated_tokens, sim.generated_tokens_unpruned) == (11, 17)
    off = simulate(None, [[2, 5, 3, 7]], np.zeros((1, 4)), 2)
    assert not off.pruned.any() and off.decode_steps == 7 and off.generated_tokens == 17


def test_simulated_pruning_keeps_the_same_rows_and_advantages():
    rng = np.random.default_rng(0)
    f = load_filter("length")
    for _ in range(200):
        g = int(rng.integers(2, 17))
        lengths = rng.integers(1, 12, (5, g))
        rewards = rng.integers(0, 2, (5, g)).astype(float)
        k = rng.integers(1, g + 1, 5)
        sim = simulate(f.pruning_rule(), lengths, rewards, k)
        before = select(-lengths.astype(float), rewards, k)
        seen = np.where(sim.pruned, sim.pruned_lengths, lengths).astype(float)
        after = select(-seen, np.where(sim.pruned, np.nan, rewards), k)
        assert not (sim.pruned & before.kept).any()
        np.testing.assert_array_equal(after.kept, before.kept)
        np.testing.assert_allclose(after.advantages, before.advantages)


def test_sixteen_keep_eight_ends_at_the_eighth_finish():
    # G' = 16, k = 8, lengths 1..16 in a shuffled order: the batch ends at the 8th finish, 8 of 16 steps.
    lengths = np.random.default_rng(1).permutation(np.arange(1, 17))[None, :]
    sim = simulate(ShortestK(), lengths, np.zeros((1, 16)), 8)
    assert sim.decode_steps == 8 and sim.pruned.sum() == 8
    # The 8 shortest finish by step 8; at step 8 every other row has written 8 tokens and ends with >= 9.


def test_plan_pruning():
    assert plan_pruning(load_filter("length"), "exact").exactness == EXACT
    plan = plan_pruning(load_filter("length"))
    assert plan.exactness == EXACT and isinstance(plan.rule, ShortestK)
    plan = plan_pruning(load_filter("token_efficiency"))
    assert plan.rule is None and plan.exactness == OFF and "declares no exact pruning rule" in plan.reason
    plan = plan_pruning(load_filter("token_efficiency", reward_bound=1.0))
    assert plan.exactness == EXACT and plan.rule.reward_bound == 1.0
    plan = plan_pruning(load_filter("length"), keep_signal="typical")
    assert plan.rule is None and "keep_signal='typical'" in plan.reason
    plan = plan_pruning(load_filter("length"), adaptive=True, first_m=10, mode="approximate")
    assert plan.exactness == APPROXIMATE and plan.rule.m == 10 and "adaptive k" in plan.reason
    plan = plan_pruning(load_filter("diversity"), mode="approximate")
    assert isinstance(plan.rule, FirstFinished)
    with pytest.raises(ValueError, match="pruning cannot be exact here: filter 'reward' declares no"):
        plan_pruning(load_filter("reward"), "exact")
    with pytest.raises(ValueError, match="must be one of"):
        plan_pruning(load_filter("length"), "sometimes")
    assert plan_pruning(load_filter("length"), "off").rule is None


def test_token_efficiency_warns_of_a_reward_above_its_bound():
    f = load_filter("token_efficiency", reward_bound=1.0)
    with pytest.warns(GFPOFilterWarning, match=r"reward 2.0 of group 0, completion 1 exceeds the declared"):
        scores = f(group_completions=[["a", "b"]], group_rewards=[[1.0, 2.0]], completion_lengths=[[1, 1]])
    assert scores == [[1.0, 2.0]]


def test_conformance_passes_exact_builtins_and_catches_a_false_claim():
    check_filter("length")
    check_filter("token_efficiency", reward_bound=1.0)
    from gfpo_filters.filters.length import LengthFilter

    class Overclaiming(ScoreBound):  # assumes a running row writes two more tokens: it may write only its EOS
        def finished_scores(self, lengths, rewards):
            return -lengths

        def running_bounds(self, lengths):
            return -(lengths + 2.0)

    class Eager(LengthFilter):
        name = "eager_length"

        def pruning_rule(self):
            return Overclaiming()

    with pytest.raises(ConformanceError, match="stopped completions"):
        run_check(Eager, "pruning")

    class Wrong(LengthFilter):
        name = "wrong_rule"

        def pruning_rule(self):
            return "shortest"

    with pytest.raises(ConformanceError, match="expected None or a gfpo_filters.pruning.PruneRule"):
        run_check(Wrong, "pruning")
