"""Rows the filter chose against rows GFPOTrainer trained, per batch shape x process count x loss type (issue 21).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/batch_shapes.py            # 1 and 2 processes

Each case trains the tiny toy Llama for 3 optimizer steps with the ``length`` filter and counts, over every
generation batch: the rows the filter chose (its top k of each group, ``GFPOStepResult.top``), and the rows the
micro-batches trained (rows with a loss token; a placeholder row has none). Before issue 21 the adapter rounded the
kept rows up to a multiple of processes x ``steps_per_generation`` with rejected rows; to measure it, put its package
first (the toy task must be importable from it too)::

    git archive 772c2c3 gfpo_filters | tar -x -C /tmp/before
    cp -r gfpo_filters/experiments /tmp/before/gfpo_filters/ && ln -s $PWD/tests /tmp/before/tests
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before python benchmarks/batch_shapes.py

Two processes run under ``torchrun`` (gloo); this script launches them itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

#: (name, GFPOConfig settings); every shape trains 3 optimizer steps.
SHAPES = [
    ("b=1, ga=4, G=4, k=2", dict(per_device_train_batch_size=1, gradient_accumulation_steps=4, num_generations=4,
                                  num_remains_in_group=2)),
    ("b=2, ga=4, G=8, k=3", dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, num_generations=8,
                                  num_remains_in_group=3)),
    ("b=8, ga=1, G=8, k=3", dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=8,
                                  num_remains_in_group=3)),
    ("b=2, ga=4, G=4, adaptive k 3/3/2/2", dict(per_device_train_batch_size=2, gradient_accumulation_steps=4,
                                                 num_generations=4, num_remains_in_group=2, adaptive_k=[3, 3, 2, 2],
                                                 adaptive_warmup_steps=1, adaptive_window=8)),
]  # fmt: skip
LOSSES = ("grpo", "dapo")


def run_case(settings: dict, loss_type: str, out: str) -> tuple[int, int]:
    """(rows chosen, rows trained on this process) over 3 optimizer steps."""
    from gfpo_filters.trainer import GFPOTrainer
    from tests.trainer_utils import Recorder, tiny_args, tiny_parts

    parts = tiny_parts()
    args = tiny_args(out, max_steps=3, loss_type=loss_type, max_completion_length=16, **settings)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.ddp_backend = "gloo"
    trainer = GFPOTrainer(
        model=parts["model"], reward_funcs=[Recorder()], args=args, train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"], group_filter_func="length",
    )  # fmt: skip
    chosen, trained = [], []
    log_selection, compute_loss = trainer._log_selection, trainer.compute_loss

    def logged(result, *rest):
        chosen.append(int((result.kept if result.top is None else result.top).sum()))
        return log_selection(result, *rest)

    def counted(model, inputs, *a, **k):
        trained.append(int((inputs["completion_mask"].sum(dim=1) > 0).sum()))
        return compute_loss(model, inputs, *a, **k)

    trainer._log_selection, trainer.compute_loss = logged, counted
    trainer.train()
    return sum(chosen), sum(trained)


def worker(path: str) -> None:
    """One process of a two-process run: every case, each process's counts written to ``path``-rank{N}.json."""
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name, settings in SHAPES:
            for loss in LOSSES:
                try:
                    rows.append([name, loss, *run_case(settings, loss, out)])
                except Exception as e:  # noqa: BLE001 - a shape the adapter refuses is a result too
                    rows.append([name, loss, f"{type(e).__name__}: {str(e)[:80]}", None])
    Path(f"{path}-rank{os.environ['RANK']}.json").write_text(json.dumps(rows))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated (default 1,2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: a package put first wins
    if args.worker:
        worker(args.worker)
        return
    print("| batch shape | processes | loss | rows the filter chose | rows trained |")
    print("|---|---|---|---|---|")
    for procs in [int(p) for p in args.procs.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            path = str(Path(out, "counts"))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if procs == 1:
                env.update(RANK="0", WORLD_SIZE="1")
                command = [sys.executable, __file__, "--worker", path]
            else:
                with socket.socket() as sock:  # a free port for the rendezvous
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                           f"--master_port={port}", __file__, "--worker", path]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-2000:])
                continue
            ranks = [json.loads(Path(f"{path}-rank{r}.json").read_text()) for r in range(procs)]
        for rows in zip(*ranks):
            name, loss, chosen, _ = rows[0]
            trained = "-" if rows[0][3] is None else sum(r[3] for r in rows)
            print(f"| {name} | {procs} | {loss} | {chosen} | {trained} |", flush=True)


if __name__ == "__main__":
    main()
