"""Worker for the two-process pruning test: ``torchrun --nproc_per_node 2 tests/pruning_worker.py OUT_DIR PRUNE``.

6 rows per process, G = 4, k = 2: process 0 holds group 0 whole and the first half of group 1, process 1 the second
half of group 1 and group 2 whole. PRUNE is GFPOConfig.gfpo_prune ("auto" or "off"). Each process writes to
OUT_DIR/PRUNE-rank{N}.json the rows it trained (text, advantage), the rows its reward function saw, and the logs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfpo_filters.trainer import GFPOTrainer  # noqa: E402
from tests.trainer_utils import (  # noqa: E402
    Recorder,
    capture_batches,
    decode_rows,
    leave_worker,
    tiny_args,
    tiny_parts,
)


class Calls(Recorder):
    __name__ = "calls"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def __call__(self, prompts, completions, **kwargs):
        self.seen.append(list(completions))
        return super().__call__(prompts, completions, **kwargs)


def main(out_dir: str, prune: str) -> None:
    parts = tiny_parts()
    args = tiny_args(
        str(Path(out_dir) / prune),
        per_device_train_batch_size=6,
        num_generations=4,
        num_remains_in_group=2,
        max_completion_length=40,
        max_steps=2,
        ddp_backend="gloo",
        group_filter="length",
        gfpo_prune=prune,
    )
    calls = Calls()
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[calls],
        args=args,
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
    )
    assert trainer.accelerator.num_processes == 2, "expected two processes"
    batches = capture_batches(trainer)
    trainer.train()
    rank = trainer.accelerator.process_index
    rows = [
        [[t, round(float(a), 5)] for t, a in zip(decode_rows(b, trainer.processing_class), b["advantages"].tolist())]
        for b in batches
    ]
    logs = [{k: v for k, v in h.items() if k.startswith("gfpo/")} for h in trainer.state.log_history]
    out = {"rows": rows, "seen": calls.seen, "logs": logs, "plan": trainer._gfpo_prune_plan.exactness}
    Path(out_dir, f"{prune}-rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
    leave_worker()
