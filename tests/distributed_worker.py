"""Worker for the two-process tests: ``torchrun --nproc_per_node 2 tests/distributed_worker.py OUT_DIR [MODE]``.

MODE ``selection`` (default): one group of G = 8 completions spans both processes (4 rows each). The filter
keeps the first four, which all live on process 0, so process 1 holds none of the kept rows itself. Each process
writes what it saw to OUT_DIR/rank{N}.json for the test to compare.

MODE ``keep_signal``: the same with ``keep_signal="swap"`` and reward 1 on process 0, 0 on process 1: the filter's
first four are all correct (no signal), so keep_signal swaps the fourth for the fifth, which lives on process 1.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfpo_filters.trainer import GFPOTrainer  # noqa: E402
from tests.trainer_utils import (  # noqa: E402
    LOSS_TYPES,
    Recorder,
    capture_batches,
    decode_rows,
    leave_worker,
    tiny_args,
    tiny_parts,
)

G, K = 8, 4


class FirstFour:
    def __init__(self):
        self.calls = []

    def __call__(self, group_completions, group_rewards, **kwargs):
        self.calls.append((group_completions, group_rewards))
        return [[float(G - j) for j in range(G)] for _ in group_completions]


class ByProcess:
    """Reward 1 for the rows of process 0 and 0 for those of process 1."""

    __name__ = "by_process"

    def __call__(self, prompts, completions, **kwargs):
        return [float(torch.distributed.get_rank() == 0)] * len(completions)


def hand_kept(rewards, keep_signal):
    """The first K; with keep_signal, if their rewards are all equal and the group's are not, the K-th
    (the lowest-ranked kept) gives way to the first later completion with another reward."""
    kept = [j < K for j in range(G)]
    if keep_signal and len(set(rewards[:K])) == 1 and len(set(rewards)) > 1:
        kept[K - 1] = False
        kept[next(j for j in range(K, G) if rewards[j] != rewards[0])] = True
    return kept


def hand_advantages(rewards, kept):
    chosen = [r for r, keep in zip(rewards, kept) if keep]
    mean = sum(chosen) / K
    std = math.sqrt(sum((r - mean) ** 2 for r in chosen) / K)
    return [(r - mean) / (std + 1e-4) if keep else 0.0 for r, keep in zip(rewards, kept)]


def main(out_dir: str, keep_signal: bool | str = False) -> None:
    parts = tiny_parts()
    args = tiny_args(
        out_dir,
        per_device_train_batch_size=4,
        num_generations=G,
        num_remains_in_group=K,
        max_steps=2,
        ddp_backend="gloo",
        keep_signal=keep_signal,
        logging_steps=1,
    )
    filt = FirstFour()
    trainer = GFPOTrainer(
        model=parts["model"],
        reward_funcs=[ByProcess() if keep_signal else Recorder()],
        args=args,
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
        group_filter_func=filt,
    )
    assert trainer.accelerator.num_processes == 2, "expected two processes"
    batches = capture_batches(trainer)
    trainer.train()
    rank = trainer.accelerator.process_index
    steps = []
    for i, batch in enumerate(batches):
        texts = decode_rows(batch, trainer.processing_class)
        step = {"rows": [[t, round(float(a), 5)] for t, a in zip(texts, batch["advantages"].tolist())]}
        if rank == 0:  # only process 0 runs the filter; the others train its decision
            groups, rewards = filt.calls[i]
            kept = [hand_kept(row, keep_signal) for row in rewards]
            step.update(groups=groups, kept=kept, advantages=[hand_advantages(r, k) for r, k in zip(rewards, kept)])
        steps.append(step)
    swaps = [log["gfpo/keep_signal_swaps"] for log in trainer.state.log_history if "gfpo/keep_signal_swaps" in log]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"steps": steps, "swaps": swaps, "calls": len(filt.calls)}))


def exact(out_dir: str, cases: str = "") -> None:
    """MODE ``exact``: the exactness matrix on two processes (``cases``: ``loss:feature,...``, default: all).

    Each process saves, per case, to OUT_DIR/{loss}-{feature}-rank{N}.pt: the GFPO run's and the reference
    GRPOTrainer's gradients (after DDP's average), losses and final parameters, the micro-batches it trained, the
    batches GFPO trained and the reference batches (see ``trainer_utils.exact_case``).
    """
    from tests.trainer_utils import exact_case, exact_features

    def gather(obj):
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    chosen = (
        [c.split(":") for c in cases.split(",")]
        if cases
        else [(loss, feature) for loss in LOSS_TYPES for feature in exact_features()]
    )
    rank = int(os.environ["RANK"])  # (the process group starts with the first trainer)
    for loss_type, feature in chosen:
        try:
            case = exact_case(out_dir, loss_type, feature, gather=gather, ddp_backend="gloo")
            if case["grpo"] is None:  # a shape GRPOTrainer cannot train: the test needs every process's batches
                case["micro_all"] = gather(case["gfpo"]["micro_batches"])
                case["generated_all"] = gather(case["generated"])
        except ValueError as e:  # a refusal both processes reach (the adapter before issue 16 had some): a result
            case = {"error": f"{type(e).__name__}: {e}"}
        torch.save(case, Path(out_dir, f"{loss_type}-{feature}-rank{rank}.pt"))


def feature_runs() -> tuple[str, ...]:
    """The runs of MODE ``features`` on the installed TRL (TRL 1.7.1's own GRPOTrainer fails on the tiny LLaVA)."""
    import trl
    from packaging.version import Version

    return ("tools", "vlm") if Version(trl.__version__) >= Version("1.8") else ("tools",)


def features(out_dir: str) -> None:
    """MODE ``features``: multi-turn tools and a vision-language model on two processes, uneven shares.

    3 groups of 4 over two processes (6 rows each), k = 3: each process trains its own kept rows. Each process saves the
    rows it generated (before filtering), the kept mask, and the rows it trained to OUT_DIR/{run}-rank{N}.json.
    """
    import os

    from gfpo_filters.selection import topk_mask
    from tests.test_trainer_features import Spy, multiply, used_a_tool
    from tests.trainer_utils import (
        ScriptedGenerate,
        build_chat_model,
        build_chat_tokenizer,
        build_tiny_vlm,
        image_dataset,
        reward_of,
        tool_call,
    )

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    turns = [tool_call("multiply", a=3, b=4), "No.<|im_end|>", tool_call("multiply", a=3, c=4)]
    for run in feature_runs():
        spy = Spy("length")
        args = tiny_args(out_dir, per_device_train_batch_size=6, ddp_backend="gloo", max_completion_length=128)
        if run == "tools":
            from tests.test_trainer_features import chat_dataset

            tokenizer = build_chat_tokenizer()
            model, processing_class, dataset = build_chat_model(tokenizer), tokenizer, chat_dataset()
            extra = {"reward_funcs": [used_a_tool], "tools": [multiply]}
        else:
            model, processing_class = build_tiny_vlm()
            tokenizer, dataset = processing_class.tokenizer, image_dataset()
            extra = {"reward_funcs": [lambda completions, **kw: [reward_of(c[0]["content"]) for c in completions]]}
        trainer = GFPOTrainer(
            model=model, args=args, processing_class=processing_class, train_dataset=dataset,
            group_filter_func=spy, **extra,
        )  # fmt: skip
        if run == "tools":
            trainer.model.generate = ScriptedGenerate(tokenizer, turns)
        seen, original = [], trainer._filter_batch

        def wrapped(output, *rest, seen=seen, original=original):
            seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in output.items()})
            return original(output, *rest)

        trainer._filter_batch = wrapped
        decisions, log_selection = [], trainer._log_selection

        def logged(result, *rest, decisions=decisions, log_selection=log_selection):
            decisions.append(result.kept.copy())
            return log_selection(result, *rest)

        trainer._log_selection = logged
        batches = capture_batches(trainer)
        trainer.train()
        rank = trainer.accelerator.process_index

        def rows(batch, tokenizer=tokenizer):
            out = []
            for i in range(len(batch["completion_ids"])):
                mask = batch["completion_mask"][i].bool()
                if not mask.any():
                    continue  # a padding row
                n = int(mask.sum())
                row = {
                    "prompt": tokenizer.decode(batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]),
                    "completion": batch["completion_ids"][i][:n].tolist(),
                    "tool_mask": batch["tool_mask"][i][:n].tolist() if "tool_mask" in batch else None,
                }
                if "pixel_values" in batch:
                    row["pixels"] = batch["pixel_values"][i].flatten()[:8].tolist()
                out.append(row)
            return out

        top = None
        if spy.calls:  # process 0 only: the filter's own top k
            call = spy.calls[0]
            scores = np.asarray(spy.inner(group_completions=call["group_completions"],
                                          group_rewards=call["group_rewards"],
                                          completion_lengths=call["completion_lengths"]))  # fmt: skip
            top = topk_mask(scores, 3, valid=np.isfinite(np.asarray(call["group_rewards"], dtype=float))).tolist()
        Path(out_dir, f"{run}-rank{rank}.json").write_text(
            json.dumps(
                {
                    "generated": rows(seen[0]),
                    "top": top,
                    "kept": decisions[0].tolist(),
                    "lengths": [call["completion_lengths"].tolist() if spy.calls else None],
                    "trained": rows(batches[0]),
                    "batch_rows": len(batches[0]["advantages"]),
                }
            )
        )


def positions(out_dir: str) -> None:
    """MODE ``positions``: issue 21's finding 4 on two processes. A tiny GPT-2 (learned absolute positions), 6 rows
    per process: group 0 on process 0, group 1 straddling both, group 2 on process 1, prompts of 1, 2 and 4 tokens.
    The filter keeps the first two of each group, so process 0 holds 4 kept rows and process 1 holds 2 (the adapter
    before issue 21 moved one to process 1 and re-padded it). Old log-probs are computed (``num_iterations`` 2), and
    the one optimizer step trained here is on-policy: each process writes the largest gap between the training
    forward's log-probs and the old log-probs to OUT_DIR/positions-rank{N}.json."""
    from datasets import Dataset

    from gfpo_filters.experiments.toy import build_tokenizer
    from tests.test_trainer_rows import build_gpt2, old_log_prob_gaps

    def first_two(group_completions, group_rewards):
        return [[-float(j) for j in range(len(group))] for group in group_completions]

    trainer = GFPOTrainer(
        model=build_gpt2(), reward_funcs=[Recorder()], train_dataset=Dataset.from_dict({"prompt": ["a", "bc", "defg"]}),
        processing_class=build_tokenizer(), group_filter_func=first_two,
        args=tiny_args(out_dir, per_device_train_batch_size=6, num_iterations=2, num_remains_in_group=2, optim="sgd",
                       max_steps=1, ddp_backend="gloo", seed=0),
    )  # fmt: skip
    gaps = old_log_prob_gaps(trainer)
    trainer.train()
    rank = trainer.accelerator.process_index
    Path(out_dir, f"positions-rank{rank}.json").write_text(json.dumps({"gaps": gaps}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    modes = {"selection": main, "keep_signal": lambda out: main(out, keep_signal="swap")}
    modes.update(exact=exact, features=features, positions=positions)
    modes[sys.argv[2] if len(sys.argv) > 2 else "selection"](sys.argv[1], *sys.argv[3:])
    leave_worker()
