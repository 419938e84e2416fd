"""The ``consensus`` filter: keep the completions that agree most with the rest of their group.

Self-consistency / minimum-Bayes-risk selection inside a group. By default a completion's score
is its mean shingle Jaccard similarity to the other completions of its group (the ``diversity``
filter's similarity engine: exact, or MinHash for long completions). With ``answer_pattern`` it
is the share of the other completions whose extracted final answer is the same (a majority
vote). See ``docs/filters/consensus.md``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.filters.diversity import SIMILARITIES, UNITS, similarity_matrices
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.params import check_choice, check_int

#: score of a completion in which ``answer_pattern`` finds no answer (below every share in [0, 1])
NO_ANSWER = -1.0


def agreement(sim: np.ndarray) -> np.ndarray:
    """Mean similarity of each completion to the others of its group: (n, G, G) -> (n, G).

    ``(sum_j sim[i, j] - sim[i, i]) / (G - 1)``; 0 for groups of one.
    """
    n, g, _ = sim.shape
    if g < 2:
        return np.zeros((n, g))
    return (sim.sum(axis=2) - np.diagonal(sim, axis1=1, axis2=2)) / (g - 1)


def final_answers(texts: Sequence[str], pattern: str | re.Pattern[str]) -> list[str | None]:
    """The last match of ``pattern`` in each text (its first group if it has groups), stripped; None if none."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    out: list[str | None] = []
    for t in texts:
        last = deque(rx.finditer(t), maxlen=1)  # keeps only the last match
        if not last:
            out.append(None)
        else:
            out.append((last[0].group(1) if rx.groups else last[0].group(0)).strip())
    return out


def answer_agreement(answers: Sequence[str | None], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Share of the other completions of the group with the same answer, and which have an answer.

    ``answers`` is row-major (``shape[0] * shape[1]`` entries). Returns float (n, G) in [0, 1]
    (0 where there is no answer) and bool (n, G).
    """
    n, g = shape
    has = np.fromiter((a is not None for a in answers), dtype=bool, count=n * g).reshape(n, g)
    ids: dict[str, int] = {}
    codes = np.fromiter(
        (-1 if a is None else ids.setdefault(a, len(ids)) for a in answers), dtype=np.int64, count=n * g
    ).reshape(n, g)
    same = (codes[:, :, None] == codes[:, None, :]) & has[:, :, None]
    votes = same.sum(axis=2) - has  # the others only
    return (votes / (g - 1) if g > 1 else np.zeros((n, g))), has


class ConsensusFilter(GroupFilter):
    """Keep what agrees with the group: mean n-gram similarity to the rest, or a final-answer vote.

    Parameters
        answer_pattern: a regular expression; when given, each completion's final answer is its
            last match (the first group when the pattern has one), and the score is the share of
            the other completions with the same answer (``-1`` when there is none).
        ngram, similarity, unit, num_perm, seed: the similarity engine of the ``diversity``
            filter (shingle size, ``"auto"``/``"jaccard"``/``"minhash"``, ``"auto"``/``"ids"``/
            ``"words"``/``"chars"``, MinHash bins and seed), used without ``answer_pattern``.
    """

    name = "consensus"
    description = "Keep what agrees with the group: mean n-gram similarity to the rest, or a majority vote of answers."

    def __init__(
        self,
        answer_pattern: str | None = None,
        ngram: int = 3,
        similarity: str = "auto",
        unit: str = "auto",
        num_perm: int = 128,
        seed: int = 0,
    ) -> None:
        if answer_pattern is not None:
            if not isinstance(answer_pattern, str):
                raise self.param_error(
                    "answer_pattern", f"must be a regular expression string or None, got {answer_pattern!r}"
                )
            try:
                re.compile(answer_pattern)
            except re.error as e:
                raise self.param_error(
                    "answer_pattern", f"{answer_pattern!r} is not a regular expression ({e})"
                ) from None
        self.answer_pattern = answer_pattern
        self.ngram = check_int(self, "ngram", ngram, low=1, high=64)
        self.similarity = check_choice(self, "similarity", similarity, SIMILARITIES)
        self.unit = check_choice(self, "unit", unit, UNITS)
        self.num_perm = check_int(self, "num_perm", num_perm, low=8, high=65536)
        self.seed = check_int(self, "seed", seed, low=0)

    def score(self, groups: Groups) -> np.ndarray:
        if self.answer_pattern is not None:
            share, has = answer_agreement(final_answers(groups.flat_texts(), self.answer_pattern), groups.shape)
            return np.where(has, share, NO_ANSWER)
        sim = similarity_matrices(groups, self.ngram, self.similarity, self.unit, self.num_perm, self.seed)
        return agreement(sim)


@hookimpl
def register_filters():
    return [ConsensusFilter]
