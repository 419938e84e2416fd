"""GFPOTrainer on tiny models built in code: grouping, selection, advantages, adaptive k, errors."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from gfpo_filters import FilterOutputError, UnknownFilterError, load_filter  # noqa: E402
from gfpo_filters.adaptive import AdaptiveK  # noqa: E402
from gfpo_filters.trainer import GFPOTrainer  # noqa: E402
from tests.trainer_utils import (  # noqa: E402
    CheckingFilter,
    Recorder,
    capture_batches,
    decode_rows,
    expected_selection,
    reward_of,
    run_two_processes,
    tiny_args,
    tiny_parts,
)

pytestmark = pytest.mark.trainer


def trainer_call(trainer):
    return trainer.group_filter_func.calls[-1]


def make(tmp_path, group_filter_func, reward_funcs=None, **overrides):
    parts = tiny_parts()
    return GFPOTrainer(
        model=parts["model"],
        reward_funcs=reward_funcs or [Recorder()],
        args=tiny_args(str(tmp_path), **overrides),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
        group_filter_func=group_filter_func,
    )


def test_each_group_is_one_prompt_and_advantages_match_hand_computation(tmp_path):
    recorder = Recorder()
    check = CheckingFilter(recorder, group_size=4)
    trainer = make(tmp_path, check, reward_funcs=[recorder], max_steps=2)
    batches = capture_batches(trainer)
    trainer.train()

    assert len(check.calls) == 2 and len(batches) == 2
    for call, batch in zip(check.calls, batches):
        groups, rewards = call["group_completions"], call["group_rewards"]
        assert len(groups) == 3 and all(len(g) == 4 for g in groups)  # 3 prompts per batch
        assert rewards == [[reward_of(c) for c in g] for g in groups]
        # The filter got true token counts and the per-group prompts.
        assert [[len(ids) for ids in g] for g in call["completion_ids"]] == np.asarray(
            call["completion_lengths"]
        ).tolist()
        assert call["num_remains_in_group"] == 3 and len(call["prompts"]) == 3

        kept, advantages = expected_selection(np.asarray(call["completion_lengths"]).tolist(), rewards, k=3)
        expected_rows = sorted((groups[i][j], round(advantages[i][j], 5)) for i in range(3) for j in kept[i])
        got_rows = sorted(
            zip(decode_rows(batch, trainer.processing_class), np.round(batch["advantages"].tolist(), 5).tolist())
        )
        # Exactly the kept rows reach the loss (9 of 12), each with its hand-computed advantage.
        assert len(got_rows) == 9
        assert got_rows == expected_rows
        assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())

    logged = {k for h in trainer.state.log_history for k in h}
    assert {"gfpo/k_mean", "gfpo/kept_length_mean", "gfpo/all_length_mean", "gfpo/kept_reward_mean"} <= logged


def test_trl_171_gfpo_trainer_mixes_groups(tmp_path):
    """The same check run against TRL 1.7.1's own GFPOTrainer fails: it slices groups as [i : i + G]."""
    gfpo = pytest.importorskip("trl.experimental.gfpo", reason="TRL >= 1.8 has no GFPO of its own")
    parts = tiny_parts()
    recorder = Recorder()
    trl_args = gfpo.GFPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=12,
        num_generations=4,
        num_remains_in_group=3,
        max_completion_length=10,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        beta=0.0,
        save_strategy="no",
        seed=0,
    )
    trainer = gfpo.GFPOTrainer(
        model=parts["model"],
        reward_funcs=[recorder],
        args=trl_args,
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
        group_filter_func=CheckingFilter(recorder, group_size=4),
    )
    with pytest.raises(AssertionError, match="group 1 received completions of other prompts"):
        trainer.train()


def test_named_filter_and_metrics(tmp_path):
    trainer = make(tmp_path, "token_efficiency", reward_funcs=[Recorder()], num_remains_in_group=2)
    assert trainer.group_filter_func.name == "token_efficiency"
    batches = capture_batches(trainer)
    trainer.train()
    assert len(batches[0]["advantages"]) == 6  # 3 groups x k=2
    history = [h for h in trainer.state.log_history if "gfpo/k_mean" in h]
    assert history[0]["gfpo/k_mean"] == 2 and history[0]["gfpo/kept_fraction"] == 0.5


def test_logged_selection_metrics_by_hand(tmp_path):
    # Prompts before "n" reward every completion 1.0: their kept sets have no variance.
    recorder = Recorder(constant_below="n")
    check = CheckingFilter(recorder, group_size=4)
    trainer = make(tmp_path, check, reward_funcs=[recorder], max_steps=3)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "gfpo/frac_kept_zero_std" in h]
    fractions = []
    for call, logged in zip(check.calls, steps):
        lengths = np.asarray(call["completion_lengths"]).tolist()
        rewards = call["group_rewards"]
        kept, _ = expected_selection(lengths, rewards, k=3)
        zero_std = [len({rewards[i][j] for j in kept[i]}) == 1 for i in range(3)]
        fractions.append(sum(zero_std) / 3)
        assert logged["gfpo/frac_kept_zero_std"] == pytest.approx(fractions[-1])
        assert logged["gfpo/kept_length_mean"] == pytest.approx(
            sum(lengths[i][j] for i in range(3) for j in kept[i]) / 9
        )
        assert logged["gfpo/all_length_mean"] == pytest.approx(np.mean(lengths))
        assert logged["gfpo/kept_reward_mean"] == pytest.approx(
            np.mean([rewards[i][j] for i in range(3) for j in kept[i]])
        )
    assert any(0 < f < 1 for f in fractions), f"the data should mix groups with and without variance: {fractions}"


def test_loss_normalizer_all_keeps_the_token_count_of_all_completions(tmp_path):
    recorder = Recorder()
    trainer = make(tmp_path, CheckingFilter(recorder, 4), reward_funcs=[recorder], gfpo_loss_normalizer="all")
    batches = capture_batches(trainer)
    trainer.train()
    call, batch = trainer_call(trainer), batches[0]
    all_tokens = int(np.asarray(call["completion_lengths"]).sum())
    assert int(batch["num_items_in_batch"]) == all_tokens > int(batch["completion_mask"].sum())


def test_loss_normalizer_all_needs_a_token_sum_loss(tmp_path):
    with pytest.raises(ValueError, match=r"gfpo_loss_normalizer='all' only applies to token-sum losses"):
        tiny_args(str(tmp_path), gfpo_loss_normalizer="all", loss_type="grpo")


def record_micro_batches(trainer) -> list[dict]:
    """Every micro-batch the loss sees (with its loss scale, if any), in training order."""
    seen, original = [], trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        seen.append(dict(inputs))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    return seen


def test_the_kept_rows_are_the_filters_k_per_group_in_unequal_micro_batches(tmp_path):
    # 3 groups x k=3 = 9 kept rows over steps_per_generation=2 micro-batches: no row is added to make them equal,
    # they train as 5 + 4. The grpo loss averages over a micro-batch's rows, so micro-batch j is scaled by
    # size_j / 4.5: every row weighs 1 / (4.5 x 2), GRPO's row weight at the mean micro-batch size.
    recorder = Recorder()
    trainer = make(
        tmp_path,
        CheckingFilter(recorder, 4),
        reward_funcs=[recorder],
        steps_per_generation=2,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=6,
        loss_type="grpo",
    )
    batches = capture_batches(trainer)
    micro = record_micro_batches(trainer)
    trainer.train()
    assert len(batches[0]["advantages"]) == 9
    assert [len(m["advantages"]) for m in micro] == [5, 4]
    assert all((m["completion_mask"].sum(dim=1) > 0).all() for m in micro)  # every row a kept one
    assert [m["gfpo_loss_scale"] for m in micro] == [pytest.approx(5 / 4.5), pytest.approx(4 / 4.5)]
    logged = trainer.state.log_history[0]
    assert logged["gfpo/trained_rows"] == 9.0 and logged["gfpo/placeholder_rows"] == 0.0
    assert logged["gfpo/rounding_rows"] == 0.0 and logged["gfpo/kept_fraction"] == pytest.approx(9 / 12)


def test_batch_size_one_with_accumulation_trains_k_per_group(tmp_path):
    # Issue 21's first finding: per_device_train_batch_size=1, gradient_accumulation_steps=4, G=4, k=2: one group
    # per generation batch, 2 kept rows for 4 micro-batches. The 2 kept rows train (one each), the other two
    # micro-batches hold one placeholder each (completion mask 0, advantage 0, loss scale 0): 2 rows per group, not 4.
    trainer = make(
        tmp_path,
        "length",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        num_remains_in_group=2,
        max_steps=2,
        loss_type="grpo",
    )
    batches = capture_batches(trainer)
    micro = record_micro_batches(trainer)
    kept = kept_per_step(trainer)
    trainer.train()
    assert [len(b["advantages"]) for b in batches] == [2, 2]
    assert [sum(map(sum, k)) for k in kept] == [2, 2]
    assert len(micro) == 8 and all(len(m["advantages"]) == 1 for m in micro)
    real = [bool(m["completion_mask"].sum() > 0) for m in micro]
    assert real == [True, True, False, False] * 2
    assert [m.get("gfpo_loss_scale", 1.0) for m in micro] == [2.0, 2.0, 0.0, 0.0] * 2  # grpo: 1 / 0.5 rows
    for log in trainer.state.log_history[:2]:
        if "gfpo/trained_rows" in log:
            assert log["gfpo/trained_rows"] == 2.0 and log["gfpo/placeholder_rows"] == 2.0


def test_evaluation_is_unfiltered(tmp_path):
    parts = tiny_parts()
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[Recorder()],
        processing_class=parts["processing_class"],
        args=tiny_args(str(tmp_path), per_device_eval_batch_size=12, eval_strategy="no"),
        train_dataset=parts["train_dataset"],
        eval_dataset=parts["train_dataset"].select(range(3)),
        group_filter_func="length",
    )
    batches = capture_batches(trainer)
    trainer.model.eval()
    trainer._generate_and_score_completions([{"prompt": p} for p in ["abcd"] * 4 + ["efgh"] * 4 + ["ijkl"] * 4])
    assert len(batches[0]["advantages"]) == 12


# ---------------------------------------------------------------------- adaptive k
def test_adaptive_buckets_by_hand():
    a = AdaptiveK([8, 8, 6, 4], warmup_k=8, window=8)
    a.update(np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    # Mid-rank percentiles: 0.0 -> 1/16 (very hard), 0.25 -> 0.25 (hard), 0.45 -> 0.625 (medium), 0.7 -> 15/16 (easy)
    assert a.buckets(np.array([0.0, 0.25, 0.45, 0.7, 1.0])).tolist() == [0, 1, 2, 3, 3]
    # Ties: an all-equal window puts everything in "medium" rather than at an extreme.
    b = AdaptiveK([8, 8, 6, 4], warmup_k=8, window=4)
    b.update(np.zeros(4))
    assert b.buckets(np.array([0.0])).tolist() == [2]
    assert b.buckets(np.array([-1.0, 1.0])).tolist() == [0, 3]


def test_adaptive_assign_warmup_window_and_missing():
    a = AdaptiveK([8, 8, 6, 4], warmup_k=5, warmup_steps=2, window=4)
    rewards = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [np.nan] * 4])
    rewards = np.repeat(rewards, 2, axis=1)  # G = 8: k_map's 8 must fit in a group
    k, buckets = a.assign(rewards, step=0)
    assert k.tolist() == [5] * 5  # warm-up
    assert buckets.tolist() == [0, 1, 2, 3, -1] and len(a) == 4  # the missing group is not in the window
    k, _ = a.assign(rewards, step=2)
    assert k.tolist() == [8, 8, 6, 4, 5]
    restored = AdaptiveK([8, 8, 6, 4], warmup_k=5, warmup_steps=2, window=4)
    restored.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert restored.buckets(np.array([0.3])).tolist() == a.buckets(np.array([0.3])).tolist() and len(restored) == 4


def test_adaptive_k_through_a_training_step_and_resume(tmp_path):
    # Rewards make three difficulties: prompt difficulty = mean of (len mod 5)/4 varies by group.
    check = CheckingFilter(recorder := Recorder(), 4)
    trainer = make(
        tmp_path,
        check,
        reward_funcs=[recorder],
        num_generations=4,
        num_remains_in_group=2,
        adaptive_k=[4, 3, 3, 2],
        adaptive_window=64,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    batches = capture_batches(trainer)
    trainer.train()
    call, batch = check.calls[-1], batches[-1]
    k = call["num_remains_in_group"]
    k = [k] * 3 if isinstance(k, int) else k
    assert all(v in (2, 3, 4) for v in k)
    assert len(batch["advantages"]) == sum(k)  # variable k per group, all of it in one update
    state = json.loads((tmp_path / "checkpoint-2" / "gfpo_state.json").read_text())["adaptive"]
    assert len(state["values"]) == 6  # two batches of 3 prompts

    resumed = make(
        tmp_path,
        CheckingFilter(recorder := Recorder(), 4),
        reward_funcs=[recorder],
        num_generations=4,
        num_remains_in_group=2,
        adaptive_k=[4, 3, 3, 2],
        adaptive_window=64,
        max_steps=3,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert list(resumed._adaptive._values)[:6] == state["values"]


class LengthScorer(torch.nn.Module):
    """A learned filter's model: a one-weight linear score of the completion's length (prefers the short)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(-1.0)
            self.linear.bias.fill_(0.5)

    def forward(self, batch):
        return self.linear(batch.lengths.float()[:, None])


def kept_per_step(trainer) -> list[list[list[bool]]]:
    """Record the kept mask of every generation batch (process 0's decision)."""
    kept, original = [], trainer._log_selection

    def logged(result, *rest):
        kept.append(result.kept.tolist())
        return original(result, *rest)

    trainer._log_selection = logged
    return kept


RESUMABLE = {
    "random": (lambda: "random", {}),
    "adaptive": (lambda: "length", {"adaptive_k": [3, 3, 2, 2], "adaptive_warmup_steps": 1, "adaptive_window": 8}),
    "learned": (lambda: load_filter("learned", model=LengthScorer()), {}),
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_a_resumed_run_keeps_the_rows_of_an_uninterrupted_one(tmp_path, name):
    """Steps 3 and 4 of a run resumed from its step-2 checkpoint keep the rows the uninterrupted run kept: the
    filter's state (random's generator, learned's model check) and the adaptive-k window travel in gfpo_state.json."""
    make_filter, config = RESUMABLE[name]
    config = dict(num_remains_in_group=3, max_steps=4, **config)
    full = make(tmp_path, make_filter(), save_strategy="steps", save_steps=2, **config)
    kept = kept_per_step(full)
    full.train()
    assert len(kept) == 4
    state = json.loads((tmp_path / "checkpoint-2" / "gfpo_state.json").read_text())
    assert state["filter"] == ("learned" if name == "learned" else make_filter())
    resumed = make(tmp_path / "resumed", make_filter(), **config)
    again = kept_per_step(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert again == kept[2:]
    if name == "random":
        assert kept[2] != kept[0]  # the generator moved on: a fresh one would repeat step 1's choice
    if name == "adaptive":
        assert len(state["adaptive"]["values"]) == 6


def test_a_checkpoint_without_filter_state_is_named(tmp_path):
    from gfpo_filters.errors import FilterStateWarning

    full = make(tmp_path, "random", num_remains_in_group=3, max_steps=2, save_strategy="steps", save_steps=2)
    full.train()
    (tmp_path / "checkpoint-2" / "gfpo_state.json").unlink()
    resumed = make(tmp_path / "resumed", "random", num_remains_in_group=3, max_steps=3)
    with pytest.warns(FilterStateWarning, match="no state for filter 'random'"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_a_pushed_checkpoint_carries_the_filter_state(tmp_path, monkeypatch):
    """Issue 21, finding 7: Trainer pushes a checkpoint to the Hub at the end of its own save; gfpo_state.json must
    be in the folder by then. (No Hub here: the push is recorded, not sent.)"""
    trainer = make(tmp_path, "random", num_remains_in_group=3, max_steps=2, save_strategy="steps", save_steps=2)
    pushed = []
    monkeypatch.setattr(trainer.args, "push_to_hub", True)
    monkeypatch.setattr(
        trainer, "_push_from_checkpoint", lambda folder: pushed.append(sorted(os.listdir(folder))), raising=False
    )
    trainer.train()
    assert len(pushed) == 1 and "gfpo_state.json" in pushed[0] and "model.safetensors" in pushed[0]


def test_a_foreign_filter_state_stops_the_resume_with_its_name(tmp_path):
    from gfpo_filters.errors import FilterStateError

    make(tmp_path, "random", num_remains_in_group=3, max_steps=2, save_strategy="steps", save_steps=2).train()
    resumed = make(tmp_path / "resumed", "length", num_remains_in_group=3, max_steps=3)
    with pytest.raises(FilterStateError, match=r"belongs to filter 'random', but this run uses 'length'"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


# ---------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("k", [1, 4, 0])
def test_k_out_of_range_is_rejected_at_config_time(tmp_path, k):
    with pytest.raises(ValueError, match=rf"num_remains_in_group={k} is out of range.*from 2 to 3"):
        tiny_args(str(tmp_path), num_remains_in_group=k)


def test_bad_adaptive_config(tmp_path):
    with pytest.raises(ValueError, match=r"adaptive_k=\[8, 8, 6\] must be 4 ints"):
        tiny_args(str(tmp_path), adaptive_k=[8, 8, 6])
    with pytest.raises(ValueError, match=r"each from 2 to num_generations=4"):
        tiny_args(str(tmp_path), adaptive_k=[8, 8, 6, 4])


def test_unknown_filter_name(tmp_path):
    with pytest.raises(UnknownFilterError, match=r"unknown filter 'lenght'.*Did you mean 'length'"):
        make(tmp_path, "lenght")


def test_filter_without_k_and_k_without_filter(tmp_path):
    with pytest.raises(ValueError, match="num_remains_in_group is not set"):
        make(tmp_path, "length", num_remains_in_group=None)
    with pytest.raises(ValueError, match="no group_filter_func was given"):
        make(tmp_path, None)


def test_filter_returning_wrong_shape_during_training(tmp_path):
    def broken(group_completions, group_rewards):
        return [[1.0, 2.0]] * len(group_completions)

    trainer = make(tmp_path, broken)
    with pytest.raises(
        FilterOutputError,
        match=r"filter 'test_filter_returning_wrong_shape_during_training.<locals>.broken' returned scores of shape \(3, 2\); expected \(n_groups, G\) = \(3, 4\)",  # noqa: E501
    ):
        trainer.train()


def test_nan_scores_and_missing_rewards_never_win(tmp_path):
    """A plain callable returning NaN for the highest-ranked slots: finite scores still win."""
    seen = []

    def nan_first(group_completions, group_rewards):
        seen.append(group_rewards)
        return [[float("nan"), 5.0, 1.0, 3.0] for _ in group_completions]

    trainer = make(tmp_path, nan_first, num_remains_in_group=2)
    batches = capture_batches(trainer)
    trainer.train()
    texts = decode_rows(batches[0], trainer.processing_class)
    assert len(texts) == 6  # positions 1 and 3 of each group
    assert all(isinstance(r, float) for row in seen[0] for r in row)  # nested lists of floats, as TRL passed


# ---------------------------------------------------------------------- two processes
@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["selection", "keep_signal"])
def test_two_processes_agree_and_train_each_kept_row_once(tmp_path, mode):
    run_two_processes(tmp_path, mode)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for step in range(len(ranks[0]["steps"])):
        a, b = ranks[0]["steps"][step], ranks[1]["steps"][step]
        # Process 0 ran the filter and decided; process 1 trained its decision without calling the filter.
        assert "kept" not in b
        groups, kept = a["groups"], a["kept"]
        expected = sorted(
            (groups[i][j], round(adv, 5))
            for i, row in enumerate(a["advantages"])
            for j, adv in enumerate(row)
            if kept[i][j]
        )
        trained = sorted(tuple(x) for x in a["rows"] + b["rows"])
        # Every kept row is trained exactly once, on one of the two processes, with its advantage.
        assert trained == expected
        # Rows never move between processes (their log-probs were computed where they were generated): the
        # filter keeps the first four of a group of 8 split 4 + 4, all on process 0, which trains them; process 1
        # trains none (placeholder rows fill its micro-batches).
        own = [sum(kept[0][4 * r : 4 * r + 4]) for r in range(2)]
        assert [len(a["rows"]), len(b["rows"])] == own
    if mode == "keep_signal":
        # Rewards 1 1 1 1 0 0 0 0: the kept set is completions 0, 1, 2 and 4 (from process 1), on both processes.
        assert all(step["kept"] == [[True, True, True, False, True, False, False, False]] for step in ranks[0]["steps"])
        a = 0.25 / (math.sqrt(3 / 16) + 1e-4)
        assert sorted(adv for _, adv in ranks[0]["steps"][0]["rows"] + ranks[1]["steps"][0]["rows"]) == pytest.approx(
            [-3 * a, a, a, a], abs=1e-4
        )
        assert ranks[0]["swaps"] == ranks[1]["swaps"] == [1.0, 1.0]
    assert ranks[0]["calls"] == 2 and ranks[1]["calls"] == 0
