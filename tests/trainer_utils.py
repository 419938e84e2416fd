"""Helpers shared by the trainer tests and the two-process worker (tiny models, no downloads)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfpo_filters.experiments.toy import build_dataset, build_model, build_tokenizer

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


def run_two_processes(tmp_path: Path, *worker_args: str, worker: Path | None = None, timeout: int = 600) -> None:
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
        [*cmd, str(worker), str(tmp_path), *worker_args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


# ---------------------------------------------------------------------- exactness: GFPO against GRPO on the kept rows
#: The base case of the exactness matrix: 3 groups of 4 per process, k = 2 (6 kept rows per process: two equal
#: micro-batches, the shape GRPOTrainer itself can train), one SGD step, no clipping.
EXACT_BASE = dict(
    per_device_train_batch_size=6,
    steps_per_generation=2,
    gradient_accumulation_steps=2,
    num_generations=4,
    num_remains_in_group=2,
    max_completion_length=64,  # completions end at different lengths: batches of different widths
    max_grad_norm=0.0,
    optim="sgd",
    learning_rate=0.5,
    max_steps=1,
)
#: Features of the matrix: settings on top of EXACT_BASE ("model": "moe" builds a tiny Mixtral).
EXACT_FEATURES = {
    "base": {},
    "entropy": {"entropy_coef": 0.5},
    "moe": {"model": "moe", "router_aux_loss_coef": 0.5},
    "spg>gas": {"steps_per_generation": 4, "per_device_train_batch_size": 2, "max_steps": 2},  # 4 rows, 1 each
    "iterations": {"num_iterations": 2, "max_steps": 2},
    "kl": {"beta": 0.1},  # reference log-probs stay with their rows
}

#: Batch shapes whose kept rows do not fill equal micro-batches (issue 21): GRPOTrainer cannot train them in the
#: same shape, so they are checked against ``step_reference`` (one micro-batch of all kept rows per optimizer step),
#: which is the GFPO update for every loss whose normaliser is a row mean or a generation-batch token count.
SHAPES = {
    # 1 group of 4 per generation batch, k = 2: 2 kept rows for 4 micro-batches (2 hold placeholders).
    "b1-ga4": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 4, "steps_per_generation": 4,
               "max_steps": 2},
    # 1 group of 8, k = 3: 3 kept rows for 4 micro-batches.
    "b2-ga4": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "steps_per_generation": 4,
               "num_generations": 8, "num_remains_in_group": 3, "max_steps": 2},
    # 2 groups of 4, k = 2 during warm-up, then 3, 3, 2 or 2 by difficulty: 4 to 6 kept rows for 4 micro-batches.
    "adaptive": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "steps_per_generation": 4,
                 "adaptive_k": [3, 3, 2, 2], "adaptive_warmup_steps": 1, "max_steps": 3},
    # 3 groups of 4, k = 3: 9 kept rows for 2 micro-batches (5 + 4).
    "k3-of-4": {"num_remains_in_group": 3},
    # Two processes only: 10 rows each, so the group of rows 8 to 11 straddles both (its kept rows stay where they
    # were generated) and the processes keep different counts (placeholders fill the difference).
    "straddle": {"per_device_train_batch_size": 5},
}  # fmt: skip
#: Shapes that need two processes.
TWO_PROCESS_SHAPES = ("straddle",)
#: The shape cases run on two processes (each a DDP run, compared with ``step_reference``).
TWO_PROCESS_SHAPE_CASES = [("grpo", "straddle"), ("dapo", "straddle"), ("vespo", "b1-ga4"), ("grpo", "adaptive")]
#: The losses ``step_reference`` is the update of in every shape: row means (grpo, dr_grpo) and token sums.
SHAPE_LOSSES = ("grpo", "dr_grpo", "dapo", "vespo")


#: The two-process cases (each costs a DDP run and its reference, about a minute on a loaded 2-core machine): every
#: loss type on the base case (rows move between processes, DDP averages, token counts are per process), and every
#: feature with vespo (the loss that reads importance ratios past a row's end), a row-mean, a per-micro-batch and a
#: token-sum loss.
TWO_PROCESS_CASES = [(loss, "base") for loss in LOSS_TYPES] + [
    ("vespo", "entropy"), ("vespo", "moe"), ("vespo", "spg>gas"), ("vespo", "iterations"),
    ("vespo", "kl"), ("grpo", "entropy"), ("bnpo", "moe"), ("dapo", "spg>gas"),
]  # fmt: skip


def exact_features() -> dict[str, dict[str, Any]]:
    """The features the installed TRL has (TRL 1.7.1 has no entropy bonus)."""
    from gfpo_filters.trainer import GFPOConfig

    fields = GFPOConfig.__dataclass_fields__
    return {name: f for name, f in EXACT_FEATURES.items() if all(k in fields or k == "model" for k in f)}


def build_moe_model(seed: int = 0):
    """A tiny Mixtral (4 experts, 2 per token) over the toy vocabulary: a MoE whose router loss TRL adds."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=28, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


def varied_prompts(n: int = 24):
    """The toy prompts cut to 1 to 4 letters, so that prompts are padded on the left (and rows that move between
    processes are re-padded)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p[: 1 + i % 4] for i, p in enumerate(build_dataset(n)["prompt"])]})


def add_off_policy_fields(output: dict[str, Any], vocab_size: int) -> None:
    """Old log-probs of another policy and vLLM-style importance ratios, per token and deterministic, so that the
    loss is not 0 and every per-token field has to travel with its row. The ratio is 1 past a row's end, as TRL's
    ``exp(diff * mask)`` is; VESPO reads it even without vLLM."""
    ids = output["completion_ids"].float()
    pos = torch.arange(ids.shape[1], dtype=torch.float32)
    mask = output["completion_mask"] * output.get("tool_mask", 1)
    output["old_per_token_logps"] = -math.log(vocab_size) + 0.3 * torch.sin(ids + pos)
    output["importance_sampling_ratio"] = torch.exp(0.2 * torch.cos(ids - pos) * mask)


def _cpu(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in batch.items()}


def exact_trainer_class():
    """GFPOTrainer that records, per generation batch, TRL's batch before the filter (with off-policy fields), the
    decision (kept mask and advantages), the torch RNG state TRL's shuffle then draws from, and the batch trained."""
    from gfpo_filters.trainer import GFPOTrainer

    class ExactGFPO(GFPOTrainer):
        # The replay reference is TRL's batch of all rows as the filter saw it, so every log-prob pass runs there
        # (deferring them to the kept rows is checked against this in test_trainer_rows.py).
        defer_log_probs = False

        def _filter_batch(self, output, *rest):
            add_off_policy_fields(output, len(self.processing_class))
            self.exact["generated"].append(_cpu(output))
            out = super()._filter_batch(output, *rest)
            self.exact["trained"].append(_cpu(out))
            self.exact["rng"].append(torch.get_rng_state())
            return out

        def _log_selection(self, result, *rest):
            self.exact["decisions"].append((result.kept.copy(), np.asarray(result.advantages).copy()))
            super()._log_selection(result, *rest)

    return ExactGFPO


def replay_trainer_class():
    """TRL's own GRPOTrainer, except that its generation returns a recorded batch (and restores the RNG state the
    GFPO run's shuffle drew from): everything else, the shuffle, the micro-batches, the loss, gradient accumulation,
    DDP and the optimizer, is TRL's."""
    from trl import GRPOTrainer

    class Replay(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            batch, state = self.replay.pop(0)
            torch.set_rng_state(state)
            return {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    return Replay


#: Completion fields whose value past a row's end TRL sets itself, and that value ("pad" = the pad token id).
TRL_COMPLETION_PADDING = {"completion_ids": "pad", "completion_mask": 0, "tool_mask": 1,
                          "importance_sampling_ratio": 1.0, "sampling_per_token_logps": 0.0}  # fmt: skip
#: Completion fields that hold a model's output past a row's end in TRL's batch (masked everywhere in the loss).
MODEL_COMPLETION_FIELDS = ("old_per_token_logps", "ref_per_token_logps")


def trl_layout(rows: list[dict[str, torch.Tensor]], like: dict[str, Any], pad_id: int):
    """Rows (each field one row's tensor, as its own process's batch held it) stacked as TRL stacks a batch: prompts
    as their batch padded them on the left (to the widest such batch when rows of several are joined: pad id, mask
    0), completions on the right to the longest completion (TRL_COMPLETION_PADDING). ``like``: a batch whose other
    fields are copied.

    Also returns, per model-output field, the columns that TRL's layout leaves to a model (past the row's end in its
    source batch): any finite value there gives the same loss. The batch holds 0 there."""
    width = max(int(r["completion_mask"].sum()) for r in rows)
    prompt_width = max(r["prompt_ids"].shape[0] for r in rows)  # the batch's own prompt width: no re-padding
    batch, free = {}, {}
    for key, value in like.items():
        if not torch.is_tensor(value) or value.ndim == 0 or key == "advantages":
            batch[key] = value
            continue
        out = []
        for r in rows:
            row = r[key]
            if key.startswith("prompt_"):
                fill = pad_id if key == "prompt_ids" else 0
                row = row[row.shape[0] - prompt_width :] if row.shape[0] >= prompt_width else torch.nn.functional.pad(
                    row, (prompt_width - row.shape[0], 0), value=fill)  # fmt: skip
            elif row.ndim == 1:
                fill = TRL_COMPLETION_PADDING.get(key, 0.0)
                fill = pad_id if fill == "pad" else fill
                row = row[:width] if row.shape[0] >= width else torch.nn.functional.pad(
                    row, (0, width - row.shape[0]), value=fill)  # fmt: skip
            out.append(row)
        batch[key] = torch.stack(out)
        if key in MODEL_COMPLETION_FIELDS:
            src = torch.tensor([r["completion_ids"].shape[0] for r in rows])
            free[key] = torch.arange(width)[None, :] >= src[:, None]
            batch[key] = batch[key].masked_fill(free[key], 0.0)
    return batch, free


def _loss_tokens(row: dict[str, torch.Tensor]) -> int:
    mask = row["completion_mask"] * row["tool_mask"] if "tool_mask" in row else row["completion_mask"]
    return int(mask.sum())


def _rows(batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    n = batch["completion_ids"].shape[0]
    keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n]
    return [{k: batch[k][i] for k in keys} for i in range(n)]


def reference_batch(generated: list[dict[str, Any]], kept: np.ndarray, advantages: np.ndarray, rank: int, world: int,
                    pad_id: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:  # fmt: skip
    """The batch GRPOTrainer would hold on process ``rank`` had it generated exactly the kept rows, written from TRL's
    layout rules (not from the adapter): process r's own kept rows (``generated``: every process's batch before the
    filter) laid out by :func:`trl_layout`, the decided advantages, and ``num_items_in_batch`` = the loss tokens of
    all kept rows."""
    rows = [row for batch in generated for row in _rows(batch)]
    chosen = np.flatnonzero(kept.reshape(-1))
    n_local = len(rows) // world
    mine = chosen[(chosen >= rank * n_local) & (chosen < (rank + 1) * n_local)]
    batch, free = trl_layout([rows[j] for j in mine], generated[rank], pad_id)
    batch["advantages"] = torch.as_tensor(advantages.reshape(-1)[mine], dtype=generated[rank]["advantages"].dtype)
    tokens = sum(_loss_tokens(rows[j]) for j in chosen)
    batch["num_items_in_batch"] = torch.full_like(generated[rank]["num_items_in_batch"], tokens)
    return batch, free


def _train_recorded(trainer) -> dict[str, Any]:
    """Train, recording every optimizer step's gradient, every training loss, and the final parameters."""
    from transformers import TrainerCallback

    record: dict[str, Any] = {"grads": [], "losses": [], "micro_batches": []}
    original = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        loss = original(model, inputs, *args, **kwargs)
        if model.training:
            record["losses"].append(float(loss.detach()))
            record["micro_batches"].append(_cpu(inputs))
        return loss

    trainer.compute_loss = compute_loss

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            record["grads"].append({n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()
                                    if p.grad is not None})  # fmt: skip

    trainer.add_callback(Grads())
    trainer.train()
    record["params"] = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters()}
    return record


def exact_case(out_dir: str, loss_type: str, feature: str, gather: Any = None, **extra: Any) -> dict[str, Any]:
    """One case of the exactness matrix: a GFPO run and TRL's GRPOTrainer on the rows it kept, from the same model.

    ``gather(obj) -> list`` collects an object from every process (torch.distributed.all_gather_object on two
    processes). Returns both runs' gradients, losses and parameters, the batches GFPO trained and the reference
    batches built from TRL's layout rules (with the columns a model fills), and the decisions.
    """
    settings = {**EXACT_BASE, **EXACT_FEATURES.get(feature, SHAPES.get(feature)), **LOSS_TYPES[loss_type],
                "loss_type": loss_type, **extra}  # fmt: skip
    model_kind = settings.pop("model", "llama")

    def model():
        built = build_moe_model(0) if model_kind == "moe" else build_model(0, hidden=16, layers=1)
        if not settings.get("beta"):
            return built
        # With a KL term TRL loads its reference model by name: give both runs the same saved model (on two
        # processes transformers writes it from process 0; the gather waits for it).
        path = Path(out_dir, "initial-model")
        built.save_pretrained(path)
        gather(None)
        return str(path)

    gather = gather or (lambda obj: [obj])
    parts = tiny_parts()
    parts["train_dataset"] = varied_prompts()
    trainer = exact_trainer_class()(
        model=model(), reward_funcs=[Recorder()], args=tiny_args(out_dir, **settings),
        train_dataset=parts["train_dataset"], processing_class=parts["processing_class"], group_filter_func="length",
    )  # fmt: skip
    trainer.exact = {"generated": [], "trained": [], "rng": [], "decisions": []}
    gfpo = _train_recorded(trainer)
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    pad_id = trainer.processing_class.pad_token_id
    result = {"gfpo": gfpo, "grpo": None, "trained": trainer.exact["trained"], "decisions": trainer.exact["decisions"],
              "generated": trainer.exact["generated"]}  # fmt: skip
    result["references"], result["free"] = references, free = [], []
    spg = settings["steps_per_generation"]
    counts = [kept.reshape(world, -1).sum(axis=1).tolist() for kept, _ in trainer.exact["decisions"]]
    if not all(len(set(c)) == 1 and c[0] % spg == 0 and c[0] > 0 for c in counts):
        return result  # no equal micro-batches, a shape GRPOTrainer cannot train: see step_reference
    for generated, (kept, advantages) in zip(trainer.exact["generated"], trainer.exact["decisions"]):
        batch, columns = reference_batch(gather(generated), kept, advantages, rank, world, pad_id)
        references.append(batch)
        free.append(columns)
    reference_args = tiny_args(out_dir, **{k: v for k, v in settings.items() if not k.startswith("adaptive")})
    replay = replay_trainer_class()(
        model=model(), reward_funcs=[Recorder()], args=reference_args, train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
    )  # fmt: skip
    replay.replay = [(_cpu(b), s) for b, s in zip(references, trainer.exact["rng"])]
    result["grpo"] = _train_recorded(replay)
    return result


def step_reference(out_dir: str, loss_type: str, feature: str, micro_batches: list[list[dict[str, Any]]],
                   generated: list[list[dict[str, Any]]], pad_id: int = 0):  # fmt: skip
    """A reference for runs whose micro-batches hold padding rows (the adapter before issue 16), which GRPOTrainer
    cannot reproduce: per optimizer step, TRL's GRPOTrainer on one process trains ONE micro-batch of all the real
    rows that step trained on every process (``micro_batches[r]``: process r's, in order), each taken from the batch
    TRL generated (``generated[r]``: process r's batches before the filter) and laid out by TRL's rules. For every
    loss but bnpo, the entropy bonus and the router loss (means per micro-batch) this is the step on the kept rows
    whatever the split. Token-sum losses keep the run's token count, rescaled as TRL rescales it to one
    accumulation window.
    """
    import inspect

    from trl import GRPOTrainer

    settings = {**EXACT_BASE, **EXACT_FEATURES.get(feature, SHAPES.get(feature)), **LOSS_TYPES[loss_type],
                "loss_type": loss_type}  # fmt: skip
    model_kind = settings.pop("model", "llama")
    gas, spg = settings["gradient_accumulation_steps"], settings["steps_per_generation"]
    rescaled = "steps_per_generation" in inspect.getsource(GRPOTrainer._compute_loss)
    n_steps = len(micro_batches[0]) // gas

    def key(row):  # a row by its tokens: prompt and completion, without padding
        p, c = row["prompt_ids"][row["prompt_mask"].bool()], row["completion_ids"][row["completion_mask"].bool()]
        return tuple(p.tolist()), tuple(c.tolist())

    # Every row TRL generated, as its process's batch held it: the trained rows are looked up here, so that the
    # reference holds TRL's values, not the adapter's.
    source = {key(row): row for rank in generated for batch in rank for row in _rows(batch)}
    replay = []
    for s in range(n_steps):
        trained = [row for rank in micro_batches for b in rank[s * gas : (s + 1) * gas] for row in _rows(real_rows(b))]
        like = micro_batches[0][s * gas]  # this step's generation batch
        batch, _ = trl_layout([source[key(row)] for row in trained], generated[0][0], pad_id)
        batch["advantages"] = torch.stack([row["advantages"] for row in trained]).to(like["advantages"].dtype)
        # (a float: TRL's own rescaling by gas / spg happens in float, and 109 tokens x 2 / 4 is 54.5, not 54)
        batch["num_items_in_batch"] = like["num_items_in_batch"].double() * (gas / spg if rescaled else 1.0)
        replay.append((batch, torch.get_rng_state()))
    settings = {k: v for k, v in settings.items() if not k.startswith("adaptive")}
    settings.update(steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1, max_steps=n_steps,
                    per_device_train_batch_size=settings["num_generations"])  # fmt: skip
    parts = tiny_parts()
    model = build_moe_model(0) if model_kind == "moe" else build_model(0, hidden=16, layers=1)
    if settings.get("beta"):  # TRL loads its reference model by name
        model.save_pretrained(Path(out_dir, "step-reference-model"))
        model = str(Path(out_dir, "step-reference-model"))
    trainer = replay_trainer_class()(
        model=model,
        reward_funcs=[Recorder()], args=tiny_args(out_dir, **settings), train_dataset=parts["train_dataset"],
        processing_class=parts["processing_class"],
    )  # fmt: skip
    trainer.replay = replay
    return _train_recorded(trainer)


def max_grad_diff(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> float:
    """The largest |gradient difference| over every parameter and optimizer step (inf if the steps differ)."""
    if len(a) != len(b) or not a:
        return float("inf")
    return max(float((x[n] - y[n]).abs().max()) for x, y in zip(a, b) for n in y)


def leave_worker() -> None:
    """End a torchrun worker whose work is written: tear the process group down and exit without the interpreter's
    shutdown, where torch's C++ destructors sometimes abort a process under load ("terminate called without an active
    exception", exit code -6) after its work is done, failing the run for nothing the test checks."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
