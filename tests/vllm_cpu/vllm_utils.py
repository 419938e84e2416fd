"""Helpers shared by the vLLM tests and their two-process worker: the CPU weight-sync shim, a tiny model on disk,
one recorded GFPO step with vLLM generation, and TRL's own loss on the kept rows.

Nothing is downloaded: the model is built from a config and saved to a folder, which vLLM loads.
"""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path
from typing import Any

import torch

from gfpo_filters.experiments.toy import build_dataset, build_model, build_tokenizer

# vLLM's CPU backend reserves this many GiB for its KV cache (default 4); a 64-token model needs far less.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

#: vLLM's CPU attention needs a head size of at least 32: hidden 64 over 2 heads (the toy default, 16, fails).
HIDDEN = 64
#: TRL 1.16's vllm_importance_sampling_mode values, and the clip bounds each test run uses.
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
CLIP_MIN, CLIP_MAX = 0.65, 1.5
#: How far the trained policy starts from the weights vLLM samples with (see :func:`policy`).
SHIFT = 0.02


def keep_cpu_weights_loadable() -> None:
    """Let TRL push new weights into vLLM's CPU model (``load_weights``), as it does on GPUs.

    After loading, vLLM's CPU backend hands each linear layer's weight to a packed GEMM kernel (oneDNN or
    sgl-kernel, ``dispatch_cpu_unquantized_gemm``), which keeps its own copy, and replaces ``layer.weight`` with an
    empty Parameter that has no ``weight_loader``. TRL's sync then fails ("'Parameter' object has no attribute
    'weight_loader'"), and even where it did not (the tied embedding and LM head keep their Parameter) the kernel
    would go on using the packed start weights. Here 2-D weights stay in place and are multiplied with
    ``torch.nn.functional.linear``, which reads ``layer.weight`` at each call. Only on the CPU backend; applied once,
    before the engine is built.
    """
    from vllm.model_executor.layers import utils
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or getattr(utils.dispatch_cpu_unquantized_gemm, "keeps_weights", False):
        return
    original = utils.dispatch_cpu_unquantized_gemm

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # convolution or MoE expert weights: vLLM's own handling
            return original(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear

    dispatch.keeps_weights = True
    utils.dispatch_cpu_unquantized_gemm = dispatch


def save_model(folder: Path) -> str:
    """The tiny Llama (seed 0) and the toy tokenizer, saved where vLLM can load them."""
    build_model(0, hidden=HIDDEN, layers=1).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return str(folder)


def policy(model_dir: str, shift: float):
    """The model saved in ``model_dir`` with every weight moved by ``shift`` * N(0, 1) (fixed seed).

    With the weight sync off, vLLM samples from the saved weights while this policy is trained: a real off-policy
    gap, so the importance-sampling ratios spread around 1 and the clip bounds act.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift * torch.randn(p.shape, generator=generator))
    return model


def reward(completions, **kwargs) -> list[float]:
    return [(len(c) % 5) / 4 for c in completions]


def vllm_args(output_dir: str, **overrides: Any):
    """The trainer tests' tiny configuration, generating with vLLM (colocate) and importance-sampling correction."""
    from tests.trainer_utils import tiny_args

    config = dict(
        per_device_train_batch_size=8,
        max_completion_length=12,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=64,
        vllm_importance_sampling_correction=True,
        vllm_importance_sampling_clip_min=CLIP_MIN,
        vllm_importance_sampling_clip_max=CLIP_MAX,
        temperature=1.0,
    )
    return tiny_args(output_dir, **{**config, **overrides})


class Step:
    """What one GFPO training step with vLLM generation computed: the micro-batches the loss saw (after the filter)
    and the gradient the optimizer saw."""

    def __init__(self, trainer) -> None:
        from transformers import TrainerCallback

        self.micro_batches: list[dict[str, Any]] = []
        self.grads: dict[str, torch.Tensor] = {}
        original = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            if model.training:
                self.micro_batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
            return original(model, inputs, *args, **kwargs)

        trainer.compute_loss = compute_loss
        step = self

        class Grads(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if not step.grads:
                    step.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        trainer.add_callback(Grads())


def gfpo_step(model_dir: str, output_dir: str, shift: float = SHIFT, sync: bool = False, **overrides: Any):
    """One GFPO step (``length`` filter, k = 3 of G = 4) with vLLM colocate generation: ``(trainer, Step)``.

    ``sync=False`` switches TRL's weight sync off, so that vLLM samples from the saved weights (see :func:`policy`).
    """
    from gfpo_filters.trainer import GFPOTrainer

    keep_cpu_weights_loadable()
    gc.collect()  # an engine left from an earlier step is torn down now, not in the middle of building this one
    trainer = GFPOTrainer(
        model=policy(model_dir, shift),
        reward_funcs=[reward],
        args=vllm_args(output_dir, **overrides),
        train_dataset=build_dataset(16),
        processing_class=build_tokenizer(),
        group_filter_func="length",
    )
    if not sync:
        trainer.vllm_generation.sync_weights = lambda: None
    step = Step(trainer)
    trainer.train()
    return trainer, step


def real_rows(batch: dict[str, Any]) -> dict[str, Any]:
    """The rows of a batch that are not padding rows (padding rows have an empty completion mask)."""
    keep = batch["completion_mask"].sum(dim=1) > 0
    n = keep.shape[0]
    return {k: v[keep] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n else v for k, v in batch.items()}


def expected_ratio(batch: dict[str, Any], mode: str) -> torch.Tensor:
    """TRL 1.16's vLLM importance-sampling ratio of each row, recomputed from the row's own log-probs
    (``_generate_and_score_completions``): masked columns have log-ratio 0, so ratio 1 before clipping."""
    mask = batch["completion_mask"] * batch.get("tool_mask", 1)
    diff = torch.nan_to_num((batch["old_per_token_logps"] - batch["sampling_per_token_logps"]) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return ratio.clamp(min=CLIP_MIN, max=CLIP_MAX)
    return ratio.masked_fill((ratio < CLIP_MIN) | (ratio > CLIP_MAX), 0.0)


def reference_step(model_dir: str, output_dir: str, rows: dict[str, Any], shift: float = SHIFT, **overrides: Any):
    """TRL's own GRPOTrainer (vLLM colocate, the same importance-sampling settings) on a batch of exactly ``rows``,
    from the policy's start weights: ``(loss, grads)``. ``rows`` holds every kept row once; row-mean and token-sum
    losses of TRL do not depend on how rows are split into micro-batches, so one batch is the whole step."""
    from trl import GRPOTrainer

    gc.collect()  # see gfpo_step
    trainer = GRPOTrainer(  # a GFPOConfig is a GRPOConfig; GRPOTrainer ignores the GFPO fields
        model=policy(model_dir, shift),
        reward_funcs=[reward],
        args=vllm_args(output_dir, **overrides),
        train_dataset=build_dataset(16),
        processing_class=build_tokenizer(),
    )
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(model, rows)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def concat_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of several batches in one, padded as TRL pads a batch: prompts on the left; completion columns on the
    right with mask 0, tool mask 1 and importance-sampling ratio 1 (TRL's ratio is exp(0) = 1 where the mask is 0)."""
    prompt_width = max(b["prompt_ids"].shape[1] for b in batches)
    width = max(b["completion_ids"].shape[1] for b in batches)
    pad = {"tool_mask": 1.0, "importance_sampling_ratio": 1.0}
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
            elif v.ndim == 2 and v.shape[1] > 1:
                v = torch.nn.functional.pad(v, (0, width - v.shape[1]), value=pad.get(key, 0.0))
            parts.append(v)
        out[key] = torch.cat(parts)
    return out


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute gradient difference over the largest gradient entry (0 for identical steps)."""
    scale = max(float(v.abs().max()) for v in b.values())
    return max_difference(a, b) / scale if scale else math.inf
