"""A toy task on which GRPO inflates completion length, built entirely in code.

* Tokenizer: one token per lowercase letter plus ``<pad>`` and ``<eos>`` (``tokenizers`` library).
* Policy: a two-layer Llama with 32-dim hidden states, initialised from a seed.
* Prompts: random 4-letter strings. Reward: 1 if the completion contains the letter ``x``.

A randomly initialised policy stops after about 28 letters on average, so a longer completion is
more likely to contain an ``x``: GRPO's advantage rewards length and completions grow towards the
cap. A length-aware group filter (``token_efficiency``, ``length``) keeps the short completions
that found an ``x`` and holds the length down. Used by ``gfpo-filters demo`` and the trainer tests.

:data:`TASKS` is a family of rewards on the same prompts and policy, for benchmarks/effect.py
(docs/effect.md): the demo's task and two that expose different failures of a length filter, all 0/1, and a graded
one (``count_x``, docs/length_baselines.md).
"""

from __future__ import annotations

import string
from typing import Any

TARGET = "x"
#: Letters a completion needs for the ``long_x`` task.
MIN_LETTERS = 20
#: The ``count_x`` task's full reward: this many ``x``.
FULL_COUNT = 3
LETTERS = string.ascii_lowercase
PAD, EOS = "<pad>", "<eos>"


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: ``<pad>`` = 0, ``<eos>`` = 1, letters 2..27."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")


def build_model(seed: int = 0, hidden: int = 32, layers: int = 2):
    """A tiny causal LM over the toy vocabulary, deterministic for a seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(LETTERS) + 2,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


def build_dataset(n_prompts: int = 64, seed: int = 0):
    """``n_prompts`` distinct random 4-letter prompts, as a ``datasets.Dataset`` with a ``prompt`` column."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < n_prompts:
        p = "".join(rng.choice(LETTERS) for _ in range(4))
        if p not in prompts:
            prompts.append(p)
    return Dataset.from_dict({"prompt": prompts})


def contains_target(completions: list[Any], **kwargs: Any) -> list[float]:
    """Reward function: 1.0 if the completion contains the target letter, else 0.0."""
    return [1.0 if TARGET in (c if isinstance(c, str) else c[0]["content"]) else 0.0 for c in completions]


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def prompt_target(prompt: str) -> str:
    """The target letter of a prompt in the ``prompt_letter`` task: a fixed hash of its letters."""
    return LETTERS[sum(LETTERS.index(c) for c in prompt if c in LETTERS) % len(LETTERS)]


def contains_prompt_target(completions: list[Any], prompts: list[Any], **kwargs: Any) -> list[float]:
    """Reward function: 1.0 if the completion contains its prompt's target letter (:func:`prompt_target`)."""
    return [1.0 if prompt_target(_text(p)) in _text(c) else 0.0 for p, c in zip(prompts, completions)]


def long_with_target(completions: list[Any], **kwargs: Any) -> list[float]:
    """Reward function: 1.0 if the completion contains the target letter and has at least ``MIN_LETTERS`` letters."""
    return [1.0 if TARGET in (t := _text(c)) and len(t) >= MIN_LETTERS else 0.0 for c in completions]


def count_target(completions: list[Any], **kwargs: Any) -> list[float]:
    """Graded reward: the number of target letters, up to ``FULL_COUNT``, over ``FULL_COUNT`` (0, 1/3, 2/3 or 1)."""
    return [min(_text(c).count(TARGET), FULL_COUNT) / FULL_COUNT for c in completions]


#: The toy task family: name -> (TRL reward function, what it asks). Random policies start at 0.3 to 0.55.
TASKS = {
    "x": (contains_target, "contains an 'x' (the demo's task: learned almost at once)"),
    "prompt_letter": (
        contains_prompt_target,
        "contains the prompt's own target letter, a fixed hash of the prompt (slow to learn)",
    ),
    "long_x": (
        long_with_target,
        f"contains an 'x' and has at least {MIN_LETTERS} letters (a correct answer needs more tokens)",
    ),
    "count_x": (
        count_target,
        f"graded: the number of 'x' up to {FULL_COUNT}, over {FULL_COUNT} (partial credit grows with length)",
    ),
}
#: The 0/1 tasks, benchmarks/effect.py's default (docs/effect.md); ``count_x`` is graded (docs/length_baselines.md).
BINARY_TASKS = ("x", "prompt_letter", "long_x")
