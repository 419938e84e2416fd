"""keep_signal: kept sets that lost their reward variance get it back (hand-computed groups)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from gfpo_filters import GFPOStepWarning, load_filter
from gfpo_filters.selection import balanced_mask, gfpo_advantages, ranks, signal_swap, typical_mask
from gfpo_filters.step import KEEP_SIGNAL, gfpo_step, keep_signal_mode

NAN = float("nan")
MODES = sorted(KEEP_SIGNAL)


def step(rewards, lengths, k, mode, filter_name="token_efficiency"):
    rewards = np.asarray(rewards, dtype=np.float64)
    completions = [["c"] * rewards.shape[1] for _ in range(rewards.shape[0])]
    return gfpo_step(
        load_filter(filter_name), completions=completions, rewards=rewards, lengths=np.asarray(lengths), k=k,
        keep_signal=mode,
    )  # fmt: skip


def kept_rows(result) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in result.kept]


# Group 0: 4 correct, 2 wrong. token_efficiency ranks correct by 1/L (shortest first), then wrong longest first:
#   order 5 (L=5), 0 (10), 1 (20), 2 (30), 3 (wrong, L=50), 4 (wrong, L=40).  Top 3 = {5, 0, 1}: all correct.
REWARDS = [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, NAN, 0]]
LENGTHS = [[10, 20, 30, 50, 40, 5], [1, 2, 3, 4, 5, 6], [5, 6, 7, 30, 1, 40]]


def test_all_correct_top_k_gets_the_best_ranked_wrong_answer_back():
    off = step(REWARDS, LENGTHS, 3, "off")
    assert kept_rows(off)[0] == [0, 1, 5] and not off.advantages[0].any()
    swap = step(REWARDS, LENGTHS, 3, "swap")
    # The lowest-ranked kept (1, L=20) leaves; the best-ranked wrong answer (3: the longest) comes in.
    assert kept_rows(swap)[0] == [0, 3, 5]
    # Population std over {1, 0, 1}: mean 2/3, std sqrt(2)/3.
    std = math.sqrt(2) / 3
    a = [(1 - 2 / 3) / (std + 1e-4), 0, 0, (0 - 2 / 3) / (std + 1e-4), 0, (1 - 2 / 3) / (std + 1e-4)]
    np.testing.assert_allclose(swap.advantages[0], a)


def test_swap_follows_the_filter_order_and_swap_long_the_length():
    # With `length`, the filter's best wrong answer is the shortest one (4, L=40); swap_long takes the longest (3).
    assert kept_rows(step(REWARDS, LENGTHS, 3, "swap", "length"))[0] == [0, 4, 5]
    assert kept_rows(step(REWARDS, LENGTHS, 3, "swap_long", "length"))[0] == [0, 3, 5]
    # All-wrong kept set (group 2 under `length`: 0, 1, 2): a *higher* reward comes in, the shortest of them.
    rewards = [[0, 0, 0, 1, 1, 0]]
    lengths = [[5, 6, 7, 30, 20, 40]]
    assert kept_rows(step(rewards, lengths, 3, "swap", "length")) == [[0, 1, 4]]
    assert kept_rows(step(rewards, lengths, 3, "swap_long", "length")) == [[0, 1, 4]]


@pytest.mark.parametrize("mode", MODES)
def test_groups_whose_rewards_are_all_equal_are_left_alone(mode):
    off, on = step(REWARDS, LENGTHS, 3, "off"), step(REWARDS, LENGTHS, 3, mode)
    assert kept_rows(on)[1] == kept_rows(off)[1] == [0, 1, 2]
    assert not on.advantages[1].any()


@pytest.mark.parametrize("mode", MODES)
def test_missing_rewards_are_never_swapped_in_and_k_stays(mode):
    # Group 2 under `length`: the NaN completion (4) is the shortest, but a missing reward ranks last.
    result = step(REWARDS, LENGTHS, 3, mode, "length")
    assert (result.kept.sum(axis=1) == 3).all()
    assert not result.kept[2, 4]
    # The only other reward level is missing: nothing to swap in, the kept set stays the filter's.
    rewards = [[1, 1, 1, NAN, NAN, 1]]
    result = step(rewards, [[1, 2, 3, 4, 5, 6]], 2, mode, "length")
    assert kept_rows(result) == [[0, 1]] and result.metrics["gfpo/keep_signal_swaps"] == 0
    # Fewer known rewards than k: every known one is kept and nothing else (a missing reward trains on nothing).
    rewards = [[NAN, 1, NAN, NAN, 0, NAN]]
    with pytest.warns(GFPOStepWarning, match="fewer known rewards than k"):
        result = step(rewards, [[1, 2, 3, 4, 5, 6]], 3, mode, "length")
    assert kept_rows(result) == [[1, 4]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kept_count_is_k_or_every_known_reward_on_random_batches(mode, k):
    rng = np.random.default_rng(k)
    rewards = rng.integers(0, 2, (50, 6)).astype(float)
    rewards[rng.random(rewards.shape) < 0.1] = NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GFPOStepWarning)  # groups with fewer known rewards than k
        result = step(rewards, rng.integers(1, 100, (50, 6)), k, mode)
    assert (result.kept.sum(axis=1) == np.minimum(k, np.isfinite(rewards).sum(axis=1))).all()
    assert not (result.kept & np.isnan(rewards)).any()
    # Every group whose known rewards differ keeps a signal (some advantage is not 0).
    group_signal = np.nanmax(rewards, axis=1) > np.nanmin(rewards, axis=1)
    no_signal = ~(result.advantages != 0).any(axis=1)
    if mode != "off":
        assert not (group_signal & no_signal).any()
    assert result.metrics["gfpo/frac_no_signal"] == pytest.approx(no_signal.mean())


def test_selection_is_identical_on_every_call_whatever_the_global_random_state():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, (40, 8)).astype(float)
    lengths = rng.integers(1, 50, (40, 8))
    for mode in MODES:
        np.random.seed(1)
        first = step(rewards, lengths, 3, mode)
        np.random.seed(2)
        second = step(rewards.copy(), lengths.copy(), 3, mode)
        np.testing.assert_array_equal(first.kept, second.kept)
        np.testing.assert_array_equal(first.advantages, second.advantages)


def test_group_baseline_uses_the_whole_groups_mean_and_std_on_the_kept_rows():
    result = step(REWARDS, LENGTHS, 3, "group_baseline")
    assert kept_rows(result) == kept_rows(step(REWARDS, LENGTHS, 3, "off"))
    # Group 0: mean 4/6, population std sqrt(2)/3 over all six; kept {0, 1, 5} all correct.
    up = (1 - 2 / 3) / (math.sqrt(2) / 3 + 1e-4)
    np.testing.assert_allclose(result.advantages[0], [up, up, 0, 0, 0, up])
    # Group 2: the NaN takes no part: mean 1/5, std 0.4 over five; token_efficiency keeps 3 (correct), 5, 2.
    assert kept_rows(result)[2] == [2, 3, 5]
    np.testing.assert_allclose(result.advantages[2], [0, 0, -0.2 / 0.4001, 0.8 / 0.4001, 0, -0.2 / 0.4001])


def test_balanced_keeps_half_of_each_level_in_the_filters_order():
    rewards = np.array([[1, 1, 1, 1, 0, 0, 0, 1.0]])
    lengths = np.array([[10, 20, 30, 40, 15, 25, 35, 5]])
    result = step(rewards, lengths, 4, "balanced")
    # Max variance of 4 from {1 x5, 0 x3}: two of each. Correct, shortest first: 7, 0. Wrong, longest first: 6, 5.
    assert kept_rows(result) == [[0, 5, 6, 7]]
    assert result.metrics["gfpo/keep_signal_swaps"] == 2  # top 4 was 7, 0, 1, 2


def test_typical_keeps_the_filters_best_correct_and_wrong_answers_of_typical_length():
    rewards = [[1, 1, 1, 0, 0, 0, 0, 0]]
    lengths = [[10, 20, 30, 8, 22, 24, 60, 70]]
    result = step(rewards, lengths, 4, "typical")
    # Correct, shortest first (token_efficiency): 0, 1. Wrong lengths 8, 22, 24, 60, 70: median 24 -> 5 (24), 4 (22).
    assert kept_rows(result) == [[0, 1, 4, 5]]
    a = 0.5 / (0.5 + 1e-4)
    np.testing.assert_allclose(result.advantages, [[a, a, 0, 0, -a, -a, 0, 0]])
    # swap and balanced pair the short correct answers with the longest wrong ones instead.
    assert kept_rows(step(rewards, lengths, 4, "swap")) == [[0, 1, 2, 7]]
    assert kept_rows(step(rewards, lengths, 4, "balanced")) == [[0, 1, 6, 7]]
    assert result.metrics["gfpo/keep_signal_swaps"] == 2  # top 4 was 0, 1, 2, 7


def test_typical_breaks_length_ties_in_the_filters_order():
    # Wrong lengths 8, 22, 60, 70: median 41; 22 and 60 are both 19 away. k = 3: two correct, one wrong.
    rewards = [[1, 1, 1, 0, 0, 0, 0]]
    lengths = [[10, 20, 30, 8, 22, 60, 70]]
    assert kept_rows(step(rewards, lengths, 3, "typical")) == [[0, 1, 5]]  # token_efficiency: longer wrong first
    assert kept_rows(step(rewards, lengths, 3, "typical", "length")) == [[0, 1, 4]]  # length: shorter first


def test_typical_counts_when_one_side_is_short():
    lengths = [[10, 20, 30, 40, 50, 60]]
    # One correct answer (3): it and the 3 wrong answers nearest the wrong ones' median length 30 (ties: longer first).
    assert kept_rows(step([[0, 0, 0, 1, 0, 0]], lengths, 4, "typical")) == [[1, 2, 3, 4]]
    # One wrong answer (5): it and the 3 shortest correct ones.
    assert kept_rows(step([[1, 1, 1, 1, 1, 0]], lengths, 4, "typical")) == [[0, 1, 2, 5]]


def test_typical_with_scalar_rewards_splits_at_the_groups_mean():
    # Mean 2.3 / 6: above it 0, 1, 4; at or below it 2, 3, 5 (lengths 5, 40, 50: median 40 -> 3, then 5).
    rewards = [[0.9, 0.5, 0.2, 0.1, 0.6, 0.0]]
    lengths = [[30, 10, 5, 40, 20, 50]]
    result = step(rewards, lengths, 4, "typical", "length")
    assert kept_rows(result) == [[1, 3, 4, 5]]  # the two shortest above the mean: 1, 4
    np.testing.assert_allclose(
        result.advantages[0][[1, 3, 4, 5]], gfpo_advantages(np.array([[0.5, 0.1, 0.6, 0.0]]), np.ones((1, 4), bool))[0]
    )


def test_typical_never_keeps_a_missing_reward_of_typical_length():
    # 4 has the wrong answers' median length (30) but no reward: it ranks nowhere.
    rewards = [[1, 1, 0, 0, NAN, 0]]
    lengths = [[5, 6, 10, 30, 30, 50]]
    assert kept_rows(step(rewards, lengths, 4, "typical")) == [[0, 1, 3, 5]]


def test_typical_without_lengths_keeps_each_side_in_the_filters_order():
    from gfpo_filters.step import select

    scores = np.array([[6.0, 5, 4, 3, 2, 1]])
    rewards = np.array([[1.0, 1, 1, 0, 0, 0]])
    assert select(scores, rewards, 4, keep_signal="typical").kept.tolist() == [[True, True, False, True, True, False]]
    rank = ranks(scores)
    assert typical_mask(rank, rewards, np.zeros((1, 6)), 2).tolist() == [[True, False, False, True, False, False]]


def test_swap_long_without_lengths_is_swap():
    from gfpo_filters.step import select

    scores = -np.asarray(LENGTHS, dtype=float)  # the `length` filter's scores
    long = select(scores, np.asarray(REWARDS), 3, keep_signal="swap_long")
    np.testing.assert_array_equal(long.kept, select(scores, np.asarray(REWARDS), 3, keep_signal="swap").kept)
    assert kept_rows(long)[0] == [0, 4, 5]


def test_selection_functions_directly():
    rank = np.array([[0, 1, 2, 3]])
    top = rank < 2
    assert signal_swap(rank, top, np.array([[1.0, 1.0, 1.0, 0.0]])).tolist() == [[True, False, False, True]]
    # Already has a signal: unchanged.
    assert signal_swap(rank, top, np.array([[1.0, 0.0, 1.0, 0.0]])).tolist() == top.tolist()
    assert balanced_mask(ranks(np.array([[4.0, 3, 2, 1]])), np.array([[2.0, 2, 1, 0]]), 2).tolist() == [
        [True, False, False, True]
    ]
    r = np.array([[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        gfpo_advantages(r, top, baseline=np.ones_like(top)), [[0.5 / 0.5001, 0.5 / 0.5001, 0, 0]]
    )


def test_metrics_before_and_after_by_hand():
    m = step(REWARDS, LENGTHS, 3, "swap").metrics
    # Before: groups 0 (all correct) and 1 (all equal) have no signal; group 2's top 3 is 3 (correct), 5, 2.
    assert m["gfpo/frac_kept_zero_std_before"] == pytest.approx(2 / 3)
    assert m["gfpo/frac_kept_zero_std"] == pytest.approx(1 / 3)
    assert m["gfpo/frac_group_zero_std"] == pytest.approx(1 / 3)
    assert m["gfpo/keep_signal_swaps"] == 1
    assert m["gfpo/frac_group_equal_length"] == 0.0


def test_groups_of_one_length_are_counted():
    """All of a group cut at the cap (one length): the filter has no length to prefer, and the metric says so."""
    lengths = [[32, 32, 32, 32, 32, 32], [1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 7, 7]]
    m = step(REWARDS, lengths, 3, "typical").metrics
    assert m["gfpo/frac_group_equal_length"] == pytest.approx(2 / 3)


def test_group_baseline_counts_signal_from_the_whole_group():
    m = step(REWARDS, LENGTHS, 3, "group_baseline").metrics
    assert m["gfpo/frac_kept_zero_std"] == pytest.approx(2 / 3)  # the kept rewards of groups 0 and 1 are equal
    assert m["gfpo/frac_no_signal"] == pytest.approx(1 / 3)  # but only group 1 trains on nothing


def test_keep_signal_values():
    assert keep_signal_mode(False) == keep_signal_mode(None) == keep_signal_mode("false") == "off"
    assert keep_signal_mode(True) == keep_signal_mode("True") == "typical"
    with pytest.raises(ValueError, match=r"keep_signal must be True, False or one of .*'swap_long'.*got 'yes'"):
        keep_signal_mode("yes")


# ---------------------------------------------------------------------- through TRL's trainer
def most_common_reward_first(group_completions, group_rewards):
    """Scores that put completions with the group's most frequent reward first (then by position)."""
    return [[float(sum(x == r for x in row)) for r in row] for row in group_rewards]


def by_hand(rewards: list[float], scores: list[float], k: int) -> tuple[list[int], list[float]]:
    """The filter's top k; if its rewards are all equal and the group's are not, swap its last for the
    best-ranked completion of another reward; then population-std advantages over the kept set."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    kept = order[:k]
    if len({rewards[j] for j in kept}) == 1 and len(set(rewards)) > 1:
        kept = kept[:-1] + [next(j for j in order if rewards[j] != rewards[kept[0]])]
    mean = sum(rewards[j] for j in kept) / k
    std = math.sqrt(sum((rewards[j] - mean) ** 2 for j in kept) / k)
    return sorted(kept), [(rewards[j] - mean) / (std + 1e-4) if j in kept else 0.0 for j in range(len(rewards))]


def train_two_steps(tmp_path, reward_fn, filter_fn, k: int, keep_signal):
    """Two steps of GFPOTrainer on the tiny parts; returns the trainer and every batch it handed to the loss."""
    from gfpo_filters.trainer import GFPOTrainer
    from tests.trainer_utils import capture_batches, tiny_args, tiny_parts

    parts = tiny_parts()
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[reward_fn],
        args=tiny_args(str(tmp_path), num_remains_in_group=k, max_steps=2, keep_signal=keep_signal),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
        group_filter_func=filter_fn,
    )
    batches = capture_batches(trainer)
    trainer.train()
    return trainer, batches


@pytest.mark.trainer
def test_keep_signal_reaches_the_trainers_advantages(tmp_path):
    pytest.importorskip("trl")
    from tests.trainer_utils import Recorder, decode_rows

    recorder = Recorder()
    seen = []

    def spy(group_completions, group_rewards):
        seen.append((group_completions, group_rewards))
        return most_common_reward_first(group_completions, group_rewards)

    trainer, batches = train_two_steps(tmp_path, recorder, spy, k=2, keep_signal="swap")
    assert trainer.args.keep_signal == "swap"
    swaps = 0
    for (groups, rewards), batch in zip(seen, batches):
        expected = []
        for group, r in zip(groups, rewards):
            kept, adv = by_hand(r, most_common_reward_first([group], [r])[0], 2)
            expected += [(group[j], round(adv[j], 5)) for j in kept]
            top = sorted(range(4), key=lambda j: (-most_common_reward_first([group], [r])[0][j], j))[:2]
            swaps += sorted(top) != kept
        got = zip(decode_rows(batch, trainer.processing_class), np.round(batch["advantages"].tolist(), 5).tolist())
        assert sorted(got) == sorted(expected)
    assert swaps > 0, "the data should contain kept sets that needed a swap"
    logged = [h["gfpo/keep_signal_swaps"] for h in trainer.state.log_history if "gfpo/keep_signal_swaps" in h]
    assert sum(logged) == swaps


def typical_by_hand(rewards: list[float], lengths: list[int], scores: list[float], k: int) -> list[int]:
    """``typical`` for one group, written out: the filter's best ceil(k/2) above the mean reward, the rest from the
    completions at or below it nearest their median length (ties in the filter's order)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    if len(set(rewards)) == 1:
        return sorted(order[:k])
    mean = sum(rewards) / len(rewards)
    high = [j for j in order if rewards[j] > mean]
    low = [j for j in order if rewards[j] <= mean]
    n_high = min(len(high), max(k - len(low), (k + 1) // 2))
    lows = sorted(lengths[j] for j in low)
    median = (lows[(len(lows) - 1) // 2] + lows[len(lows) // 2]) / 2
    low_by_nearness = sorted(low, key=lambda j: (abs(lengths[j] - median), order.index(j)))
    return sorted(high[:n_high] + low_by_nearness[: k - n_high])


@pytest.mark.trainer
def test_keep_signal_true_is_typical_in_the_trainer(tmp_path):
    """keep_signal=True through GFPOTrainer keeps what ``typical`` keeps by hand, from the true completion lengths,
    with population-std advantages over the kept rows (Recorder's rewards take 5 values: the scalar case)."""
    pytest.importorskip("trl")
    from tests.trainer_utils import Recorder, decode_rows

    seen = []

    def shortest_first(group_completions, group_rewards, completion_lengths):
        seen.append((group_completions, group_rewards, np.asarray(completion_lengths).tolist()))
        return -np.asarray(completion_lengths, dtype=np.float64)

    trainer, batches = train_two_steps(tmp_path, Recorder(), shortest_first, k=3, keep_signal=True)
    assert trainer.args.keep_signal == "typical"
    changed = 0
    for (groups, rewards, lengths), batch in zip(seen, batches):
        expected = []
        for group, r, n in zip(groups, rewards, lengths):
            kept = typical_by_hand(r, n, [-x for x in n], 3)
            changed += kept != sorted(sorted(range(len(n)), key=lambda j: (n[j], j))[:3])
            mean = sum(r[j] for j in kept) / 3
            std = math.sqrt(sum((r[j] - mean) ** 2 for j in kept) / 3)
            expected += [(group[j], round((r[j] - mean) / (std + 1e-4), 5)) for j in kept]
        got = zip(decode_rows(batch, trainer.processing_class), np.round(batch["advantages"].tolist(), 5).tolist())
        assert sorted(got) == sorted(expected)
    assert changed > 0, "the data should contain groups where typical keeps other rows than the filter's top 3"


def test_config_rejects_an_unknown_mode(tmp_path):
    pytest.importorskip("trl")
    from tests.trainer_utils import tiny_args

    with pytest.raises(ValueError, match="keep_signal must be True, False or one of"):
        tiny_args(str(tmp_path), keep_signal="sometimes")
    with pytest.raises(ValueError, match="keep_signal='group_baseline' .*normalize_then_sum"):
        tiny_args(str(tmp_path), keep_signal="group_baseline", multi_objective_aggregation="normalize_then_sum")
    assert tiny_args(str(tmp_path), keep_signal=True, multi_objective_aggregation="normalize_then_sum")


# ---------------------------------------------------------------------- gfpo-filters bench --keep-signal
def test_bench_keep_signal_by_hand(tmp_path, capsys):
    import json

    from gfpo_filters.cli import main

    groups = [([1, 2, 3, 4], [1.0, 0.0, 1.0, 0.0]), ([10, 20, 30, 40], [0.0, 0.0, 1.0, 1.0])]
    path = tmp_path / "tiny.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": "p", "completions": [{"text": "x" * n, "reward": r} for n, r in zip(ls, rs)]}) + "\n"
            for ls, rs in groups
        )
    )
    args = ["bench", "--repeat", "1", "--json", "--no-progress", "--data", str(path), "-f", "length", "-k", "2"]
    assert main([*args, "--keep-signal", "off,swap,group_baseline"]) == 0
    recs = {r["keep_signal"]: r for r in json.loads(capsys.readouterr().out)}
    a = 0.5 / (0.5 + 1e-4)
    # off: group 2 keeps lengths 10, 20 (both wrong): no signal there.
    assert recs["off"]["filter"] == "length" and recs["off"]["signal_fraction"] == 0.5
    # swap: group 2's 20 leaves, the filter's best correct answer (30) comes in.
    swap = recs["swap"]
    assert swap["filter"] == "length +swap" and swap["signal_fraction"] == 1.0
    assert swap["kept_length_mean"] == pytest.approx((1 + 2 + 10 + 30) / 4)
    assert swap["length_pressure_gfpo"] == pytest.approx(a * (1 - 2 - 10 + 30) / 4)
    # group_baseline: group 2 keeps 10, 20, each -a against the group's mean 0.5 and std 0.5.
    base = recs["group_baseline"]
    assert base["signal_fraction"] == 1.0 and base["kept_length_mean"] == pytest.approx(33 / 4)
    assert base["length_pressure_gfpo"] == pytest.approx(a * (1 - 2 - 10 - 20) / 4 - (-2 * a / 4) * (33 / 4))
    # Alone, the flag means the default mode; an unknown mode is a usage error.
    assert main([*args, "--keep-signal"]) == 0
    assert [r["keep_signal"] for r in json.loads(capsys.readouterr().out)] == ["typical"]
    assert main([*args, "--keep-signal", "sometimes"]) == 2
    assert "--keep-signal: keep_signal must be True, False or one of" in capsys.readouterr().err
