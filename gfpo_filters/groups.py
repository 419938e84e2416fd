"""The batch a filter scores: ``n_groups`` prompts with ``G`` completions each.

:class:`Groups` is built from the keyword call a GFPO trainer makes
(``group_completions=..., group_rewards=..., completion_lengths=..., ...``), validates it
once, and hands filters arrays instead of nested lists. Work that not every filter needs
(extracting text from message lists, counting lengths) is done lazily, on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gfpo_filters.errors import GroupInputError

#: The unit of ``Groups.lengths`` when no token information reaches the filter.
FALLBACK_LENGTH_UNIT = "characters"


def _to_numpy(x: Any) -> Any:
    """Turn a torch tensor (on any device) into a numpy array without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


def completion_text(completion: Any, where: str = "") -> str:
    """Text of one completion: a string, or the concatenated contents of a message list.

    Message contents may be strings or lists of parts (``{"type": "text", "text": ...}``),
    as TRL passes conversational and multimodal completions.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts: list[str] = []
        for message in completion:
            if not isinstance(message, dict) or "content" not in message:
                raise GroupInputError(
                    f"completion {where}: expected a string or a list of messages with a 'content' key, "
                    f"got an item of type {type(message).__name__}"
                )
            content = message["content"]
            if content is None:
                continue
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, (list, tuple)):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            else:
                raise GroupInputError(
                    f"completion {where}: message content must be a string or a list of parts, "
                    f"got {type(content).__name__}"
                )
        return "".join(parts)
    raise GroupInputError(
        f"completion {where}: expected a string or a list of messages, got {type(completion).__name__}"
    )


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of ``texts`` with a user-supplied tokenizer.

    Accepts a ``tokenizers.Tokenizer`` (``encode_batch``), a transformers tokenizer
    (``__call__`` returning ``input_ids``; special tokens are not added), or any callable
    mapping a string to a sequence of tokens.
    """
    if hasattr(tokenizer, "encode_batch"):
        return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    if hasattr(tokenizer, "encode") and callable(tokenizer):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if callable(tokenizer):
        return [len(tokenizer(t)) for t in texts]
    raise GroupInputError(
        f"tokenizer of type {type(tokenizer).__name__} is not usable: pass a tokenizers.Tokenizer, "
        "a transformers tokenizer, or a callable str -> sequence of tokens"
    )


def _rewards_array(group_rewards: Any, n: int, g: int) -> np.ndarray:
    """(n, G) float64 rewards with NaN where a reward is missing (None or NaN)."""
    raw = _to_numpy(group_rewards)
    try:
        rewards = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        rewards = None
    if rewards is None or rewards.dtype == object:
        # Slow path: None entries, ragged rows, or non-numeric values. Say which.
        if not isinstance(raw, Sequence) or len(raw) != n:
            got = len(raw) if isinstance(raw, Sequence) else type(raw).__name__
            raise GroupInputError(f"group_rewards must hold one row per group: expected {n} rows, got {got}")
        rewards = np.full((n, g), np.nan)
        for i, row in enumerate(raw):
            row = _to_numpy(row)
            if not isinstance(row, (Sequence, np.ndarray)) or len(row) != g:
                got = len(row) if isinstance(row, (Sequence, np.ndarray)) else type(row).__name__
                raise GroupInputError(f"group_rewards[{i}] must hold {g} rewards (one per completion), got {got}")
            for j, r in enumerate(row):
                if r is None:
                    continue
                try:
                    rewards[i, j] = float(r)
                except (TypeError, ValueError):
                    raise GroupInputError(
                        f"group_rewards[{i}][{j}] = {r!r} is not a number (use None or NaN for a missing reward)"
                    ) from None
        return rewards
    if rewards.shape != (n, g):
        raise GroupInputError(
            f"group_rewards has shape {rewards.shape}, but group_completions is {n} groups x {g} completions"
        )
    return rewards


def _grouped_ids(value: Any, n: int, g: int) -> list[list[Any]]:
    """Token ids as ``[group][completion] -> ids``; accepts that nesting or a flat list of n*G id lists."""
    value = list(_to_numpy(value))

    def is_seq(x: Any) -> bool:  # lists, tuples, numpy arrays, torch tensors
        return hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, (str, bytes, dict))

    if len(value) == n and all(is_seq(v) and len(v) == g for v in value) and all(is_seq(x) for x in value[0]):
        return [list(v) for v in value]
    if len(value) == n * g and all(is_seq(x) for x in value):
        return [value[i * g : (i + 1) * g] for i in range(n)]
    raise GroupInputError(
        f"completion_ids must hold {n} groups of {g} token-id lists (or {n * g} id lists flat), "
        f"got {len(value)} entries"
    )


class Groups:
    """A validated batch of groups.

    Attributes always present:
        rewards: float64 array (n_groups, G); NaN where the reward is missing.
        valid: bool array (n_groups, G); True where the reward is a finite number.
        raw_completions: the completions as passed (strings or message lists).
        completion_ids: token ids per completion, ``[group][completion] -> list[int]``, or None.
        prompts: one prompt per group, or None.
        k: int array (n_groups,) of ``num_remains_in_group``, or None when the caller gave none.

    Computed on first use:
        completions: list of lists of str (message lists reduced to their text).
        lengths: int64 array (n_groups, G) in :attr:`length_unit`.
    """

    def __init__(
        self,
        completions: Sequence[Sequence[Any]],
        rewards: Any,
        *,
        completion_ids: Any = None,
        completion_lengths: Any = None,
        prompts: Any = None,
        num_remains_in_group: Any = None,
    ) -> None:
        if isinstance(completions, (str, bytes)) or not isinstance(completions, Sequence):
            raise GroupInputError(
                f"group_completions must be a list of groups (lists of completions), got {type(completions).__name__}"
            )
        n = len(completions)
        sizes = [len(c) if isinstance(c, Sequence) and not isinstance(c, str) else -1 for c in completions]
        if any(s < 0 for s in sizes):
            i = next(i for i, s in enumerate(sizes) if s < 0)
            raise GroupInputError(
                f"group_completions[{i}] must be a list of completions, got {type(completions[i]).__name__}"
            )
        g = sizes[0] if sizes else 0
        if any(s != g for s in sizes):
            i = next(i for i, s in enumerate(sizes) if s != g)
            raise GroupInputError(
                f"groups are ragged: group 0 has {g} completions but group {i} has {sizes[i]}; "
                "every group must hold the same number G of completions"
            )
        if n and g == 0:
            raise GroupInputError("groups are empty: every group must hold at least one completion")
        self.raw_completions = completions
        self.n_groups, self.group_size = n, g
        self.rewards = _rewards_array(rewards, n, g) if n else np.zeros((0, 0))
        self.valid = np.isfinite(self.rewards)
        self.completion_ids = None
        if completion_ids is not None:
            self.completion_ids = _grouped_ids(completion_ids, n, g)
        self._given_lengths = None
        if completion_lengths is not None:
            lengths = np.asarray(_to_numpy(completion_lengths))
            if lengths.size != n * g:
                raise GroupInputError(
                    f"completion_lengths must hold {n * g} lengths ({n} groups x {g}), got shape {lengths.shape}"
                )
            if lengths.size and (not np.issubdtype(lengths.dtype, np.number) or (lengths < 0).any()):
                raise GroupInputError("completion_lengths must be non-negative integers")
            self._given_lengths = lengths.reshape(n, g).astype(np.int64, copy=False)
        self.prompts = None
        if prompts is not None:
            prompts = list(prompts)
            if len(prompts) == n * g and g > 1:
                prompts = prompts[::g]
            if len(prompts) != n:
                raise GroupInputError(f"prompts must hold one prompt per group ({n}), got {len(prompts)}")
            self.prompts = prompts
        self.k = None
        if num_remains_in_group is not None:
            k = np.asarray(_to_numpy(num_remains_in_group))
            if k.ndim == 0:
                k = np.full(n, int(k), dtype=np.int64)
            if k.shape != (n,) or not np.issubdtype(k.dtype, np.integer):
                raise GroupInputError(
                    f"num_remains_in_group must be an int or one int per group ({n}), got {num_remains_in_group!r}"
                )
            bad = (k < 1) | (k > g)
            if bad.any():
                i = int(np.argmax(bad))
                raise GroupInputError(
                    f"num_remains_in_group={int(k[i])} (group {i}) is out of range for groups of G={g}: "
                    f"it must be between 1 and {g}"
                )
            self.k = k.astype(np.int64)
        self._texts: list[list[str]] | None = None
        self._lengths: dict[int, tuple[np.ndarray, str]] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_call(cls, group_completions: Any, group_rewards: Any, **kwargs: Any) -> Groups:
        """Build from the keyword call a trainer makes; unknown keyword arguments are ignored."""
        known = ("completion_ids", "completion_lengths", "prompts", "num_remains_in_group")
        return cls(group_completions, group_rewards, **{k: kwargs[k] for k in known if kwargs.get(k) is not None})

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_groups, self.group_size)

    def __len__(self) -> int:
        return self.n_groups

    def __repr__(self) -> str:
        return f"Groups(n_groups={self.n_groups}, G={self.group_size}, missing_rewards={int((~self.valid).sum())})"

    # ------------------------------------------------------------------ text
    @property
    def completions(self) -> list[list[str]]:
        """Completion texts; message lists are reduced to the concatenation of their contents."""
        if self._texts is None:
            self._texts = [
                [c if isinstance(c, str) else completion_text(c, f"[{i}][{j}]") for j, c in enumerate(group)]
                for i, group in enumerate(self.raw_completions)
            ]
        return self._texts

    def flat_texts(self) -> list[str]:
        """All completion texts in row-major order (group 0 first)."""
        return [t for group in self.completions for t in group]

    # ------------------------------------------------------------------ lengths
    @property
    def has_token_lengths(self) -> bool:
        """True when the caller passed token information (lengths or ids)."""
        return self._given_lengths is not None or self.completion_ids is not None

    def get_lengths(self, tokenizer: Any = None) -> np.ndarray:
        """Completion lengths, int64 (n_groups, G), from the best source available.

        Order of preference: ``completion_lengths`` passed by the trainer, then the lengths of
        ``completion_ids``, then ``tokenizer`` applied to the texts, then the number of
        characters (:data:`FALLBACK_LENGTH_UNIT`).
        """
        return self._lengths_and_unit(tokenizer)[0]

    def length_unit_for(self, tokenizer: Any = None) -> str:
        return self._lengths_and_unit(tokenizer)[1]

    @property
    def lengths(self) -> np.ndarray:
        """Lengths without a filter-specific tokenizer (see :meth:`get_lengths`)."""
        return self.get_lengths(None)

    @property
    def length_unit(self) -> str:
        """``"tokens"`` when token information arrived, else ``"characters"``."""
        return self.length_unit_for(None)

    def _lengths_and_unit(self, tokenizer: Any) -> tuple[np.ndarray, str]:
        if self._given_lengths is not None:
            return self._given_lengths, "tokens"
        key = id(tokenizer) if tokenizer is not None and self.completion_ids is None else 0
        if key not in self._lengths:
            n, g = self.shape
            if self.completion_ids is not None:
                flat = map(len, (ids for group in self.completion_ids for ids in group))
                unit = "tokens"
            elif tokenizer is not None:
                flat = count_tokens(tokenizer, self.flat_texts())
                unit = "tokens"
            else:
                flat = map(len, self.flat_texts())
                unit = FALLBACK_LENGTH_UNIT
            self._lengths[key] = (np.fromiter(flat, dtype=np.int64, count=n * g).reshape(n, g), unit)
        return self._lengths[key]
