"""Pruning inside transformers generate (gfpo_filters.generation) and in GFPOTrainer on TRL's generate path:
real tiny models, real transformers and TRL objects, no mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, StoppingCriteriaList

from gfpo_filters.experiments.toy import build_model, build_tokenizer
from gfpo_filters.generation import GroupPruning, group_members
from gfpo_filters.integrations.trl_pruning import local_groups
from gfpo_filters.pruning import ShortestK

torch.set_num_threads(1)


def generate(rule, k=3, groups=None, seed=0, n=16, max_new_tokens=40):
    model, tok = build_model(0, hidden=16, layers=1), build_tokenizer()
    inputs = tok(["abc"] * n, return_tensors="pt", padding=True)
    width = inputs["input_ids"].shape[1]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, pad_token_id=0, eos_token_id=1)
    groups = np.repeat(np.arange(n // 8), 8) if groups is None else groups
    criterion = GroupPruning(rule, groups, k, width, [1])
    torch.manual_seed(seed)
    out = model.generate(**inputs, generation_config=config, stopping_criteria=StoppingCriteriaList([criterion]))
    return out[:, width:], criterion


def assert_pruned_rows_could_not_be_kept(ids, pruned, group_size: int, k: int) -> None:
    """Every pruned row had at least k finished rows of its group surely ahead of it (shorter than the c + 1 tokens
    it would have ended with at least, or as long and earlier): ``length`` could never have kept it."""
    lengths = np.array([len(x) for x in ids]).reshape(-1, group_size)
    pruned = np.asarray(pruned).reshape(-1, group_size)
    for g in range(len(lengths)):
        done = ~pruned[g]
        for j in np.flatnonzero(~done):
            c = lengths[g, j]  # tokens the pruned row had written
            ahead = done & ((lengths[g] < c + 1) | ((lengths[g] == c + 1) & (np.arange(group_size) < j)))
            assert ahead.sum() >= k, (g, j, lengths[g].tolist(), done.tolist())


def test_pruning_stops_rows_and_leaves_the_other_rows_samples_unchanged():
    full, counted = generate(None)
    pruned, criterion = generate(ShortestK())
    assert not counted.pruned.any() and criterion.pruned.any()
    # Each row's tokens by hand: the unpruned run's row up to its first EOS (included).
    lengths = [(row == 1).nonzero()[0].item() + 1 if (row == 1).any() else row.numel() for row in full]
    assert counted.lengths.tolist() == lengths
    for row in range(full.shape[0]):
        n = int(criterion.lengths[row])
        # Every row wrote exactly the tokens of the unpruned run: stopped rows are fed pads, the others' samples
        # do not change (torch's multinomial draws the same random numbers per step whatever the rows hold).
        assert pruned[row, :n].tolist() == full[row, :n].tolist()
        if criterion.pruned[row]:
            assert (pruned[row, n:] == 0).all() and n < lengths[row]
        else:
            assert n == lengths[row]
    # By hand, per group of 8 and k = 3: a row is pruned exactly when 3 rows of its group finished before it had
    # written its last token, and it stops at the step of that third finish.
    for g in range(2):
        lens = np.array(lengths[8 * g : 8 * g + 8])
        third = np.sort(lens)[2]
        expect = lens > third
        assert criterion.pruned[8 * g : 8 * g + 8].tolist() == expect.tolist()
        assert (criterion.lengths[8 * g : 8 * g + 8][expect] == third).all()
    assert criterion.steps == max(np.sort(np.array(lengths).reshape(2, 8), axis=1)[:, 2])
    assert counted.steps == max(lengths)


def test_rows_outside_a_prunable_group_run_to_their_end():
    _, counted = generate(None)
    _, criterion = generate(ShortestK(), groups=np.array([0] * 8 + [-1] * 8))
    assert not criterion.pruned[8:].any() and criterion.pruned[:8].any()
    assert criterion.lengths[8:].tolist() == counted.lengths[8:].tolist()


def test_group_members_and_local_groups():
    assert group_members(np.array([0, 0, -1, 1, 1, -1])).tolist() == [[0, 1], [3, 4]]
    with pytest.raises(ValueError, match="different sizes"):
        group_members(np.array([0, 0, 1]))
    # 2 processes, 6 rows each, G = 4: process 0 holds group 0 whole and half of group 1; process 1 the other half
    # of group 1 and group 2 whole.
    assert local_groups(6, 4, 0).tolist() == [0, 0, 0, 0, -1, -1]
    assert local_groups(6, 4, 1).tolist() == [-1, -1, 0, 0, 0, 0]
    assert local_groups(8, 4, 1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


# ---------------------------------------------------------------------- GFPOTrainer on TRL's generate path
from tests.trainer_utils import Recorder, capture_batches, decode_rows, tiny_args, tiny_parts  # noqa: E402


class CountingRecorder(Recorder):
    """Recorder that also keeps every call's rows (the reward function's view of a batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, prompts, completions, **kwargs):
        out = super().__call__(prompts, completions, **kwargs)
        self.calls.append(list(self.rows))
        return out


def train_one_step(tmp_path, prune, **overrides):
    from gfpo_filters.trainer import GFPOTrainer

    parts = tiny_parts()
    recorder = CountingRecorder()
    config = dict(
        per_device_train_batch_size=16,
        num_generations=8,
        num_remains_in_group=3,
        max_completion_length=40,
        group_filter="length",
        gfpo_prune=prune,
    )
    config.update(overrides)
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[recorder],
        args=tiny_args(str(tmp_path / prune), **config),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
    )
    batches = capture_batches(trainer)
    trainer.train()
    return trainer, recorder, batches


def test_pruning_keeps_the_same_rows_and_advantages_and_skips_reward_calls(tmp_path):
    on, rec_on, b_on = train_one_step(tmp_path, "auto")
    off, rec_off, b_off = train_one_step(tmp_path, "off")
    assert on._gfpo_prune_plan.exactness == "exact" and off._gfpo_prune_plan.rule is None
    # Same samples, same kept rows (texts) and the same advantages, row for row.
    rows_on = sorted(zip(decode_rows(b_on[0], on.processing_class), np.round(b_on[0]["advantages"].tolist(), 6)))
    rows_off = sorted(zip(decode_rows(b_off[0], off.processing_class), np.round(b_off[0]["advantages"].tolist(), 6)))
    assert rows_on == rows_off and len(rows_on) == 6
    # The reward function saw 16 rows without pruning, and only the unpruned ones with it.
    logs = {k: v for h in on.state.log_history for k, v in h.items() if k.startswith("gfpo/")}
    pruned = round(logs["gfpo/pruned_fraction"] * 16)
    assert pruned > 0
    assert len(rec_off.calls) == 1 and len(rec_off.calls[0]) == 16
    assert len(rec_on.calls) == 1 and len(rec_on.calls[0]) == 16 - pruned
    # What the reward function saw with pruning is the unpruned run's rows minus the pruned ones: every row it
    # saw is a finished completion of the unpruned run, and every kept row is among them.
    seen_on, seen_off = rec_on.calls[0], rec_off.calls[0]
    assert set(seen_on) <= set(seen_off)
    kept_texts = {text for text, _ in rows_on}
    assert kept_texts <= {c for _, c in seen_on}
    # Fewer decode steps and tokens than the same samples without pruning.
    logs_off = {k: v for h in off.state.log_history for k, v in h.items() if k.startswith("gfpo/")}
    assert logs["gfpo/decode_steps"] < logs_off["gfpo/decode_steps"]
    assert logs["gfpo/generated_tokens"] < logs_off["gfpo/generated_tokens"]
    assert logs_off["gfpo/pruned_fraction"] == 0.0


def test_auto_is_off_where_pruning_would_change_the_selection(tmp_path):
    from gfpo_filters.trainer import GFPOTrainer

    parts = tiny_parts()

    def make(**overrides):
        config = dict(num_generations=4, num_remains_in_group=3, group_filter="length")
        config.update(overrides)
        return GFPOTrainer(
            model=parts["model"],
            reward_funcs=[Recorder()],
            args=tiny_args(str(tmp_path), **config),
            train_dataset=parts["train_dataset"],
            processing_class=parts["processing_class"],
        )

    assert make()._gfpo_prune_plan.exactness == "exact"
    plan = make(keep_signal="typical")._gfpo_prune_plan
    assert plan.rule is None and "keep_signal='typical'" in plan.reason
    plan = make(group_filter="token_efficiency", group_filter_kwargs={"reward_bound": 1.0})._gfpo_prune_plan
    assert plan.rule is None and "TRL scores after generation" in plan.reason
    # Lengths are the tokens written whatever masks the loss, and the kept rows are never rounded up: still exact.
    assert make(mask_truncated_completions=True)._gfpo_prune_plan.exactness == "exact"
    assert make(num_remains_in_group=3, steps_per_generation=2)._gfpo_prune_plan.exactness == "exact"
    with pytest.raises(ValueError, match="pruning cannot be exact here: keep_signal='swap'"):
        make(keep_signal="swap", gfpo_prune="exact")
    with pytest.raises(ValueError, match="gfpo_prune='exact': the pruning rule EfficiencyBound"):
        make(group_filter="token_efficiency", group_filter_kwargs={"reward_bound": 1.0}, gfpo_prune="exact")
    assert make(group_filter="diversity", gfpo_prune="approximate")._gfpo_prune_plan.exactness == "approximate"
    with pytest.raises(ValueError, match="gfpo_prune must be one of"):
        tiny_args(str(tmp_path), gfpo_prune="always")


@pytest.mark.distributed
def test_two_processes_prune_whole_local_groups_and_keep_the_same_rows(tmp_path):
    import json

    from tests.trainer_utils import run_two_processes

    worker = Path(__file__).with_name("pruning_worker.py")
    run_two_processes(tmp_path, "auto", worker=worker)
    run_two_processes(tmp_path, "off", worker=worker)
    on = [json.loads((tmp_path / f"auto-rank{r}.json").read_text()) for r in range(2)]
    off = [json.loads((tmp_path / f"off-rank{r}.json").read_text()) for r in range(2)]
    assert on[0]["plan"] == "exact"
    # Step 1 samples the same completions in both runs (a pruned run draws fewer random numbers, so later steps
    # sample others).
    step = 0
    # Both processes together train the same rows with the same advantages, pruned or not.
    trained_on = sorted(tuple(x) for r in on for x in r["rows"][step])
    trained_off = sorted(tuple(x) for r in off for x in r["rows"][step])
    assert trained_on == trained_off and len(trained_on) == 6
    for rank in range(2):
        seen_on, seen_off = on[rank]["seen"][step], off[rank]["seen"][step]
        assert len(seen_off) == 6
        # The reward function saw the unpruned run's completions less the pruned ones; the rows of group 1,
        # which spans the two processes, are never pruned (they are rows 4, 5 of process 0 and 0, 1 of 1).
        assert set(seen_on) <= set(seen_off) and len(seen_on) <= 6
        spanning = seen_off[4:6] if rank == 0 else seen_off[0:2]
        assert set(spanning) <= set(seen_on)
    pruned = [log["gfpo/pruned_fraction"] for log in on[0]["logs"] if "gfpo/pruned_fraction" in log]
    assert pruned == [log["gfpo/pruned_fraction"] for log in on[1]["logs"] if "gfpo/pruned_fraction" in log]
    assert any(p > 0 for p in pruned)


def test_continuous_batching_prunes_and_cancels(tmp_path):
    """TRL's continuous batching path: requests stream, the rule stops rows as they fall behind, and a stopped
    request is cancelled (its cache freed). Requests run at different rates, so there is no same-samples run to
    compare against; instead every pruned row is checked against the rule's claim on the completions returned."""
    from gfpo_filters.trainer import GFPOTrainer

    parts = tiny_parts()
    recorder = CountingRecorder()
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[recorder],
        args=tiny_args(
            str(tmp_path),
            per_device_train_batch_size=16,
            num_generations=8,
            num_remains_in_group=3,
            max_completion_length=30,
            group_filter="length",
            use_transformers_continuous_batching=True,
        ),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
    )
    assert trainer._gfpo_prune_plan.exactness == "exact"
    seen = []
    generate = trainer._generate_single_turn

    def spy(*args, **kwargs):
        ids, logprobs = generate(*args, **kwargs)
        seen.append(([list(x) for x in ids], trainer._gfpo_pruned.copy()))
        return ids, logprobs

    trainer._generate_single_turn = spy
    trainer.train()
    ((ids, pruned),) = seen
    assert pruned.any()
    assert len(recorder.calls[0]) == 16 - pruned.sum()
    assert_pruned_rows_could_not_be_kept(ids, pruned, group_size=8, k=3)
