"""GFPOTrainer for every GRPO run TRL supports (issue 9): constructor, configuration, multi-objective rewards,
tools, environments, rollout functions, PEFT and vision-language batches, each through real training steps."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402

from gfpo_filters import load_filter  # noqa: E402
from gfpo_filters.trainer import GFPOConfig, GFPOTrainer  # noqa: E402
from tests.trainer_utils import (  # noqa: E402
    CheckingFilter,
    Recorder,
    capture_batches,
    decode_rows,
    reward_of,
    tiny_args,
    tiny_parts,
)

pytestmark = pytest.mark.trainer


# ---------------------------------------------------------------------- the constructor
def test_constructor_takes_every_grpo_trainer_argument():
    grpo = inspect.signature(GRPOTrainer.__init__).parameters
    gfpo = inspect.signature(GFPOTrainer.__init__).parameters
    # Every GRPOTrainer parameter of the installed TRL, in the same order, kind and default; plus the filter.
    assert [(p.name, p.kind, p.default) for p in grpo.values()] == [
        (p.name, p.kind, p.default) for p in gfpo.values() if p.name != "group_filter_func"
    ]
    assert gfpo["group_filter_func"].kind is inspect.Parameter.KEYWORD_ONLY


def test_arguments_reach_grpo_trainer_positionally_and_by_name(tmp_path):
    from transformers import PrinterCallback

    parts = tiny_parts()
    # GRPOTrainer's positional order: model, reward_funcs, args, train_dataset, eval_dataset, processing_class,
    # reward_processing_classes, callbacks.
    trainer = GFPOTrainer(
        parts["model"],
        [Recorder()],
        tiny_args(str(tmp_path)),
        parts["train_dataset"],
        None,
        parts["processing_class"],
        None,
        [PrinterCallback],
        group_filter_func="length",
    )
    assert any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)
    assert trainer.group_filter_func.name == "length"


def test_unknown_arguments_are_forwarded_to_grpo_trainer(tmp_path):
    # A keyword argument GRPOTrainer does not know reaches it (and it, not GFPOTrainer, refuses it).
    parts = tiny_parts()
    with pytest.raises(TypeError, match="not_a_grpo_argument"):
        GFPOTrainer(
            **parts,
            reward_funcs=[Recorder()],
            args=tiny_args(str(tmp_path)),
            group_filter_func="length",
            not_a_grpo_argument=1,
        )


# ---------------------------------------------------------------------- the filter from configuration
def make(tmp_path, group_filter_func=None, reward_funcs=None, **overrides):
    parts = tiny_parts()
    return GFPOTrainer(
        **parts,
        reward_funcs=reward_funcs or [Recorder()],
        args=tiny_args(str(tmp_path), **overrides),
        group_filter_func=group_filter_func,
    )


def test_filter_named_in_the_configuration(tmp_path):
    trainer = make(tmp_path, group_filter="reward", group_filter_kwargs={"threshold": 0.5}, num_remains_in_group=2)
    assert trainer.group_filter_func.name == "reward" and trainer.group_filter_func.params == {"threshold": 0.5}
    batches = capture_batches(trainer)
    trainer.train()
    assert len(batches[0]["advantages"]) == 6  # 3 groups x k=2


def test_filter_from_configuration_and_argument(tmp_path):
    # The same filter twice is fine; the argument's object is the one used.
    same = load_filter("reward", threshold=0.5)
    trainer = make(tmp_path, same, group_filter="reward", group_filter_kwargs={"threshold": 0.5})
    assert trainer.group_filter_func is same
    # A string argument naming the configured filter (no parameters) is the same filter too.
    assert make(tmp_path, "length", group_filter="length").group_filter_func.name == "length"
    with pytest.raises(ValueError, match=r"two different group filters: group_filter_func=LengthFilter\(.*'reward'"):
        make(tmp_path, "length", group_filter="reward")
    with pytest.raises(ValueError, match=r"two different group filters"):
        make(
            tmp_path,
            load_filter("reward", threshold=0.2),
            group_filter="reward",
            group_filter_kwargs={"threshold": 0.5},
        )
    with pytest.raises(ValueError, match=r"two different group filters"):
        make(tmp_path, lambda group_completions, group_rewards: group_rewards, group_filter="reward")


def test_bad_filter_configuration(tmp_path):
    with pytest.raises(ValueError, match="group_filter_kwargs is set but group_filter is not"):
        tiny_args(str(tmp_path), group_filter_kwargs={"threshold": 0.5})
    with pytest.raises(ValueError, match=r"group_filter='length' needs num_remains_in_group"):
        tiny_args(str(tmp_path), group_filter="length", num_remains_in_group=None)
    with pytest.raises(ValueError, match="group_filter_kwargs must be a JSON object"):
        tiny_args(str(tmp_path), group_filter="reward", group_filter_kwargs="{threshold: 0.5")


def test_command_line_and_yaml(tmp_path):
    from trl import TrlParser

    parser = TrlParser((GFPOConfig,))
    (config,) = parser.parse_args_and_config(
        args=[
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "--bf16",
            "false",
            "--num_generations",
            "8",
            "--group_filter",
            "length",
            "--num_remains_in_group",
            "4",
            "--group_filter_kwargs",
            '{"tokenizer": null}',
        ],
    )
    assert (config.group_filter, config.num_remains_in_group, config.num_generations) == ("length", 4, 8)
    assert config.group_filter_kwargs == {"tokenizer": None}

    yaml = tmp_path / "gfpo.yaml"
    yaml.write_text(
        f"output_dir: {tmp_path}\nuse_cpu: true\nbf16: false\nnum_generations: 8\ngroup_filter: reward\n"
        "group_filter_kwargs:\n  threshold: 0.5\nnum_remains_in_group: 3\nadaptive_k: [8, 8, 6, 4]\n"
    )
    (config,) = parser.parse_args_and_config(args=["--config", str(yaml), "--num_remains_in_group", "5"])
    assert config.group_filter == "reward" and config.group_filter_kwargs == {"threshold": 0.5}
    assert config.num_remains_in_group == 5 and config.adaptive_k == [8, 8, 6, 4]  # the command line wins


# ---------------------------------------------------------------------- normalize_then_sum
def test_normalize_then_sum_over_the_kept_set(tmp_path):
    recorder = Recorder()

    def long_reward(completions, **kwargs):  # a second objective on another scale: 10 x characters
        return [10.0 * len(c) for c in completions]

    check = CheckingFilter(recorder, group_size=4)
    trainer = make(
        tmp_path,
        check,
        reward_funcs=[recorder, long_reward],
        multi_objective_aggregation="normalize_then_sum",
        reward_weights=[1.0, 0.5],
    )
    batches = capture_batches(trainer)
    trainer.train()
    call, batch = check.calls[0], batches[0]
    groups, lengths = call["group_completions"], np.asarray(call["completion_lengths"]).tolist()
    # The filter sees the weighted sum of the raw rewards, as with sum_then_normalize.
    assert call["group_rewards"] == [[reward_of(c) + 5.0 * len(c) for c in g] for g in groups]

    # By hand: per function, standardise over each group's kept set (population std), weighted sum, then standardise
    # the sums over all kept completions of the batch.
    def standardise(values):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [(v - mean) / (std + 1e-4) for v in values]

    sums = {}
    for i, g in enumerate(groups):
        kept = sorted(range(4), key=lambda j: (lengths[i][j], j))[:3]
        a = standardise([reward_of(g[j]) for j in kept])
        b = standardise([10.0 * len(g[j]) for j in kept])
        for j, x, y in zip(kept, a, b):
            sums[(i, j)] = x + 0.5 * y
    final = dict(zip(sums, standardise(list(sums.values()))))
    expected = sorted((groups[i][j], round(v, 4)) for (i, j), v in final.items())
    got = sorted(zip(decode_rows(batch, trainer.processing_class), np.round(batch["advantages"].tolist(), 4).tolist()))
    assert got == expected
