"""A verifiable task for a small real model: one-digit additions, asked in a chat, answered with a number.

Prompts are chat messages (a conversational data set, so TRL applies the model's chat template), one of
:data:`TEMPLATES` filled with two one-digit numbers. The 100 ordered pairs (a, b), 0..9 each, are shuffled with a
fixed seed and cut in two: 50 pairs for training, 50 held out. Every pair goes with every template, so each split
has 50 × 4 = 200 prompts, and no held-out prompt shares its pair of numbers with a training prompt.

**Reward** (:func:`correct_sum`): 1 when the *last* integer in the completion equals a + b, else 0. The last
integer, not the first: SmolLM2-135M-Instruct often restates the question ("8 + 7 = 15"), so the first integer is
usually an operand. A completion that goes on after its answer and writes other numbers loses the reward; one
truncated before it writes the sum gets none. Measured on SmolLM2-135M-Instruct at temperature 1 (48 new tokens),
about 30% of answers earn the reward; greedy, about 80% (docs/smollm2.md).

**Lenient reward** (:func:`contains_sum`): 1 when a + b is *any* integer of the completion. This is the kind of
checker that invites length inflation: a longer answer that writes more numbers is more often right by chance, as
the toy task of the demo rewards any ``x``. :data:`REWARDS` names them all.

**Sole-candidate reward** (:func:`sole_sum`): the lenient checker with a penalty for rambling: 1 when a + b is an
integer of the completion *and every other integer in it is an operand* (a or b, read from the prompt). "3 + 5 = 8"
and "The sum is 8" pass; "8, or maybe 9", "8 + 1 = 9" and a list of numbers fail. It tells real accuracy from
length hacking: an answer that writes several candidate sums earns ``contains_sum`` but not ``sole_sum``.
"""

from __future__ import annotations

import random
import re
from typing import Any

TEMPLATES: tuple[str, ...] = (
    "Compute {a} + {b}. Reply with only the result, a single number.",
    "What is {a} + {b}? Answer with just the number.",
    "Add {a} and {b}. Give only the sum.",
    "{a} + {b} = ? Reply with the number only.",
)
#: seed of the shuffle that splits the 100 pairs into training and held-out halves
SPLIT_SEED = 1234
_INTEGER = re.compile(r"-?\d+")


def pairs(split: str) -> list[tuple[int, int]]:
    """The 50 ordered pairs (a, b) of ``split`` ("train" or "test"); the two splits are disjoint."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    every = [(a, b) for a in range(10) for b in range(10)]
    random.Random(SPLIT_SEED).shuffle(every)
    return every[:50] if split == "train" else every[50:]


def examples(split: str) -> list[dict[str, Any]]:
    """The 200 examples of ``split``: ``prompt`` (a list with one user message), ``answer`` (a + b)."""
    return [
        {"prompt": [{"role": "user", "content": t.format(a=a, b=b)}], "answer": a + b}
        for a, b in pairs(split)
        for t in TEMPLATES
    ]


def build_dataset(split: str = "train", seed: int | None = None):
    """``examples(split)`` as a ``datasets.Dataset`` (``prompt``, ``answer``), shuffled when ``seed`` is given."""
    from datasets import Dataset

    rows = examples(split)
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)


def last_integer(text: str) -> int | None:
    """The last integer written in ``text`` (a leading minus sign counts), or None when there is none."""
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def correct_sum(completions: list[Any], answer: list[int], **kwargs: Any) -> list[float]:
    """Reward function (TRL signature): 1.0 when a completion's last integer equals its ``answer``, else 0.0.

    Completions are strings or, for conversational prompts, message lists (the last message's content counts).
    """
    if len(completions) != len(answer):
        raise ValueError(f"correct_sum got {len(completions)} completions but {len(answer)} answers")
    return [1.0 if last_integer(_text(c)) == int(a) else 0.0 for c, a in zip(completions, answer)]


def contains_sum(completions: list[Any], answer: list[int], **kwargs: Any) -> list[float]:
    """Reward function (TRL signature): 1.0 when any integer of a completion equals its ``answer``, else 0.0.

    Integers are read whole ("15" does not contain 5; "-5" is minus five). Lenient on purpose: an answer that
    restates the question, rambles or lists numbers is rewarded whenever the sum appears somewhere in it.
    """
    if len(completions) != len(answer):
        raise ValueError(f"contains_sum got {len(completions)} completions but {len(answer)} answers")
    return [1.0 if int(a) in {int(x) for x in _INTEGER.findall(_text(c))} else 0.0 for c, a in zip(completions, answer)]


def operands(prompt: Any) -> tuple[int, int]:
    """The two numbers a prompt of :data:`TEMPLATES` adds: its first two integers (a chat message list or a string)."""
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    found = _INTEGER.findall(text)
    if len(found) < 2:
        raise ValueError(f"not an addition prompt (fewer than two integers): {text!r}")
    return int(found[0]), int(found[1])


def sole_sum(completions: list[Any], answer: list[int], prompts: list[Any] | None = None, **kwargs: Any) -> list[float]:
    """Reward function (TRL signature): 1.0 when a completion writes its ``answer`` and no integer other than the
    answer and the prompt's two operands, else 0.0: :func:`contains_sum` without credit for other candidate answers.

    Needs ``prompts`` (TRL passes them) to know the operands.
    """
    if prompts is None:
        raise ValueError("sole_sum needs the prompts (to read the operands); TRL passes them as prompts=")
    if not len(completions) == len(answer) == len(prompts):
        raise ValueError(
            f"sole_sum got {len(completions)} completions, {len(answer)} answers and {len(prompts)} prompts"
        )
    out = []
    for c, a, p in zip(completions, answer, prompts):
        written = {int(x) for x in _INTEGER.findall(_text(c))}
        out.append(1.0 if int(a) in written and written <= {int(a), *operands(p)} else 0.0)
    return out


#: Reward functions of the task by name: ``correct_sum`` (strict, the default), ``contains_sum`` (lenient) and
#: ``sole_sum`` (lenient, but no other candidate answer may be written).
REWARDS = {"correct_sum": correct_sum, "contains_sum": contains_sum, "sole_sum": sole_sum}


def reward_function(name: str):
    """The reward function of :data:`REWARDS` called ``name``; a ValueError naming the choices for any other."""
    if name not in REWARDS:
        raise ValueError(f"unknown addition reward {name!r}: choose one of {', '.join(REWARDS)}")
    return REWARDS[name]
