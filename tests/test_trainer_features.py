"""GFPOTrainer for every GRPO run TRL supports (issue 9): constructor, configuration, multi-objective rewards,
tools, environments, rollout functions, PEFT and vision-language batches, each through real training steps."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402

from gfpo_filters import load_filter  # noqa: E402
from gfpo_filters.integrations.trl import micro_batch_plan  # noqa: E402
from gfpo_filters.trainer import GFPOConfig, GFPOTrainer  # noqa: E402
from tests.trainer_utils import (  # noqa: E402
    CheckingFilter,
    Recorder,
    capture_batches,
    decode_rows,
    reward_of,
    run_two_processes,
    tiny_args,
    tiny_parts,
    tool_call,
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


def test_filter_in_trl_171_gfpo_position_is_refused(tmp_path):
    parts = tiny_parts()
    args = (parts["model"], [Recorder()], tiny_args(str(tmp_path)), parts["train_dataset"], None)
    with pytest.raises(TypeError, match=r"positional argument 8 is GRPOTrainer's callbacks, got 'length'"):
        GFPOTrainer(*args, parts["processing_class"], None, "length")


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
def make(tmp_path, group_filter_func=None, reward_funcs=None, trainer_kwargs=None, **overrides):
    parts = tiny_parts()
    return GFPOTrainer(
        **parts,
        reward_funcs=reward_funcs or [Recorder()],
        args=tiny_args(str(tmp_path), **overrides),
        group_filter_func=group_filter_func,
        **(trainer_kwargs or {}),
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
    # transformers' HfArgumentParser (which TrlParser extends) reads the same command line.
    from transformers import HfArgumentParser

    argv = ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false", "--group_filter", "reward",
            "--group_filter_kwargs", '{"threshold": 0.5}', "--num_remains_in_group", "4",
            "--num_generations", "8"]  # fmt: skip
    (config,) = HfArgumentParser(GFPOConfig).parse_args_into_dataclasses(args=argv)
    assert config.group_filter == "reward" and config.group_filter_kwargs == {"threshold": 0.5}

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


# ---------------------------------------------------------------------- tools and environments
class Spy:
    """A group filter that records what it was given and delegates to a registered filter."""

    def __init__(self, name: str, **params) -> None:
        self.inner, self.calls = load_filter(name, **params), []

    def __call__(self, group_completions, group_rewards, **kwargs):
        self.calls.append({"group_completions": group_completions, "group_rewards": group_rewards, **kwargs})
        return self.inner(group_completions=group_completions, group_rewards=group_rewards, **kwargs)


def unfiltered_batches(trainer) -> list[dict]:
    """The generation batches GRPOTrainer produced, before GFPO dropped rows."""
    seen, original = [], trainer._filter_batch

    def wrapped(output, *args):
        seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in output.items()})
        return original(output, *args)

    trainer._filter_batch = wrapped
    return seen


def assert_rows_travel_whole(before: dict, after: dict) -> None:
    """Each row of the filtered batch is a generated row (same prompt, same completion), with its masks unchanged."""
    width = after["completion_ids"].shape[1]

    def prompt(batch, i):
        return batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]

    real = after["completion_mask"].sum(dim=1) > 0
    for i in torch.nonzero(real).flatten().tolist():
        match = [
            j
            for j in range(len(before["completion_ids"]))
            if torch.equal(prompt(before, j), prompt(after, i))
            and torch.equal(before["completion_ids"][j, :width], after["completion_ids"][i])
            and before["completion_mask"][j, width:].sum() == 0
        ]
        assert match, f"kept row {i} is not a generated row"
        for key in ("completion_mask", "tool_mask"):
            if key in before:
                assert torch.equal(before[key][match[0], :width], after[key][i]), key


def multiply(a: int, b: int) -> int:
    """
    Multiply two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


def chat_dataset(n: int = 16):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"what is {i} times 3?"}] for i in range(n)]})


def used_a_tool(completions, **kwargs) -> list[float]:
    """1 when the conversation holds a tool response that is a number (the call succeeded), else 0."""
    return [1.0 if any(m["role"] == "tool" and str(m["content"]).isdigit() for m in c) else 0.0 for c in completions]


def chat_trainer(tmp_path, spy, scripted_turns, k=2, **kwargs):
    from tests.trainer_utils import ScriptedGenerate, build_chat_model, build_chat_tokenizer

    tokenizer = build_chat_tokenizer()
    model = build_chat_model(tokenizer)
    args = tiny_args(
        str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        num_remains_in_group=k,
        max_completion_length=128,
        **kwargs.pop("config", {}),
    )
    trainer = GFPOTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=chat_dataset(),
        group_filter_func=spy,
        **kwargs,
    )
    trainer.model.generate = ScriptedGenerate(tokenizer, scripted_turns)
    return trainer


def test_tools_multi_turn(tmp_path):
    if "tools" not in inspect.signature(GRPOTrainer.__init__).parameters:
        pytest.skip("this TRL has no tool calling")
    spy = Spy("reward")
    turns = [tool_call("multiply", a=3, b=4), tool_call("multiply", a=3, c=4), "I do not know.<|im_end|>",
             tool_call("multiply", a=2, b=5)]  # fmt: skip
    trainer = chat_trainer(tmp_path, spy, turns, k=3, reward_funcs=[used_a_tool], tools=[multiply])
    before, after = unfiltered_batches(trainer), capture_batches(trainer)
    trainer.train()

    call = spy.calls[0]
    # Whole groups of one prompt; rewards are TRL's: the two successful calls earn 1.
    assert call["group_rewards"] == [[1.0, 0.0, 0.0, 1.0]] * 2
    for group in call["group_completions"]:
        assert [m["role"] for m in group[0]] == ["assistant", "tool", "assistant"]  # multi-turn: one conversation
        assert [m["content"] for m in group[0] if m["role"] == "tool"] == ["12"]
    # The kept rows (the two successful calls and the failed one of each group) carry their tool masks: tool
    # tokens are not trained.
    batch = after[0]
    assert len(batch["advantages"]) == 6 and "tool_mask" in batch
    assert (batch["tool_mask"] * batch["completion_mask"]).sum() < batch["completion_mask"].sum()
    assert int(batch["num_items_in_batch"]) == int((batch["completion_mask"] * batch["tool_mask"]).sum())
    assert_rows_travel_whole(before[0], batch)
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] == pytest.approx(3 / 4)


def spell(word: str) -> str:
    """
    Spell a word out, ten times.

    Args:
        word: The word to spell.

    Returns:
        The word's letters, ten times over.
    """
    return " ".join(word) * 10


def test_lengths_count_only_the_tokens_the_policy_wrote(tmp_path):
    """A completion's length is its loss mask (completion mask x tool mask): tool output is not the policy's."""
    if "tools" not in inspect.signature(GRPOTrainer.__init__).parameters:
        pytest.skip("this TRL has no tool calling")
    from tests.trainer_utils import ScriptedGenerate, build_chat_model, build_chat_tokenizer

    # Row 0 calls a tool whose answer is long; rows 1 and 2 write long answers themselves; row 3 a short one.
    turns = [tool_call("spell", word="abcdefgh"), "x" * 90 + "<|im_end|>", "y" * 100 + "<|im_end|>", "Short.<|im_end|>"]
    tokenizer = build_chat_tokenizer()
    spy = Spy("length")
    trainer = GFPOTrainer(
        model=build_chat_model(tokenizer), processing_class=tokenizer, train_dataset=chat_dataset(),
        args=tiny_args(str(tmp_path), per_device_train_batch_size=8, num_generations=4, num_remains_in_group=2,
                       max_completion_length=512),
        reward_funcs=[lambda completions, **kw: [reward_of(c[-1]["content"]) for c in completions]], tools=[spell],
        group_filter_func=spy,
    )  # fmt: skip
    trainer.model.generate = ScriptedGenerate(tokenizer, turns)
    before, after = unfiltered_batches(trainer), capture_batches(trainer)
    trainer.train()

    batch = before[0]
    policy = (batch["completion_mask"] * batch["tool_mask"]).sum(dim=1).reshape(2, 4)
    written = batch["completion_mask"].sum(dim=1).reshape(2, 4)
    assert (written[:, 0] > written[:, 2]).all() and (policy[:, 0] < policy[:, 1]).all()  # the case at stake
    np.testing.assert_array_equal(np.asarray(spy.calls[0]["completion_lengths"]), policy.numpy())
    # The length filter keeps the tool call (short in policy tokens) and the short answer, not the long answers.
    kept = after[0]["completion_mask"].sum(dim=1).tolist()
    assert sorted(kept) == sorted(written[:, [0, 3]].reshape(-1).tolist())
    logged = trainer.state.log_history[0]
    assert logged["gfpo/all_length_mean"] == pytest.approx(float(policy.float().mean()))
    assert logged["gfpo/kept_length_mean"] == pytest.approx(float(policy[:, [0, 3]].float().mean()))


class CounterEnvironment:
    """An environment with a tool, as in TRL's tests."""

    def reset(self, **kwargs):
        self._counter = 0

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self._counter += step
        return self._counter


class RewardingCounter(CounterEnvironment):
    """The same environment owning its reward (the final counter): TRL >= 1.8 makes get_reward a reward source."""

    def get_reward(self) -> float:
        return float(self._counter)


def test_environment_owned_rewards_are_what_the_filter_sees(tmp_path, monkeypatch):
    if "environment_factory" not in inspect.signature(GRPOTrainer.__init__).parameters:
        pytest.skip("this TRL has no environments")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    spy = Spy("reward")
    turns = [tool_call("increment", step=1), tool_call("decrement", step=2), "No.<|im_end|>",
             tool_call("increment", step=3)]  # fmt: skip
    if "get_reward" in inspect.getsource(GRPOTrainer.__init__):
        extra = {"environment_factory": RewardingCounter}
    else:  # TRL 1.7.1: the reward is read from the environments by a reward function
        extra = {
            "environment_factory": CounterEnvironment,
            "reward_funcs": [lambda environments, **kw: [float(e._counter) for e in environments]],
        }
    trainer = chat_trainer(tmp_path, spy, turns, **extra)
    before, after = unfiltered_batches(trainer), capture_batches(trainer)
    trainer.train()
    # The environments' counters are the rewards: 1, 0 (unknown tool), 0 (no call), 3 in each group.
    assert spy.calls[0]["group_rewards"] == [[1.0, 0.0, 0.0, 3.0]] * 2
    assert [e._counter for e in trainer.environments] == [1, 0, 0, 3] * 2
    # The reward filter keeps the two highest: rows 0 and 3 of each group.
    batch = after[0]
    assert len(batch["advantages"]) == 4
    assert_rows_travel_whole(before[0], batch)
    assert sorted(np.round(batch["advantages"].tolist(), 3).tolist()) == pytest.approx([-1.0, -1.0, 1.0, 1.0], abs=1e-3)


# ---------------------------------------------------------------------- rollout_func
def test_rollout_func_output_is_what_the_filter_sees(tmp_path, monkeypatch):
    if "rollout_func" not in inspect.signature(GRPOTrainer.__init__).parameters:
        pytest.skip("this TRL has no rollout_func")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    produced = []

    def rollout_func(prompts, trainer):
        """Custom generation: row i answers with the letters of its prompt, (i % 4) + 1 times; an extra field."""
        tok = trainer.processing_class
        texts = [p * ((i % 4) + 1) for i, p in enumerate(prompts)]
        produced.append(texts)
        completion_ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
        return {
            "prompt_ids": [tok.encode(p, add_special_tokens=False) for p in prompts],
            "completion_ids": completion_ids,
            "logprobs": [[-0.5 - 0.01 * j for j in range(len(ids))] for ids in completion_ids],
            "repeats": [(i % 4) + 1 for i in range(len(prompts))],
        }

    def repeats_reward(completions, repeats, **kwargs):  # reads the rollout's extra field
        return [float(r % 3) for r in repeats]

    spy = Spy("length")
    trainer = make(
        tmp_path,
        spy,
        reward_funcs=[repeats_reward],
        trainer_kwargs={"rollout_func": rollout_func},
        num_remains_in_group=2,
    )
    batches = capture_batches(trainer)
    trainer.train()
    call, batch = spy.calls[0], batches[0]
    texts = produced[0]
    assert call["group_completions"] == [texts[i : i + 4] for i in range(0, 12, 4)]
    assert call["group_rewards"] == [[1.0, 2.0, 0.0, 1.0]] * 3
    # The two shortest of each group are kept (1 and 2 repeats), with the rollout's own log-probs.
    kept = decode_rows(batch, trainer.processing_class)
    assert sorted(kept) == sorted(t for i, t in enumerate(texts) if i % 4 < 2)
    for row, text in enumerate(kept):
        n = int(batch["completion_mask"][row].sum())
        assert n == len(text) + 1
        expected = torch.tensor([-0.5 - 0.01 * j for j in range(n)])
        torch.testing.assert_close(batch["sampling_per_token_logps"][row, :n], expected)


# ---------------------------------------------------------------------- PEFT and quantization_config
def test_peft_adapter_trains_on_the_kept_rows(tmp_path):
    peft = pytest.importorskip("peft")
    trainer = make(
        tmp_path,
        "length",
        trainer_kwargs={"peft_config": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])},
        num_remains_in_group=2,
        learning_rate=0.1,
    )
    assert isinstance(trainer.model, peft.PeftModel)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batches = capture_batches(trainer)
    trainer.train()
    assert len(batches[0]["advantages"]) == 6  # 3 groups x k=2
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)  # only the adapter learns


def test_quantization_config_reaches_grpo_trainer(tmp_path, caplog):
    if "quantization_config" not in inspect.signature(GRPOTrainer.__init__).parameters:
        pytest.skip("this TRL has no quantization_config argument")
    # With a model object, GRPOTrainer itself says that it ignores the quantization config: it got it.
    with caplog.at_level("WARNING"):
        make(tmp_path, "length", trainer_kwargs={"quantization_config": object()})
    assert "`quantization_config` will be ignored" in caplog.text


# ---------------------------------------------------------------------- vision-language batches
def test_vision_language_batches_keep_each_rows_image(tmp_path):
    import re

    import trl
    from packaging.version import Version

    if Version(trl.__version__) < Version("1.8"):
        pytest.skip("TRL 1.7.1's own GRPOTrainer fails on this tiny LLaVA (image features and tokens do not match)")
    from tests.trainer_utils import build_tiny_vlm, image_dataset

    model, processor = build_tiny_vlm()
    dataset = image_dataset()
    spy = Spy("length")

    def text_reward(completions, **kwargs):
        return [reward_of(c[0]["content"]) for c in completions]

    trainer = GFPOTrainer(
        model=model,
        reward_funcs=[text_reward],
        args=tiny_args(str(tmp_path), per_device_train_batch_size=8, num_remains_in_group=2, max_completion_length=8),
        train_dataset=dataset,
        processing_class=processor,
        group_filter_func=spy,
    )
    before, after = unfiltered_batches(trainer), capture_batches(trainer)
    trainer.train()
    batch = after[0]
    assert len(batch["advantages"]) == 4 and batch["num_images"] == [1, 1, 1, 1]
    assert batch["pixel_values"].shape[0] == 4  # one image per kept row (LLaVA: one pixel row per image)
    assert_rows_travel_whole(before[0], batch)
    # Each kept row carries the image of its own prompt.
    tok = processor.tokenizer
    for i in range(4):
        prompt = tok.decode(batch["prompt_ids"][i][batch["prompt_mask"][i].bool()])
        n = int(re.search(r"colour (\d+)\?", prompt).group(1))
        expected = processor.image_processor(images=[dataset[n]["image"]], return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(batch["pixel_values"][i], expected)
    assert trainer.state.log_history[0]["gfpo/kept_fraction"] == 0.5


# ---------------------------------------------------------------------- two processes
@pytest.mark.distributed
def test_tools_and_images_stay_with_their_rows_on_two_processes(tmp_path):
    import json

    from tests.distributed_worker import feature_runs

    run_two_processes(tmp_path, "features")
    for run in feature_runs():  # tools, and a tiny LLaVA on TRL >= 1.8
        ranks = [json.loads((tmp_path / f"{run}-rank{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["kept"] == ranks[1]["kept"] and ranks[1]["top"] is None  # process 0 decided for both
        generated = ranks[0]["generated"] + ranks[1]["generated"]  # global row order: process 0, then 1
        kept = [row for row, k in zip(generated, sum(ranks[0]["kept"], [])) if k]
        trained = ranks[0]["trained"] + ranks[1]["trained"]
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        # Every kept row is trained exactly once, with its own tool mask and image, on the process that generated
        # it: the filter's 3 x 3, nothing added. The middle group straddles both processes, so they keep
        # different counts (placeholders fill the difference in the micro-batches, not in these rows).
        assert sorted(map(key, trained)) == sorted(map(key, kept)) and len(kept) == 9
        top = np.array(ranks[0]["top"])
        assert (np.array(ranks[0]["kept"]) == top).all() and top.sum() == 9
        for r in range(2):
            own = {key(row) for row in ranks[r]["generated"]}
            assert all(key(row) in own for row in ranks[r]["trained"])
        flat = sum(ranks[0]["kept"], [])
        assert [r["batch_rows"] for r in ranks] == [sum(flat[:6]), sum(flat[6:])]
        if run == "tools":
            assert any(0 in r["tool_mask"] for r in trained)  # some kept rows hold tool responses
        else:
            assert len({key(r["pixels"]) for r in trained}) == 3  # three prompts, three images


# ---------------------------------------------------------------------- the example script
def test_example_script_with_yaml_and_command_line(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("train_gfpo", root / "examples" / "train_gfpo.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_gfpo", example)  # its dataclasses look their module up
    spec.loader.exec_module(example)
    config = str(root / "examples" / "train_gfpo.yaml")
    argv = ["--config", config, "--output_dir", str(tmp_path), "--max_steps", "1", "--per_device_train_batch_size",
            "16", "--group_filter", "length", "--num_remains_in_group", "4"]  # fmt: skip
    script_args, training_args, model_args = example.parse(argv)
    assert (training_args.group_filter, training_args.num_remains_in_group) == ("length", 4)  # the command line
    assert training_args.num_generations == 16 and script_args.reward_funcs == ["contains_target"]  # the YAML file
    trainer = example.main(script_args, training_args, model_args)
    assert trainer.group_filter_func.name == "length"
    logged = trainer.state.log_history[0]
    assert logged["gfpo/k_mean"] == 4 and logged["gfpo/kept_fraction"] == 0.25


class WordEnvironment:
    """An environment that owns the data: ``reset`` returns the prompt."""

    def reset(self, **kwargs):
        return "Spell a word."


def test_environment_owned_data(tmp_path, monkeypatch):
    if "environment owns the data" not in inspect.getsource(GRPOTrainer.__init__):
        pytest.skip("this TRL needs a train_dataset with environments")
    from tests.trainer_utils import ScriptedGenerate, build_chat_model, build_chat_tokenizer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    tokenizer = build_chat_tokenizer()
    spy = Spy("length")

    def answer_length(completions, **kwargs):
        return [float(len(c[-1]["content"])) for c in completions]

    trainer = GFPOTrainer(
        model=build_chat_model(tokenizer),
        reward_funcs=[answer_length],
        args=tiny_args(str(tmp_path), per_device_train_batch_size=8, num_remains_in_group=2, max_completion_length=16),
        processing_class=tokenizer,
        environment_factory=WordEnvironment,
        group_filter_func=spy,
    )  # no train_dataset: the environments supply the prompts
    trainer.model.generate = ScriptedGenerate(
        tokenizer, ["A.<|im_end|>", "Bb.<|im_end|>", "Ccc.<|im_end|>", "D.<|im_end|>"]
    )
    batches = capture_batches(trainer)
    trainer.train()
    call = spy.calls[0]
    # The filter sees the environments' prompts and TRL's rewards of the completions; the 2 shortest are kept.
    assert all("Spell a word." in str(p) for p in call["prompts"]) and len(call["prompts"]) == 2
    assert call["group_rewards"] == [[2.0, 3.0, 4.0, 2.0]] * 2
    assert sorted(decode_rows(batches[0], tokenizer)) == ["A.", "A.", "D.", "D."]


def test_qwen_vl_layout_images_and_token_types_follow_their_rows(tmp_path):
    """Qwen-VL's layout (pixel rows per image patch, image_grid_thw per image, several images per row, token types
    over prompt + completion), built by hand as TRL builds it, through the adapter's row selection."""
    trainer = make(tmp_path, "length")
    n, prompt_width, width = 4, 3, 5
    num_images = [1, 2, 1, 1]
    grids = [[1, 2, 2], [1, 2, 2], [1, 2, 4], [1, 4, 2], [1, 2, 2]]  # per image: 4, 4, 8, 8, 4 patches
    owner = [0, 1, 1, 2, 3]  # the row each image belongs to
    patches = [t * h * w for t, h, w in grids]
    pixel_values = torch.cat([torch.full((p, 3), float(10 * owner[i] + i)) for i, p in enumerate(patches)])
    lengths = [2, 5, 3, 1]  # completion tokens per row
    completion_mask = torch.tensor([[1] * m + [0] * (width - m) for m in lengths])
    output = {
        "prompt_ids": torch.arange(n * prompt_width).reshape(n, prompt_width),
        "prompt_mask": torch.ones(n, prompt_width, dtype=torch.long),
        "completion_ids": torch.arange(100, 100 + n * width).reshape(n, width),
        "completion_mask": completion_mask,
        "advantages": torch.zeros(n),
        "num_items_in_batch": completion_mask.sum(),
        "pixel_values": pixel_values,
        "image_grid_thw": torch.tensor(grids),
        "num_images": num_images,
        "mm_token_type_ids": torch.cat([torch.ones(n, prompt_width, dtype=torch.long), completion_mask * 0], dim=1),
    }
    rows = np.array([0, 2, 3])  # row 1 (two images, the longest) is dropped
    advantages = np.array([0.5, 0.0, -0.25, -0.25])
    batch, placeholder = trainer._keep_rows(output, rows, lengths, advantages)
    assert batch["num_images"] == [1, 1, 1]
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 4, 2], [1, 2, 2]]
    assert batch["pixel_values"][:, 0].tolist() == [0.0] * 4 + [23.0] * 8 + [34.0] * 4  # rows 0, 2, 3's patches
    assert batch["completion_ids"].shape == (3, 3)  # trimmed to the longest kept completion
    assert batch["mm_token_type_ids"].shape == (3, prompt_width + 3)
    assert batch["mm_token_type_ids"][:, :prompt_width].all() and not batch["mm_token_type_ids"][:, prompt_width:].any()
    assert batch["advantages"].tolist() == [0.5, -0.25, -0.25]
    # The placeholder is row 0 with its image, completion mask 0 and advantage 0. With 4 micro-batches for 3 kept
    # rows, it fills the last one, images and all, and that micro-batch's loss scale is 0.
    assert placeholder["num_images"] == [1] and placeholder["pixel_values"][:, 0].tolist() == [0.0] * 4
    assert not placeholder["completion_mask"].any() and placeholder["advantages"].tolist() == [0.0]
    trainer._plan = (micro_batch_plan([3], 4), placeholder)
    torch.manual_seed(0)
    micro = trainer._micro_batches(batch)
    assert [m["num_images"] for m in micro] == [[1]] * 4
    assert [bool(m["completion_mask"].any()) for m in micro] == [True, True, True, False]
    assert micro[3]["pixel_values"][:, 0].tolist() == [0.0] * 4 and micro[3]["gfpo_loss_scale"] == 0.0
    images = sorted(float(m["pixel_values"][0, 0]) for m in micro[:3])
    assert images == [0.0, 23.0, 34.0]  # each kept row with its own image

    output["rope_deltas"] = torch.zeros(n + 1)  # a field of unknown layout that is not one entry per row
    with pytest.raises(NotImplementedError, match=r"batch field 'rope_deltas' belongs to: it has 5 entries for 4"):
        trainer._keep_rows(output, rows, lengths, advantages)
