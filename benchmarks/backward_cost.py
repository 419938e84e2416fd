"""Loss-plus-backward time of one training batch: GFPO keeping k of G vs GRPO on all G (issue 3).

    OMP_NUM_THREADS=2 python benchmarks/backward_cost.py [--filter random] [--k 4] [--hidden 256]

Both trainers wrap the same freshly initialised model (a Llama built from a config) and see the
same prompts with the same generation seed; completions are forced to the full length so that
the comparison counts rows, not lengths (with ``--filter length`` both sample their lengths freely).
The script times ``compute_loss`` + ``backward`` on the
batch each trainer produced and reports the best of several repeats. With the ``length``
filter, the kept rows are also the short ones, and the adapter trims the unused columns.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def build(filter_name, k, args):
    from transformers import PrinterCallback

    from gfpo_filters.experiments.toy import build_dataset, build_model, build_tokenizer, contains_target
    from gfpo_filters.trainer import GFPOConfig, GFPOTrainer

    config = GFPOConfig(
        output_dir="/tmp/gfpo-backward-cost",
        per_device_train_batch_size=args.prompts * args.g,
        num_generations=args.g,
        num_remains_in_group=k,
        max_completion_length=args.length,
        beta=0.0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        bf16=False,
        # Full-length completions unless the comparison is about length (then both trainers sample freely).
        generation_kwargs={"min_new_tokens": 1 if args.filter == "length" else args.length},
    )
    trainer = GFPOTrainer(
        model=build_model(0, hidden=args.hidden, layers=args.layers),
        reward_funcs=contains_target,
        args=config,
        train_dataset=build_dataset(16),
        processing_class=build_tokenizer(),
        group_filter_func=filter_name,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we call the loss directly
    return trainer


def make_batch(trainer):
    prompts = trainer.train_dataset["prompt"][: trainer.args.per_device_train_batch_size // trainer.num_generations]
    torch.manual_seed(0)
    trainer.model.train()
    return trainer._generate_and_score_completions(
        [{"prompt": p} for p in prompts for _ in range(trainer.num_generations)]
    )


def loss_backward_seconds(trainer, batch):
    trainer.model.zero_grad()
    start = time.perf_counter()
    trainer.compute_loss(trainer.model, batch).backward()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter", default="random")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--g", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    runs = {"GRPO": build(None, None, args), "GFPO": build(args.filter, args.k, args)}
    batches = {name: make_batch(trainer) for name, trainer in runs.items()}
    best = {name: float("inf") for name in runs}
    for i in range(args.repeats + 1):  # interleaved, so drift on a shared machine hits both alike
        for name, trainer in runs.items():
            seconds = loss_backward_seconds(trainer, batches[name])
            if i:  # the first round is a warm-up
                best[name] = min(best[name], seconds)
    print(
        f"GRPO  G={args.g}: batch {tuple(batches['GRPO']['completion_ids'].shape)}  loss+backward {best['GRPO'] * 1e3:8.1f} ms"  # noqa: E501
    )
    print(
        f"GFPO  {args.filter} k={args.k}: batch {tuple(batches['GFPO']['completion_ids'].shape)}  "
        f"loss+backward {best['GFPO'] * 1e3:8.1f} ms"
    )
    print(f"ratio GFPO/GRPO = {best['GFPO'] / best['GRPO']:.3f}   (k/G = {args.k / args.g:.3f})")


if __name__ == "__main__":
    main()
