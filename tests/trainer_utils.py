"""Helpers shared by the trainer tests and the two-process worker (tiny models, no downloads)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from gfpo_filters.toy import build_dataset, build_model, build_tokenizer

torch.set_num_threads(1)


class Recorder:
    """A reward function that remembers every (prompt, completion) row, in batch order.

    Reward = (number of characters mod 5) / 4, so rewards vary and are easy to recompute.
    """

    __name__ = "recorder"

    def __init__(self, constant_below: str = "") -> None:
        self.rows: list[tuple[str, str]] = []
        self.constant_below = constant_below  # prompts sorting before this get reward 1 for every completion

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        self.rows = list(zip(prompts, completions))
        return [1.0 if p < self.constant_below else reward_of(c) for p, c in zip(prompts, completions)]


def reward_of(text: str) -> float:
    return (len(text) % 5) / 4


class CheckingFilter:
    """A group filter that asserts it received whole groups of one prompt, then keeps the shortest."""

    def __init__(self, recorder: Recorder, group_size: int) -> None:
        self.recorder, self.g = recorder, group_size
        self.calls: list[dict[str, Any]] = []

    def __call__(self, group_completions, group_rewards, **kwargs):
        self.calls.append({"group_completions": group_completions, "group_rewards": group_rewards, **kwargs})
        rows = self.recorder.rows
        for i, group in enumerate(group_completions):
            expected = rows[i * self.g : (i + 1) * self.g]
            prompts = {p for p, _ in expected}
            assert len(prompts) == 1, f"rows {i * self.g}..{(i + 1) * self.g - 1} hold several prompts {prompts}"
            assert list(group) == [c for _, c in expected], (
                f"group {i} received completions of other prompts: {list(group)} != {[c for _, c in expected]}"
            )
        lengths = kwargs.get("completion_lengths")
        if lengths is None:
            lengths = [[len(c) for c in group] for group in group_completions]
        return [[-float(x) for x in row] for row in lengths]


def expected_selection(lengths: list[list[int]], rewards: list[list[float]], k: int):
    """By hand: keep the k shortest (ties: earlier first); population-std advantages over them."""
    kept, advantages = [], []
    for row_len, row_r in zip(lengths, rewards):
        order = sorted(range(len(row_len)), key=lambda j: (row_len[j], j))[:k]
        mean = sum(row_r[j] for j in order) / k
        std = math.sqrt(sum((row_r[j] - mean) ** 2 for j in order) / k)
        kept.append(sorted(order))
        advantages.append([(row_r[j] - mean) / (std + 1e-4) if j in order else 0.0 for j in range(len(row_r))])
    return kept, advantages


def tiny_args(output_dir: str, **overrides: Any):
    from gfpo_filters.trainer import GFPOConfig

    config = dict(
        output_dir=output_dir,
        per_device_train_batch_size=12,
        num_generations=4,
        num_remains_in_group=3,
        max_completion_length=10,
        learning_rate=1e-3,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        beta=0.0,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        bf16=False,
    )
    config.update(overrides)
    return GFPOConfig(**config)


def tiny_parts():
    return {
        "model": build_model(0, hidden=16, layers=1),
        "processing_class": build_tokenizer(),
        "train_dataset": build_dataset(24),
    }


def recorded_step(output_dir: str, trainer_class: Any = None, **args: Any):
    """One GFPO training run (the ``length`` filter, :class:`Recorder` rewards, the tiny parts, ``tiny_args``
    with ``args``) whose micro-batches, losses and gradients are recorded: ``(trainer, StepRecorder, batches)``."""
    from gfpo_filters.trainer import GFPOTrainer

    parts = tiny_parts()
    trainer = (trainer_class or GFPOTrainer)(
        model=parts["model"],
        reward_funcs=[Recorder()],
        args=tiny_args(output_dir, **args),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
        group_filter_func="length",
    )
    step = StepRecorder(trainer)
    batches = capture_batches(trainer)
    trainer.train()
    return trainer, step, batches


def capture_batches(trainer) -> list[dict[str, Any]]:
    """Record every batch GFPOTrainer hands to the loss (the output of _generate_and_score_completions)."""
    batches: list[dict[str, Any]] = []
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        out = original(inputs)
        batches.append(out)
        return out

    trainer._generate_and_score_completions = wrapped
    return batches


def decode_rows(batch, tokenizer) -> list[str]:
    """Texts of the rows of a batch, as the reward functions saw them."""
    texts = []
    for ids, mask in zip(batch["completion_ids"], batch["completion_mask"]):
        texts.append(tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True))
    return texts


# ---------------------------------------------------------------------- loss and gradient of one step
#: Every loss type TRL 1.7.1 and 1.16 offer, with the settings it requires.
LOSS_TYPES = {
    "grpo": {},
    "bnpo": {},
    "dr_grpo": {},
    "dapo": {},
    "cispo": {},
    "sapo": {},
    "luspo": {"importance_sampling_level": "sequence"},
    "vespo": {},
}
#: Loss types that TRL normalises by the tokens of each micro-batch (so the step depends on how rows are split).
PER_MICRO_BATCH_LOSSES = ("bnpo",)


class StepRecorder:
    """Records what one training step computed: each micro-batch and its loss, and the gradient the optimizer sees.

    ``off_policy``: give the batch ``old_per_token_logps`` of a uniform policy, so that importance ratios differ from
    1 and the loss is not 0 (on-policy, GRPO's loss is minus the mean advantage: 0 for advantages centred per group).
    """

    def __init__(self, trainer, off_policy: bool = True) -> None:
        from transformers import TrainerCallback

        self.micro_batches: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.grads: dict[str, torch.Tensor] = {}
        original = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            loss = original(model, inputs, *args, **kwargs)
            if model.training:
                self.micro_batches.append(
                    {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
                )
                self.losses.append(float(loss.detach()))
            return loss

        trainer.compute_loss = compute_loss
        recorder = self
        if off_policy:
            generate = trainer._generate_and_score_completions
            uniform = -math.log(len(trainer.processing_class))

            def off_policy_batch(inputs):
                out = generate(inputs)
                out["old_per_token_logps"] = torch.full(out["completion_ids"].shape, uniform)
                return out

            trainer._generate_and_score_completions = off_policy_batch

        class Grads(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if not recorder.grads:
                    recorder.grads = {
                        n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
                    }

        trainer.add_callback(Grads())


def real_rows(batch: dict[str, Any]) -> dict[str, Any]:
    """The rows of a batch that are not padding (padding rows have an empty completion mask)."""
    keep = batch["completion_mask"].sum(dim=1) > 0
    n = keep.shape[0]
    return {k: v[keep] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n else v for k, v in batch.items()}


def concat_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of several batches in one: prompts padded on the left, completions on the right (mask 0), as TRL pads."""
    prompt_width = max(b["prompt_ids"].shape[1] for b in batches)
    width = max(b["completion_ids"].shape[1] for b in batches)
    out: dict[str, Any] = {}
    for key, value in batches[0].items():
        if not torch.is_tensor(value) or value.ndim == 0:
            out[key] = value
            continue
        parts = []
        for b in batches:
            v = b[key]
            if key.startswith("prompt_"):
                v = torch.nn.functional.pad(v, (prompt_width - v.shape[1], 0))
            elif v.ndim == 2:
                v = torch.nn.functional.pad(v, (0, width - v.shape[1]), value=1 if key == "tool_mask" else 0)
            parts.append(v)
        out[key] = torch.cat(parts)
    return out


def reference_step(loss_type: str, micro_batches: list[list[dict[str, Any]]], output_dir: str, **overrides: Any):
    """TRL's own GRPOTrainer loss and gradient on the kept rows, with no padding row anywhere.

    ``micro_batches[r]`` are the micro-batches process r trained in one step. For every loss type but bnpo the
    reference is one batch of all real rows (GRPO's loss does not depend on how rows are split into micro-batches).
    bnpo normalises each micro-batch by its own tokens by design, so its reference keeps the same micro-batches,
    each without its padding rows, averaged as gradient accumulation and DDP average them.
    """
    from trl import GRPOTrainer

    parts = tiny_parts()
    trainer = GRPOTrainer(  # a GFPOConfig is a GRPOConfig; GRPOTrainer ignores the GFPO fields
        model=parts["model"],
        reward_funcs=[Recorder()],
        args=tiny_args(output_dir, loss_type=loss_type, **{**LOSS_TYPES[loss_type], **overrides}),
        train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
    )
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    if loss_type in PER_MICRO_BATCH_LOSSES:
        batches = [real_rows(b) for rank in micro_batches for b in rank]
        weight = 1.0 / len(batches)
    else:
        batches = [concat_rows([real_rows(b) for rank in micro_batches for b in rank])]
        weight = 1.0
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, batch) * weight
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads


# ---------------------------------------------------------------------- chat, tools, environments
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>",
                 "</tool_response>", "<think>", "</think>"]  # fmt: skip


def build_chat_tokenizer():
    """A character-level tokenizer of printable ASCII with Qwen3's special tokens and TRL's Qwen3 chat template.

    TRL recognises the template, so tool calls are parsed as for Qwen3; nothing is downloaded.
    """
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_chat_template

    chars = sorted(set(string.printable))
    vocab = {t: i for i, t in enumerate(CHAT_SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>", padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_SPECIALS[1:]})
    tokenizer.chat_template = qwen3_chat_template
    return tokenizer


def build_chat_model(tokenizer, seed: int = 0, hidden: int = 16):
    """A tiny Llama over ``tokenizer``'s vocabulary, built from a config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tool_call(name: str, **arguments: Any) -> str:
    import json

    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call><|im_end|>'


class ScriptedGenerate:
    """Stands in for ``model.generate``: the policy answers the first turn of row ``i`` of a batch with
    ``first_turns[i % len(first_turns)]`` and every later turn (after a tool response) with ``later``.

    TRL's own tool tests script the policy the same way; the rest (parsing tool calls, running the tools,
    tool masks, rewards, the loss) is TRL's real code.
    """

    def __init__(self, tokenizer, first_turns: list[str], later: str = "Done!<|im_end|>") -> None:
        self.tokenizer, self.first_turns, self.later = tokenizer, first_turns, later
        self.calls = 0

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        self.calls += 1
        rows = []
        for i, ids in enumerate(input_ids):
            prompt = self.tokenizer.decode(ids, skip_special_tokens=False)
            text = self.later if "<tool_response>" in prompt else self.first_turns[i % len(self.first_turns)]
            rows.append(self.tokenizer.encode(text, add_special_tokens=False))
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        completions = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=input_ids.device)
        return torch.cat([input_ids, completions], dim=1)


# ---------------------------------------------------------------------- vision-language
def build_tiny_vlm(seed: int = 0):
    """A tiny LLaVA (CLIP vision tower + Llama) and its processor, built from configs: nothing is downloaded.

    Images are 28 x 28 (four 14 x 14 patches); TRL's LLaVA chat template renders the image placeholder.
    """
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from trl.chat_template_utils import llava_next_chat_template

    tokenizer = build_chat_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [*CHAT_SPECIALS[1:], "<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=llava_next_chat_template,
    )
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    vision = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16)  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=processor.image_token_id, vision_feature_layer=-1
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def image_dataset(n: int = 16):
    """Conversational prompts, each with its own one-colour 28 x 28 image."""
    from datasets import Dataset
    from PIL import Image

    colours = [(37 * i % 256, 91 * i % 256, 53 * i % 256) for i in range(n)]
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"colour {i}?"}] for i in range(n)],
            "image": [Image.new("RGB", (28, 28), c) for c in colours],
        }
    )


def run_two_processes(tmp_path: Path, *worker_args: str, worker: Path | None = None) -> None:
    """Run ``worker`` (default ``tests/distributed_worker.py``) on two processes (torchrun, gloo, one thread each) and
    fail with its output.

    The rendezvous port is a free one, so that two test sessions on one machine do not collide.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = worker or Path(__file__).with_name("distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    proc = subprocess.run(
        [*cmd, str(worker), str(tmp_path), *worker_args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
