"""Tests of the target_length plugin: hand-computed scores, parameter errors, registration, conformance."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

tl = pytest.importorskip(
    "gfpo_filters_target_length",
    reason="the example plugin is not installed: pip install -e plugins/gfpo-filters-target-length",
)

from gfpo_filters import FilterParameterError, load_filter, reset_registry, topk_mask  # noqa: E402
from gfpo_filters.testing import check_filter  # noqa: E402

TargetLengthFilter = tl.TargetLengthFilter


@pytest.fixture(autouse=True)
def fresh_registry():
    reset_registry()
    yield
    reset_registry()


def test_exact_mode_scores_distance_to_target():
    f = TargetLengthFilter(target=10)
    # lengths 4, 10, 13, 30 -> |L - 10| = 6, 0, 3, 20
    scores = f(
        group_completions=[["a", "b", "c", "d"]],
        group_rewards=[[1.0, 0.0, 1.0, 1.0]],
        completion_lengths=[[4, 10, 13, 30]],
    )
    assert scores == [[-6.0, 0.0, -3.0, -20.0]]
    assert topk_mask(np.array(scores), 2).tolist() == [[False, True, True, False]]


def test_max_mode_penalises_only_the_excess():
    f = TargetLengthFilter(target=10, mode="max")
    scores = f(
        group_completions=[["a", "b", "c", "d"]],
        group_rewards=[[1.0, 0.0, 1.0, 1.0]],
        completion_lengths=[[4, 10, 13, 30]],
    )
    assert scores == [[0.0, 0.0, -3.0, -20.0]]
    # Within budget the completions tie; ties go to the earlier one.
    assert topk_mask(np.array(scores), 1).tolist() == [[True, False, False, False]]


def test_falls_back_to_characters_and_uses_token_ids_when_given():
    f = TargetLengthFilter(target=3)
    texts = [["ab", "abcdef", "abc"], ["", "a", "abcd"]]
    rewards = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    # characters: 2, 6, 3 / 0, 1, 4  ->  -1, -3, 0 / -3, -2, -1
    assert f(group_completions=texts, group_rewards=rewards) == [[-1.0, -3.0, 0.0], [-3.0, -2.0, -1.0]]
    ids = [[[1] * 5, [1] * 3, [1]], [[1, 2], [], [1, 2, 3, 4, 5, 6]]]
    # token ids: 5, 3, 1 / 2, 0, 6  ->  -2, 0, -2 / -1, -3, -3
    assert f(group_completions=texts, group_rewards=rewards, completion_ids=ids) == [
        [-2.0, 0.0, -2.0],
        [-1.0, -3.0, -3.0],
    ]


def test_tokenizer_parameter_counts_tokens():
    f = TargetLengthFilter(target=2, tokenizer=str.split)
    scores = f(group_completions=[["one", "one two", "one two three four"]], group_rewards=[[1.0, 1.0, 1.0]])
    assert scores == [[-1.0, 0.0, -2.0]]


def test_missing_reward_is_ranked_last_even_at_the_target():
    f = TargetLengthFilter(target=5)
    scores = np.array(
        f(group_completions=[["x", "y", "z"]], group_rewards=[[None, 0.0, 1.0]], completion_lengths=[[5, 9, 1]])
    )
    # raw -|L-5| = 0, -4, -4; completion 0 has no reward, so it goes below both others
    assert scores[0, 0] < scores[0, 1] == scores[0, 2]
    assert topk_mask(scores, 2).tolist() == [[False, True, True]]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"target": -1}, "parameter 'target': must be finite and >= 0"),
        ({"target": float("inf")}, "parameter 'target': must be finite"),
        ({"target": "512"}, "parameter 'target': must be a number"),
        ({"target": True}, "parameter 'target': must be a number"),
        ({"target": 10, "mode": "min"}, "parameter 'mode': must be one of"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(FilterParameterError, match=message.replace("(", r"\(")):
        TargetLengthFilter(**params)


def _installed() -> bool:
    try:
        importlib.metadata.distribution("gfpo-filters-target-length")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_install = pytest.mark.skipif(
    not _installed(), reason="entry point needs: pip install -e plugins/gfpo-filters-target-length"
)


@needs_install
def test_registered_through_the_entry_point():
    import gfpo_filters

    f = load_filter("target_length", target=256)
    assert isinstance(f, TargetLengthFilter) and f.target == 256
    info = {i.name: i for i in gfpo_filters.list_filters()}["target_length"]
    assert info.provider == "gfpo-filters-target-length"
    assert info.plugin == "gfpo-filters-target-length:target_length"
    with pytest.raises(FilterParameterError, match="needs parameter"):
        load_filter("target_length")


@needs_install
def test_blocked_by_environment(monkeypatch):
    import gfpo_filters

    monkeypatch.setenv("GFPO_FILTERS_BLOCK_PLUGINS", "gfpo-filters-target-length")
    assert "target_length" not in {i.name for i in gfpo_filters.list_filters()}


# ---------------------------------------------------------------------- the conformance suite
def test_conformance_all_checks_at_once():
    report = check_filter(TargetLengthFilter, target=40)
    assert report.speed["completions_per_s"] > 0
    check_filter(TargetLengthFilter, target=0, mode="max")


@pytest.mark.gfpo_filter(TargetLengthFilter, target=64)
@pytest.mark.gfpo_filter(TargetLengthFilter, target=64, mode="max")
def test_conformance_one_test_per_property(gfpo_check):
    gfpo_check()
