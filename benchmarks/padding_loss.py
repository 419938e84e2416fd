"""Does padding change the loss? Per loss type, padded step / unpadded step, before and after the fix (issue 13).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/padding_loss.py

One real GFPO training step on a tiny model (3 groups of 4, keep 3: 9 kept rows) with ``steps_per_generation``
2 (1 padding row) and 4 (3 padding rows). Its loss and gradient are compared with TRL's own GRPOTrainer loss on the
same 9 kept rows without padding (``tests/trainer_utils.reference_step``; bnpo, normalised per micro-batch by
design, is compared micro-batch by micro-batch). "before" is the adapter without the normaliser correction (what
the previous commit trained: ``_row_scale`` returns 1); "after" is the current adapter. Batches carry the
``old_per_token_logps`` of a uniform policy so that the loss is not 0 (on-policy, GRPO's loss is minus the mean
advantage, which is 0). A ratio of 1.000000 means the padded step is the unpadded one.
"""

from __future__ import annotations

import tempfile
import warnings

import torch

warnings.filterwarnings("ignore")


def padded_step(loss_type: str, steps: int, fixed: bool, out: str):
    from gfpo_filters.trainer import GFPOTrainer
    from tests.trainer_utils import LOSS_TYPES, recorded_step

    class Before(GFPOTrainer):
        def _row_scale(self, n_kept, n_rows):
            return 1.0

    _, step, batches = recorded_step(
        out,
        trainer_class=GFPOTrainer if fixed else Before,
        steps_per_generation=steps,
        gradient_accumulation_steps=steps,
        per_device_train_batch_size=12 // steps,
        loss_type=loss_type,
        max_grad_norm=0.0,
        **LOSS_TYPES[loss_type],
    )
    padding = int((batches[0]["completion_mask"].sum(dim=1) == 0).sum())
    return sum(step.losses), step.grads, step.micro_batches, padding


def norm(grads) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


def main() -> None:
    from tests.trainer_utils import LOSS_TYPES, reference_step

    torch.set_num_threads(1)
    header = f"{'loss_type':<9} {'steps/gen':>9} {'padding':>7} | {'loss ratio':>21} | {'gradient-norm ratio':>21}"
    print(header)
    print(f"{'':<9} {'':>9} {'rows':>7} | {'before':>10} {'after':>10} | {'before':>10} {'after':>10}")
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as out:
        for loss_type in LOSS_TYPES:
            for steps in (2, 4):
                row = []
                for fixed in (False, True):
                    loss, grads, micro_batches, padding = padded_step(loss_type, steps, fixed, out)
                    ref_loss, ref_grads = reference_step(loss_type, [micro_batches], out, max_grad_norm=0.0)
                    row.append((loss / ref_loss, norm(grads) / norm(ref_grads)))
                (lb, gb), (la, ga) = row
                print(f"{loss_type:<9} {steps:>9} {padding:>7} | {lb:>10.6f} {la:>10.6f} | {gb:>10.6f} {ga:>10.6f}")


if __name__ == "__main__":
    main()
