"""Issue 21: the rows GFPOTrainer trains are the filter's, measured the way the filter measures them.

Each test reproduces one finding of the issue with the real GRPOTrainer: lengths under TRL's loss masks
(``mask_truncated_completions`` and the loss-only masks), a batch without rewards, log-probs of a model with
learned absolute positions, and row selection without per-field collectives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from gfpo_filters.errors import GFPOStepWarning  # noqa: E402
from gfpo_filters.experiments.toy import build_dataset, build_tokenizer  # noqa: E402
from gfpo_filters.trainer import GFPOTrainer  # noqa: E402
from tests.trainer_utils import Recorder, capture_batches, tiny_args, tiny_parts, varied_prompts  # noqa: E402

pytestmark = pytest.mark.trainer


class Spy:
    """The ``length`` filter, recording the lengths it was given."""

    def __init__(self) -> None:
        from gfpo_filters import load_filter

        self.inner = load_filter("length")
        self.lengths: list[np.ndarray] = []

    def __call__(self, group_completions, group_rewards, completion_lengths=None, **kwargs):
        self.lengths.append(np.asarray(completion_lengths))
        return self.inner(group_completions=group_completions, group_rewards=group_rewards,
                          completion_lengths=completion_lengths)  # fmt: skip


def generated_ids(trainer) -> list[list[list[int]]]:
    """The ids of every completion TRL generated (unpadded, up to and including EOS), per generation batch."""
    seen, original = [], trainer._calculate_rewards

    def wrapped(inputs, prompts, completions, completion_ids_list):
        seen.append([list(ids) for ids in completion_ids_list])
        return original(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = wrapped
    return seen


#: TRL options that edit the completion mask (mask_truncated_completions) or mask tokens in the loss only.
MASKING_OPTIONS = {
    "mask_truncated_completions": {"mask_truncated_completions": True},
    "off_policy_mask_threshold": {"off_policy_mask_threshold": 0.01, "steps_per_generation": 2},
    "top_entropy_quantile": {"top_entropy_quantile": 0.2},
}


@pytest.mark.parametrize("option", list(MASKING_OPTIONS))
def test_lengths_are_the_tokens_the_policy_wrote_whatever_masks_the_loss(tmp_path, option):
    """Finding 2: with mask_truncated_completions TRL zeroes a truncated row's completion mask, and lengths read from
    it made truncated rows "the shortest". The filter gets the generated token counts, and keeps the k shortest by
    them: a truncated row (the longest possible) only when fewer than k rows of its group finished."""
    from trl import GRPOConfig

    if option not in GRPOConfig.__dataclass_fields__:
        pytest.skip(f"TRL has no {option}")
    parts = tiny_parts()
    spy = Spy()
    trainer = GFPOTrainer(
        model=parts["model"], reward_funcs=[Recorder()], train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"], group_filter_func=spy,
        args=tiny_args(str(tmp_path), max_completion_length=6, num_remains_in_group=2, max_steps=2,
                       **MASKING_OPTIONS[option]),
    )  # fmt: skip
    generated = generated_ids(trainer)
    batches = capture_batches(trainer)
    trainer.train()
    for given, ids, batch in zip(spy.lengths, generated, batches):
        assert given.reshape(-1).tolist() == [len(x) for x in ids]
        truncated = np.array([x[-1] != 1 for x in ids]).reshape(given.shape)  # no EOS: cut at the cap
        assert truncated.any() and (~truncated).any()  # the case the finding is about
        # k = 2 shortest per group (ties to the earlier completion): a truncated row only when it must be.
        order = np.argsort(given, axis=1, kind="stable")[:, :2]
        expected = int(truncated[np.arange(len(given))[:, None], order].sum())
        trained = int(sum(1 not in row.tolist() for row in batch["completion_ids"]))
        assert trained == expected < int(truncated.sum())


def test_a_batch_without_rewards_trains_nothing_and_says_so(tmp_path):
    """Finding 3: TRL's test_warning_raised_all_rewards_none with GFPOTrainer: every reward function returns None.
    GRPOTrainer trains through it with advantages 0; GFPOTrainer keeps no row, warns, and its step is a zero update
    (SGD: the parameters do not move), where it crashed inside TRL before."""
    parts = tiny_parts()

    def no_reward(completions, **kwargs):
        return [None] * len(completions)

    trainer = GFPOTrainer(
        model=parts["model"], reward_funcs=[no_reward], train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"], group_filter_func="length",
        args=tiny_args(str(tmp_path), optim="sgd", per_device_train_batch_size=4, gradient_accumulation_steps=2),
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.warns(GFPOStepWarning, match=r"no completion of this batch \(2 groups of 4\) has a reward"):
        trainer.train()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    logged = trainer.state.log_history[0]
    assert logged["gfpo/trained_rows"] == 0.0 and logged["gfpo/placeholder_rows"] == 2.0


def build_gpt2(seed: int = 0):
    """A tiny GPT-2 (learned absolute position embeddings) over the toy vocabulary: left padding shifts positions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=28, n_embd=16, n_layer=1, n_head=2, n_positions=64, bos_token_id=1,
                        eos_token_id=1, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


def old_log_prob_gaps(trainer) -> list[float]:
    """Per trained micro-batch: the largest gap, over its loss tokens, between the training forward's log-probs (run
    again without a gradient before the loss) and the batch's old log-probs. 0 on an on-policy step."""
    gaps, original = [], trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with torch.no_grad():
            width = inputs["completion_ids"].shape[1]
            logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, width)
        loss_mask = inputs["completion_mask"].bool()
        if loss_mask.any():  # (a micro-batch of placeholders has no token to compare)
            gaps.append(float((logps - inputs["old_per_token_logps"]).abs()[loss_mask].max()))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    return gaps


def test_old_log_probs_agree_with_the_training_forward_for_learned_positions(tmp_path):
    """Finding 4: old log-probs are computed on TRL's generation batch; the training forward must see each kept row
    with the same left padding, or a learned-position model (GPT-2) reads other positions.
    steps_per_generation = 2 x accumulation makes TRL compute old log-probs; the first optimizer step is on-policy,
    so the training forward's log-probs equal them."""
    trainer = GFPOTrainer(
        model=build_gpt2(), reward_funcs=[Recorder()], train_dataset=varied_prompts(),
        processing_class=build_tokenizer(), group_filter_func="length",
        args=tiny_args(str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=2,
                       steps_per_generation=4, num_remains_in_group=2, optim="sgd", max_steps=1),
    )  # fmt: skip
    gaps = old_log_prob_gaps(trainer)
    trainer.train()
    assert len(gaps) == 2 and max(gaps) < 1e-5, gaps


@pytest.mark.distributed
def test_old_log_probs_agree_with_the_training_forward_on_two_processes(tmp_path):
    """Finding 4 as the issue found it: on two processes, where rows used to move between processes and be re-padded.
    The adapter before issue 21 moved a row with a 1-token prompt from a process whose prompts are 4 wide to one
    whose are 2 wide: its log-probs moved by 0.248 from the old ones on an on-policy step. Now every trained
    micro-batch matches its old log-probs on both processes."""
    import json

    from tests.trainer_utils import run_two_processes

    run_two_processes(tmp_path, "positions")
    for r in range(2):
        gaps = json.loads((tmp_path / f"positions-rank{r}.json").read_text())["gaps"]
        assert gaps and max(gaps) < 1e-5, (r, gaps)


def test_row_selection_makes_no_collective_call(tmp_path, monkeypatch):
    """Finding 5: a process decides locally which of its rows to keep, so a field that only some processes have
    (images) cannot leave one process waiting in a gather the others never call. Rows do not move between
    processes; the only collectives of a GFPO step are the fixed gathers of rewards, lengths, completions, ids and
    prompts and the decision's broadcast, made by every process whatever its batch holds."""
    parts = tiny_parts()
    trainer = GFPOTrainer(
        model=parts["model"], reward_funcs=[Recorder()], train_dataset=build_dataset(24),
        processing_class=parts["processing_class"], group_filter_func="length", args=tiny_args(str(tmp_path)),
    )  # fmt: skip
    calls = []
    original = trainer._keep_rows

    def keep_rows(*args, **kwargs):
        acc = trainer.accelerator
        for name in ("gather", "gather_for_metrics", "pad_across_processes", "reduce"):
            monkeypatch.setattr(acc, name, lambda *a, name=name, **k: calls.append(name))
        import gfpo_filters.integrations.trl as adapter

        monkeypatch.setattr(adapter, "gather_object", lambda *a, **k: calls.append("gather_object"))
        monkeypatch.setattr(adapter, "broadcast_object_list", lambda *a, **k: calls.append("broadcast"))
        try:
            return original(*args, **kwargs)
        finally:
            monkeypatch.undo()

    trainer._keep_rows = keep_rows
    trainer.train()
    assert calls == []


def test_loss_scales_give_every_row_grpos_weight():
    """The plan's arithmetic by hand: 2 processes keep 5 and 2 rows, steps_per_generation = 2."""
    from gfpo_filters.integrations.trl import micro_batch_plan

    plan = micro_batch_plan([5, 2], 2)
    assert plan.sizes.tolist() == [3, 2]  # the larger count split 3 + 2, the same on both processes
    assert plan.real.tolist() == [[3, 2], [2, 0]]
    assert plan.placeholders == 3 and not plan.equal
    mean = 7 / 4  # kept rows per process and micro-batch
    assert plan.scales(0, "grpo") == pytest.approx([3 / mean, 2 / mean])
    assert plan.scales(1, "grpo") == pytest.approx([3 / mean, 0.0])  # only placeholders: no term at all
    assert plan.scales(1, "dapo") == [1.0, 0.0]  # a token-sum loss weighs a token the same in any micro-batch
    # GRPOTrainer's shape: equal counts that divide into equal micro-batches, every scale exactly 1.
    equal = micro_batch_plan([6, 6], 2)
    assert equal.equal and equal.scales(1, "bnpo") == [1.0, 1.0] and equal.placeholders == 0
    # Nothing kept anywhere: one placeholder per micro-batch, scale 0.
    empty = micro_batch_plan([0, 0], 3)
    assert empty.sizes.tolist() == [1, 1, 1] and empty.scales(0, "grpo") == [0.0] * 3
    # A row's weight: size / count x scale = 1 / mean for every row of every micro-batch.
    for rank in range(2):
        for size, real, scale in zip(plan.sizes, plan.real[rank], plan.scales(rank, "grpo")):
            if real:
                assert math.isclose(scale / size, 1 / mean)


def test_old_and_reference_log_probs_run_on_the_kept_rows_only(tmp_path, monkeypatch):
    """Issue 23, item 3: rejected rows cost only their generation. With old log-probs (steps_per_generation >
    accumulation) and a reference model (beta > 0), TRL's two no-grad passes run on the 8 kept rows of 16, not on
    all 16, and give the kept rows the values the full passes give them: the same training to float rounding."""
    from trl import GRPOTrainer

    from tests.trainer_utils import build_model

    path = tmp_path / "initial"
    build_model(0, hidden=16, layers=1).save_pretrained(path)  # TRL loads the reference model by name
    runs = {}
    for defer in (True, False):
        rows, original = [], GRPOTrainer._get_per_token_logps_and_entropies

        def counted(self, model, input_ids, *args, rows=rows, original=original, **kwargs):
            if not torch.is_grad_enabled():
                rows.append(int(input_ids.shape[0]))
            return original(self, model, input_ids, *args, **kwargs)

        monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counted)
        trainer = GFPOTrainer(
            model=str(path), reward_funcs=[Recorder()], train_dataset=varied_prompts(),
            processing_class=build_tokenizer(), group_filter_func="length",
            args=tiny_args(str(tmp_path / str(defer)), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           steps_per_generation=4, num_remains_in_group=2, beta=0.1, optim="sgd", learning_rate=0.5,
                           max_completion_length=24, max_steps=2),
        )  # fmt: skip
        trainer.defer_log_probs = defer
        seen, compute_loss = [], trainer.compute_loss

        def record(model, inputs, *args, seen=seen, compute_loss=compute_loss, **kwargs):
            seen.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return compute_loss(model, inputs, *args, **kwargs)

        trainer.compute_loss = record
        trainer.train()
        params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        runs[defer] = (rows, seen, params)
        monkeypatch.undo()
    (rows_on, seen_on, params_on), (rows_off, seen_off, params_off) = runs[True], runs[False]
    assert rows_off == [16, 16] and rows_on == [8, 8]  # old and reference passes, one generation batch
    assert len(seen_on) == len(seen_off) == 4
    for a, b in zip(seen_on, seen_off):
        torch.testing.assert_close(a["completion_ids"], b["completion_ids"], rtol=0, atol=0)  # the same rows
        mask = a["completion_mask"].bool()
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            torch.testing.assert_close(a[key][mask], b[key][mask], rtol=1e-5, atol=1e-6)
    for name, p in params_off.items():
        torch.testing.assert_close(params_on[name], p, rtol=1e-5, atol=1e-6)
