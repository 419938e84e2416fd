"""GRPO and GFPO on a real pretrained model: SmolLM2-135M-Instruct on one-digit additions.

Shared by ``benchmarks/smollm2.py`` (the measured comparison, docs/smollm2.md) and ``gfpo-filters demo --model
smollm2``. :func:`train` trains one arm with :class:`~gfpo_filters.trainer.GFPOTrainer` (no filter = GRPO) and
times every step; :func:`evaluate` answers held-out prompts greedily or by sampling and scores them with
:func:`gfpo_filters.experiments.addition.correct_sum` (or the lenient ``contains_sum``: ``reward=``).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from gfpo_filters.experiments import addition


@dataclass(frozen=True)
class Arm:
    """One training setting: a filter and k (None, None = GRPO) and a ``keep_signal`` mode.

    ``num_generations`` (None: :func:`train`'s) is G, or G' for a filter; ``length_reward`` adds a length control to
    the task reward (``"kimi"`` or ``"overlong"``, :func:`gfpo_filters.experiments.demo.length_controlled_reward`);
    ``loss_type`` replaces TRL's (``"dr_grpo"`` also sets ``scale_rewards="none"``, as Dr. GRPO does).
    """

    filter: str | None = None
    k: int | None = None
    keep_signal: bool | str = "off"
    num_generations: int | None = None
    length_reward: str | None = None
    loss_type: str | None = None


#: The arms compared: GRPO, the paper's GFPO (token_efficiency, 3 of 8), and ``recommended``: the same filter and k
#: with ``keep_signal="typical"`` (what ``keep_signal=True`` means; docs/effect.md, docs/smollm2.md).
#: benchmarks/smollm2.py ``--keep-signal MODE`` names another mode.
ARMS: dict[str, Arm] = {
    "grpo": Arm(),
    "token_efficiency": Arm("token_efficiency", 3, "off"),
    "recommended": Arm("token_efficiency", 3, "typical"),
    # Issue 22, the paper's regime: every arm trains on 8 rows per prompt. GRPO at G = 8 alone and with the length
    # controls a user picks instead of GFPO; GFPO sampling G' = 16 and keeping k = 8 (docs/length_baselines.md).
    "grpo_kimi": Arm(length_reward="kimi"),  # Kimi k1.5's group-relative length reward, scale 0.5
    "grpo_overlong": Arm(length_reward="overlong"),  # DAPO's soft overlong punishment, cache = cap / 4
    "dr_grpo": Arm(loss_type="dr_grpo"),  # Dr. GRPO: no length normalisation, no std scaling
    "length_8of16": Arm("length", 8, "off", num_generations=16),
    "token_efficiency_8of16": Arm("token_efficiency", 8, "off", num_generations=16),
    "recommended_8of16": Arm("token_efficiency", 8, "typical", num_generations=16),
    "recommended_8of16_kimi": Arm("token_efficiency", 8, "typical", num_generations=16, length_reward="kimi"),
    # GFPO with DAPO's punishment at the cap: a length filter cannot rank answers the cap has made equal in length.
    "recommended_8of16_overlong": Arm("token_efficiency", 8, "typical", num_generations=16, length_reward="overlong"),
    # Sampling 4k: G' = 32, k = 8 (still 8 trained rows per prompt; a stronger selection than 8 of 16).
    "recommended_8of32": Arm("token_efficiency", 8, "typical", num_generations=32),
}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu`` and ``cuda`` pass through (checked)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU: use --device cpu or auto")
    return device


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def completion_lengths(completion_ids: Any, eos_token_id: int) -> Any:
    """Token counts as TRL's completion mask counts them: up to and including the first EOS, else every token."""
    import torch

    is_eos = completion_ids == eos_token_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion_ids.shape[1])
    return first


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    *,
    sample: bool,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 48,
    batch_size: int = 50,
    bf16: bool = True,
    seed: int = 0,
    reward: str = "correct_sum",
    also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Answer every example (greedy, or ``samples_per_prompt`` samples at temperature 1) and score the answers.

    Returns accuracy with its 95% Wilson interval, mean length in tokens (counted as TRL counts them), and the
    share of answers that hit ``max_new_tokens`` without an EOS. ``also``: more rewards of
    :data:`gfpo_filters.experiments.addition.REWARDS` scored on the same answers, under ``"also"`` (accuracy, ci95).
    """
    import torch

    score = addition.reward_function(reward)
    extra = {name: addition.reward_function(name) for name in also}
    extra_rewards: dict[str, list[float]] = {name: [] for name in also}
    device = next(model.parameters()).device
    texts = [tokenizer.apply_chat_template(e["prompt"], tokenize=False, add_generation_prompt=True) for e in examples]
    answers = [e["answer"] for e in examples]
    prompts = [e["prompt"] for e in examples]
    if sample:
        texts = [t for t in texts for _ in range(samples_per_prompt)]
        answers = [a for a in answers for _ in range(samples_per_prompt)]
        prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    rewards: list[float] = []
    lengths: list[int] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs = {"do_sample": False}
        if sample:
            kwargs = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": None}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **kwargs
            )
        ids = out[:, enc["input_ids"].shape[1] :].cpu()
        n = completion_lengths(ids, eos)
        decoded = [tokenizer.decode(row[:m], skip_special_tokens=True) for row, m in zip(ids, n.tolist())]
        rewards += score(decoded, answers[start : start + batch_size])
        for name, fn in extra.items():
            batch_prompts = prompts[start : start + batch_size]
            extra_rewards[name] += fn(decoded, answers[start : start + batch_size], prompts=batch_prompts)
        lengths += n.tolist()
    model.train(was_training)
    hits = int(sum(rewards))
    lo, hi = wilson(hits, len(rewards))
    record = {
        "n": len(rewards),
        "accuracy": hits / len(rewards),
        "ci95": [lo, hi],
        "mean_length": sum(lengths) / len(lengths),
        "frac_capped": sum(m >= max_new_tokens for m in lengths) / len(lengths),
    }
    if also:
        record["also"] = {
            name: {"accuracy": sum(r) / len(r), "ci95": list(wilson(int(sum(r)), len(r)))}
            for name, r in extra_rewards.items()
        }
    return record


def train(
    arm: Arm,
    *,
    steps: int,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = True,
    learning_rate: float = 5e-5,
    prompts_per_step: int = 1,
    num_generations: int = 8,
    max_completion_length: int = 32,
    model_path: str = "smollm2",
    log_every: int = 0,
    gfpo_loss_normalizer: str = "kept",
    reward: str = "correct_sum",
    gfpo_prune: str = "off",
) -> tuple[Any, Any, dict[str, Any]]:
    """Train ``arm`` from the pretrained model; return (model, tokenizer, record with the per-step history).

    ``gfpo_prune`` is off by default here, as the effect runs of docs/length_baselines.md were made: the history's
    training lengths are TRL's batch metrics, which with pruning count only the tokens written (the held-out
    evaluation samples unpruned either way). ``benchmarks/prune_cost.py`` measures pruning's cost.

    Every step is timed whole (generation, scoring, filter, loss, backward, optimizer) and its generation part
    apart (``_generate_and_score_completions``): step - generation is what the filter saves. Both in wall time and
    in the process's CPU time, which on one thread measures the work whatever else shares the machine.
    """
    import torch
    from transformers import TrainerCallback

    from gfpo_filters.experiments.demo import length_controlled_reward
    from gfpo_filters.experiments.models import load_gguf_causal_lm
    from gfpo_filters.trainer import GFPOConfig, GFPOTrainer

    num_generations = arm.num_generations or num_generations
    reward_fn = addition.reward_function(reward)  # a bad name fails before the model loads
    reward_fn = length_controlled_reward(reward_fn, arm.length_reward, num_generations, max_completion_length)
    model, tokenizer = load_gguf_causal_lm(model_path)
    config = GFPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gfpo-smollm2-"),  # nothing is saved there (save_strategy="no")
        per_device_train_batch_size=prompts_per_step * num_generations,
        num_generations=num_generations,
        num_remains_in_group=arm.k,
        group_filter=arm.filter,
        keep_signal=arm.keep_signal,
        gfpo_loss_normalizer=gfpo_loss_normalizer,
        gfpo_prune=gfpo_prune,
        max_completion_length=max_completion_length,
        temperature=1.0,
        learning_rate=learning_rate,
        max_steps=steps,
        logging_steps=1,
        beta=0.0,
        gradient_checkpointing=False,  # TRL turns it on by default; a 135M model fits, and it costs a forward pass
        seed=seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **({} if arm.loss_type is None else {"loss_type": arm.loss_type}),
        **({"scale_rewards": "none"} if arm.loss_type == "dr_grpo" else {}),
    )
    trainer = GFPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=config,
        train_dataset=addition.build_dataset("train", seed=seed),
        processing_class=tokenizer,
    )
    times: list[dict[str, float]] = []

    generate = trainer._generate_and_score_completions

    def timed_generate(*a: Any, **kw: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = generate(*a, **kw)
        times[-1]["generate_seconds"] += time.perf_counter() - t0
        times[-1]["generate_cpu_seconds"] += time.process_time() - c0
        return out

    trainer._generate_and_score_completions = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(
                {
                    "start": time.perf_counter(),
                    "cpu_start": time.process_time(),
                    "generate_seconds": 0.0,
                    "generate_cpu_seconds": 0.0,
                }
            )

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            t = times[-1]
            t["step_seconds"] = time.perf_counter() - t.pop("start")
            t["step_cpu_seconds"] = time.process_time() - t.pop("cpu_start")
            if log_every and state.global_step % log_every == 0:
                print(f"  step {state.global_step}/{steps}: {t['step_seconds']:.1f} s", flush=True)

    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepTimer())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    history = [
        {
            "step": h["step"],
            "reward": h["reward"],
            # the task reward alone: TRL's "reward" is the shaped sum when a length control is added
            "task_reward": h.get("length_control/task_reward", h["reward"]),
            "length": h["completions/mean_length"],
            "kept_length": h.get("gfpo/kept_length_mean"),
            "step_seconds": t["step_seconds"],
            "generate_seconds": t["generate_seconds"],
            "step_cpu_seconds": t["step_cpu_seconds"],  # CPU time of the process: on one thread, the work done
            "generate_cpu_seconds": t["generate_cpu_seconds"],
        }
        for h, t in zip(logs, times)
    ]
    record = {
        "filter": arm.filter,
        "k": arm.k,
        "keep_signal": config.keep_signal,
        "num_generations": num_generations,
        "prompts_per_step": prompts_per_step,
        "max_completion_length": max_completion_length,
        "learning_rate": learning_rate,
        "gfpo_loss_normalizer": gfpo_loss_normalizer,
        "reward": reward,
        "length_reward": arm.length_reward,
        "loss_type": config.loss_type,
        "steps": steps,
        "seed": seed,
        "device": device,
        "bf16": bf16,
        "history": history,
    }
    return trainer.model, tokenizer, record
