"""Padding rows do not change the loss (issue 13): per loss type, a padded step equals the unpadded one.

When the kept rows do not fill equal micro-batches, the adapter adds padding rows (empty completion mask,
advantage 0). Each test trains one real step with padding forced and compares its loss and gradient with TRL's own
GRPOTrainer loss on the same kept rows with no padding at all (see ``trainer_utils.reference_step``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from gfpo_filters.trainer import GFPOTrainer  # noqa: E402
from tests.trainer_utils import (  # noqa: E402
    LOSS_TYPES,
    Recorder,
    recorded_step,
    reference_step,
    run_two_processes,
    tiny_args,
    tiny_parts,
)

pytestmark = pytest.mark.trainer

#: One step, gradients as computed: no clipping, so the gradient the optimizer sees is the loss's.
STEP = dict(max_grad_norm=0.0, max_steps=1)


def assert_same_step(loss, grads, ref_loss, ref_grads):
    assert abs(ref_loss) > 1e-3  # off-policy batches: a loss that padding could visibly scale
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_padded_step_equals_unpadded_step(tmp_path, loss_type):
    # 3 groups x k=3 = 9 kept rows over steps_per_generation=2 micro-batches: one padding row.
    settings = dict(loss_type=loss_type, **LOSS_TYPES[loss_type], **STEP)
    trainer, step, batches = recorded_step(
        str(tmp_path), steps_per_generation=2, gradient_accumulation_steps=2, per_device_train_batch_size=6, **settings
    )
    assert int((batches[0]["completion_mask"].sum(dim=1) == 0).sum()) == 1  # the padding row is there
    assert len(step.micro_batches) == 2 and sum(len(b["advantages"]) for b in step.micro_batches) == 10
    logged = [h["gfpo/padding_rows"] for h in trainer.state.log_history if "gfpo/padding_rows" in h]
    assert logged == [1.0]

    ref_loss, ref_grads = reference_step(loss_type, [step.micro_batches], str(tmp_path / "ref"), **STEP)
    assert_same_step(sum(step.losses), step.grads, ref_loss, ref_grads)


def test_row_mean_loss_with_entropy_bonus_and_padding_is_refused(tmp_path):
    if "entropy_coef" not in {f for f in tiny_args(str(tmp_path)).to_dict()}:
        pytest.skip("this TRL has no entropy bonus")
    parts = tiny_parts()
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[Recorder()],
        args=tiny_args(
            str(tmp_path),
            loss_type="grpo",
            entropy_coef=0.01,
            steps_per_generation=2,
            gradient_accumulation_steps=2,
            per_device_train_batch_size=6,
        ),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
        group_filter_func="length",
    )
    with pytest.raises(ValueError, match=r"loss_type='grpo' with an entropy bonus \(entropy_coef\) cannot"):
        trainer.train()


@pytest.mark.distributed
def test_padded_step_equals_unpadded_step_on_two_processes(tmp_path):
    """Two processes, uneven shares (9 kept rows: 5 + 4, process 1 pads one row), every loss type in one launch."""
    run_two_processes(tmp_path, "padding")
    for loss_type in LOSS_TYPES:
        ranks = [torch.load(tmp_path / f"{loss_type}-rank{r}.pt") for r in range(2)]
        assert [r["padding_rows"] for r in ranks] == [0, 1]
        assert [sum(len(b["advantages"]) for b in r["micro_batches"]) for r in ranks] == [5, 5]
        ref_loss, ref_grads = reference_step(
            loss_type, [r["micro_batches"] for r in ranks], str(tmp_path / "ref"), **STEP
        )
        # DDP averages the two processes' gradients; the step's loss is the mean of theirs.
        loss = sum(sum(r["losses"]) for r in ranks) / 2
        assert_same_step(loss, ranks[0]["grads"], ref_loss, ref_grads)
