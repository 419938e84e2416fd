"""The ``consensus`` filter: agreement with the rest of the group, by text similarity or by answer."""

from __future__ import annotations

import numpy as np
import pytest

from gfpo_filters import FilterParameterError, Groups, load_filter
from gfpo_filters.filters.consensus import agreement, answer_agreement, final_answers
from gfpo_filters.filters.diversity import similarity_matrices


def test_majority_answer_wins_and_answer_pattern_extracts():
    group = [
        "3 + 4 = 7, so #### 7",
        "first 12, then #### 42",
        "I get #### 42 ",
        "#### 41",
        "no final answer here",
        "#### 40 at first; no: #### 42",
    ]
    f = load_filter("consensus", answer_pattern=r"####\s*(\S+)")
    scores = np.array(f([group], [[1.0] * 6])[0])
    # answers 7, 42, 42, 41, none, 42 (the last match): 42 has 2 others of 5, 7 and 41 none, none = -1
    np.testing.assert_allclose(scores, [0.0, 0.4, 0.4, 0.0, -1.0, 0.4])
    assert np.flatnonzero(f.select(Groups([group], [[1.0] * 6]), 3)[0]).tolist() == [1, 2, 5]


def test_pattern_without_a_group_compares_the_whole_match():
    assert final_answers(["x = 3 and y = 4", "none", "5"], r"\d+") == ["4", None, "5"]
    share, has = answer_agreement(["4", None, "4", "5"], (1, 4))
    np.testing.assert_allclose(share, [[1 / 3, 0, 1 / 3, 0]])
    assert has.tolist() == [[True, False, True, True]]


def test_text_consensus_is_the_mean_similarity_to_the_rest():
    group = ["a b c d", "a b c d", "a b c e", "x y z w"]
    f = load_filter("consensus", ngram=2, similarity="jaccard")
    scores = np.array(f([group], [[1.0] * 4])[0])
    # bigram Jaccard: 0-1 = 1, 0-2 = 1-2 = 2/4, the fourth shares nothing
    np.testing.assert_allclose(scores, [(1 + 0.5) / 3, (1 + 0.5) / 3, (0.5 + 0.5) / 3, 0.0])
    sim = similarity_matrices(Groups([group], [[1.0] * 4]), ngram=2, similarity="jaccard")
    np.testing.assert_array_equal(scores, agreement(sim)[0])  # the diversity filter's engine, reused


def test_several_groups_at_once_and_groups_of_one():
    f = load_filter("consensus", answer_pattern=r"answer (\d+)")
    scores = np.array(f([["answer 1", "answer 1", "answer 2"], ["answer 5", "answer 6", "answer 6"]], np.ones((2, 3))))
    np.testing.assert_allclose(scores, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    assert load_filter("consensus")([["only one"]], [[1.0]]) == [[0.0]]


@pytest.mark.parametrize(
    "params, name",
    [
        ({"answer_pattern": "(unclosed"}, "answer_pattern"),
        ({"answer_pattern": 42}, "answer_pattern"),
        ({"ngram": 0}, "ngram"),
        ({"similarity": "cosine"}, "similarity"),
        ({"unit": "bytes"}, "unit"),
        ({"num_perm": 4}, "num_perm"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_name_the_filter_and_parameter(params, name):
    with pytest.raises(FilterParameterError, match=rf"'consensus'.*'{name}'"):
        load_filter("consensus", **params)


def test_registered_with_documented_defaults():
    f = load_filter("consensus")
    assert f.params == {
        "answer_pattern": None,
        "ngram": 3,
        "similarity": "auto",
        "unit": "auto",
        "num_perm": 128,
        "seed": 0,
    }
    assert f.deterministic
