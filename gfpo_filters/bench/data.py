"""What the benchmark measures on: rollout files or synthetic groups, with lengths counted once.

Rollout files are read by :func:`gfpo_filters.rollouts.read_rollouts` (the same reader as
``gfpo-filters train-scorer``); :func:`synthetic_rollouts` makes groups in the same
:class:`~gfpo_filters.rollouts.RolloutGroup` form. :func:`prepare` turns a data set into the
per-group arrays (lengths, rewards, correctness) that measurement reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfpo_filters.rollouts import RolloutGroup, read_rollouts

LENGTH_UNITS = ("chars", "words")

#: The synthetic generator's defaults; each key is also a command-line option (``--group-size`` ...).
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "groups": 512,
    "group_size": 16,
    "mean_length": 800.0,
    "length_sigma": 0.5,
    "reward_model": "binary",
    "length_effect": -0.5,
    "missing_rate": 0.0,
    "seed": 0,
}

#: A length counter: texts -> one length per text.
LengthFn = Callable[[list[str]], Sequence[int]]


class BenchUsageError(Exception):
    """Bad command-line input (an option value, a data set that cannot be built): one line, exit status 2."""


@dataclass
class Dataset:
    name: str
    groups: list[RolloutGroup]
    description: str


def load_datasets(paths: Sequence[str], synthetic: dict[str, Any]) -> list[Dataset]:
    """One :class:`Dataset` per rollout file, or the synthetic one (``synthetic`` overrides its defaults)."""
    if paths:
        if synthetic:
            opts = ", ".join("--" + k.replace("_", "-") for k in synthetic)
            raise BenchUsageError(f"{opts}: synthetic-data options have no effect with --data")
        return [Dataset(Path(p).name, read_rollouts(p), str(p)) for p in paths]
    opts = {**SYNTHETIC_DEFAULTS, **synthetic}
    groups = synthetic_rollouts(
        n_groups=opts["groups"],
        group_size=opts["group_size"],
        mean_length=opts["mean_length"],
        length_sigma=opts["length_sigma"],
        reward_model=opts["reward_model"],
        length_effect=opts["length_effect"],
        missing_rate=opts["missing_rate"],
        seed=opts["seed"],
    )
    desc = ", ".join(f"{k}={v}" for k, v in opts.items())
    return [Dataset("synthetic", groups, f"synthetic ({desc})")]


_SYLLABLES = np.array("ka to ri mu se na lo pe di vu ba ne so te ga ru mi ha zo fi an el or us it ex ul om ax".split())


def synthetic_rollouts(
    n_groups: int = 512,
    group_size: int = 16,
    mean_length: float = 800.0,
    length_sigma: float = 0.5,
    reward_model: str = "binary",
    length_effect: float = -0.5,
    missing_rate: float = 0.0,
    seed: int = 0,
) -> list[RolloutGroup]:
    """Synthetic rollout groups in which correctness depends on length.

    Lengths (characters) are lognormal with the given mean and log-spread. Each prompt has a
    difficulty ``d ~ U(-2, 2)`` (a logit); a completion is correct with probability
    ``sigmoid(d + length_effect * z)``, ``z`` its standardised log length. The binary reward
    is correctness; the continuous one adds N(0, 0.3). Texts are words drawn from a
    per-prompt pool (completions of one prompt share vocabulary), cut to the drawn length.
    """
    for name, value, ok in (
        ("--groups", n_groups, n_groups >= 1),
        ("--group-size", group_size, group_size >= 1),
        ("--mean-length", mean_length, mean_length >= 1),
        ("--length-sigma", length_sigma, length_sigma >= 0),
        ("--missing-rate", missing_rate, 0 <= missing_rate <= 1),
    ):
        if not ok:
            raise BenchUsageError(f"{name} out of range: {value}")
    if reward_model not in ("binary", "continuous"):
        raise BenchUsageError(f"--reward-model must be binary or continuous, got {reward_model!r}")
    rng = np.random.default_rng(seed)
    shape = (n_groups, group_size)
    mu = math.log(mean_length) - length_sigma**2 / 2
    lengths = np.maximum(1, np.rint(rng.lognormal(mu, length_sigma, shape))).astype(np.int64)
    z = (np.log(lengths) - mu) / max(length_sigma, 1e-9)
    difficulty = rng.uniform(-2.0, 2.0, (n_groups, 1))
    p = 1.0 / (1.0 + np.exp(-(difficulty + length_effect * z)))
    correct = (rng.random(shape) < p).astype(np.float64)
    rewards = correct + (rng.normal(0.0, 0.3, shape) if reward_model == "continuous" else 0.0)
    rewards = np.where(rng.random(shape) < missing_rate, np.nan, rewards)

    words = np.array([a + b + c for a in _SYLLABLES[:12] for b in _SYLLABLES for c in ("", "n", "s")])
    out = []
    for i in range(n_groups):
        pool = rng.choice(words, 40, replace=False)
        n_words = int(lengths[i].max()) // 3 + 2  # words are >= 2 letters plus a space
        texts = []
        for j in range(group_size):
            text = " ".join(pool[rng.integers(0, len(pool), n_words)])
            texts.append(text[: lengths[i, j]])
        out.append(
            RolloutGroup(
                prompt=f"synthetic prompt {i}",
                prompt_id=i,
                texts=texts,
                rewards=rewards[i].tolist(),
                correct=correct[i].tolist(),
                source=f"synthetic:{i}",
            )
        )
    return out


def length_counter(unit: str, tokenizer: str | None) -> tuple[str, LengthFn | None]:
    """(unit label, function texts -> lengths, or None for characters counted by the filter)."""
    if tokenizer:
        tok = _load_tokenizer(tokenizer)
        from gfpo_filters.groups import count_tokens

        return f"tokens ({tokenizer})", lambda texts: count_tokens(tok, texts)
    if unit == "words":
        return "words", lambda texts: [len(t.split()) for t in texts]
    if unit == "chars":
        return "characters", None
    raise BenchUsageError(f"--length-unit must be one of {LENGTH_UNITS}, got {unit!r}")


def _load_tokenizer(name: str) -> Any:
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BenchUsageError("--tokenizer with a tokenizer.json file needs the 'tokenizers' package") from None
        return Tokenizer.from_file(str(path))
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BenchUsageError("--tokenizer NAME needs the 'transformers' package") from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any loading failure is a usage problem here
        raise BenchUsageError(f"--tokenizer {name!r} could not be loaded: {type(e).__name__}: {e}") from None


@dataclass
class Prepared:
    """A dataset with per-group arrays computed once."""

    dataset: Dataset
    unit: str
    pass_lengths: bool  # give filters completion_lengths (words/tokens), else they count characters
    lengths: list[np.ndarray]
    rewards: list[np.ndarray]
    correct: list[np.ndarray]
    all_missing: list[int]  # indices of groups without any reward

    @property
    def sizes(self) -> list[int]:
        return [g.size for g in self.dataset.groups]

    def stack(self, index: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lengths (float), rewards and correctness of same-size groups, each ``(len(index), G)``."""
        lengths = np.stack([self.lengths[i] for i in index]).astype(np.float64)
        rewards = np.stack([self.rewards[i] for i in index])
        correct = np.stack([self.correct[i] for i in index])
        return lengths, rewards, correct


def prepare(ds: Dataset, length_fn: LengthFn | None, unit: str) -> Prepared:
    """Count lengths (characters when ``length_fn`` is None) and turn rewards and correctness into arrays."""
    groups = ds.groups
    flat = [t for g in groups for t in g.texts]
    counts = (
        np.fromiter(map(len, flat), np.int64, len(flat)) if length_fn is None else np.asarray(length_fn(flat), np.int64)
    )
    bounds = np.cumsum([0] + [g.size for g in groups])
    lengths = [counts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    rewards = [np.asarray(g.rewards, np.float64) for g in groups]
    correct = [np.asarray(g.correct, np.float64) for g in groups]
    all_missing = [i for i, r in enumerate(rewards) if not np.isfinite(r).any()]
    return Prepared(ds, unit, length_fn is not None, lengths, rewards, correct, all_missing)
