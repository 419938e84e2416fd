"""Worker for the two-process vLLM test: ``torchrun --nproc_per_node 2 tests/vllm_cpu/worker.py OUT_DIR MODEL_DIR MODE
LOSS_TYPE``.

Each process runs its own vLLM engine (TRL's colocate mode) and trains one GFPO step on 6 rows of 3 groups (G = 4,
k = 2, the ``length`` filter). The middle group spans both processes, and process 1's sampler favours ``<eos>``, so
that group keeps the two short rows of process 1: process 1 holds 4 of the 6 kept rows and trains them, process 0
trains its 2 and placeholders. Each process saves to OUT_DIR/rank{N}.pt the
batch TRL built before the filter, the micro-batches the loss saw, and the gradient the optimizer saw.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trl import GRPOTrainer  # noqa: E402

from tests.vllm_cpu.vllm_utils import gfpo_step  # noqa: E402

EOS_ID, EOS_BIAS = 1, 3.0


def main(out_dir: str, model_dir: str, mode: str, loss_type: str) -> None:
    trl_batches = []
    original = GRPOTrainer._generate_and_score_completions

    def recorded(self, inputs):  # TRL's own batch, before GFPOTrainer keeps its rows
        out = original(self, inputs)
        trl_batches.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in out.items()})
        return out

    GRPOTrainer._generate_and_score_completions = recorded
    trainer, step = gfpo_step(
        model_dir,
        out_dir,
        per_device_train_batch_size=6,
        num_remains_in_group=2,
        loss_type=loss_type,
        vllm_importance_sampling_mode=mode,
        max_grad_norm=0.0,
        max_steps=1,
        # Process 1's sampler favours <eos>: its completions are short, so it keeps the straddling group's rows.
        generation_kwargs={"logit_bias": {EOS_ID: EOS_BIAS}} if os.environ["RANK"] == "1" else None,
    )
    rank = trainer.accelerator.process_index
    torch.save(
        {"trl": trl_batches[0], "micro_batches": step.micro_batches, "grads": step.grads},
        Path(out_dir) / f"rank{rank}.pt",
    )
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
