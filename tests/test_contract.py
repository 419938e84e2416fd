"""The GroupFilter contract: input validation and output checks, with the messages users see."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from gfpo_filters import FilterOutputError, GroupFilter, GroupInputError, Groups, load_filter
from gfpo_filters.rollouts import read_rollouts


class Echo(GroupFilter):
    """Returns whatever it was told to, to exercise the output checks."""

    name = "echo"

    def __init__(self, output=None):
        self.output = output

    def score(self, groups):
        return self.output(groups) if callable(self.output) else self.output


def run(output, completions=(("a", "b"),), rewards=((0.0, 1.0),), **kwargs):
    return Echo(output)(
        group_completions=[list(c) for c in completions], group_rewards=[list(r) for r in rewards], **kwargs
    )


@pytest.mark.parametrize(
    "completions, rewards, match",
    [
        ([["a", "b"], ["c"]], [[0, 0], [0]], r"ragged: group 0 has 2 completions but group 1 has 1"),
        ([["a", "b"]], [[0, 0, 0]], r"group_rewards has shape \(1, 3\), but group_completions is 1 groups x 2"),
        ([["a", "b"]], [[0, "x"]], r"group_rewards\[0\]\[1\] = 'x' is not a number"),
        ([["a", "b"]], [[0, None], [1]], r"expected 1 rows, got 2"),
        ([["a", "b"], ["c", "d"]], [[0, None], [1]], r"group_rewards\[1\] must hold 2 rewards"),
        ("ab", [[0]], r"must be a list of groups"),
        ([["a", 3]], [[0, 0]], r"completion \[0\]\[1\]: expected a string or a list of messages, got int"),
        ([[[{"role": "assistant"}], "b"]], [[0, 0]], r"completion \[0\]\[0\].*'content'"),
        ([[]], [[]], r"groups are empty"),
    ],
)
def test_malformed_input_is_named(completions, rewards, match):
    with pytest.raises(GroupInputError, match=match):
        load_filter("length")(group_completions=completions, group_rewards=rewards)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"completion_lengths": [[1, 2, 3]]}, r"completion_lengths must hold 2 lengths"),
        ({"completion_lengths": [[1, -2]]}, r"non-negative"),
        ({"num_remains_in_group": 3}, r"num_remains_in_group=3 \(group 0\) is out of range for groups of G=2"),
        ({"num_remains_in_group": 0}, r"out of range"),
        ({"num_remains_in_group": [1, 2]}, r"one int per group \(1\)"),
        ({"completion_ids": [[1, 2, 3]]}, r"completion_ids must hold 1 groups of 2 token-id lists"),
        ({"prompts": ["p", "q", "r"]}, r"one prompt per group \(1\), got 3"),
    ],
)
def test_malformed_extra_arguments_are_named(kwargs, match):
    with pytest.raises(GroupInputError, match=match):
        load_filter("length")(group_completions=[["a", "bb"]], group_rewards=[[0, 1]], **kwargs)


def test_extra_arguments_in_both_layouts():
    g = Groups.from_call(
        [["a", "b"], ["c", "d"]],
        [[0, 0], [0, 0]],
        completion_ids=[[1], [2, 3], [4], []],
        prompts=["p", "p", "q", "q"],
        num_remains_in_group=np.int64(1),
        unknown_kwarg=object(),
    )
    assert g.completion_ids == [[[1], [2, 3]], [[4], []]]
    assert g.lengths.tolist() == [[1, 2], [1, 0]] and g.prompts == ["p", "q"] and g.k.tolist() == [1, 1]


def test_completion_ids_as_tensors():
    torch = pytest.importorskip("torch")
    flat = [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4, 5, 6]), torch.tensor([], dtype=torch.long)]
    g = Groups([["a", "b"], ["c", "d"]], [[0, 0], [0, 0]], completion_ids=flat)
    assert g.lengths.tolist() == [[2, 1], [3, 0]] and g.length_unit == "tokens"
    nested = Groups([["a", "b"]], [[0, 0]], completion_ids=[[torch.tensor([1]), torch.tensor([2, 3])]])
    assert nested.lengths.tolist() == [[1, 2]]


def test_wrong_output_shape_names_the_filter():
    with pytest.raises(FilterOutputError, match=r"filter 'echo' returned scores of shape \(3,\); expected .* \(1, 2\)"):
        run(np.zeros(3))


def test_non_numeric_output_names_the_filter():
    with pytest.raises(FilterOutputError, match=r"filter 'echo' returned scores that are not numbers"):
        run([["high", "low"]])


def test_nan_score_on_a_scored_completion_is_an_error():
    with pytest.raises(FilterOutputError, match=r"non-finite score \(nan\) for group 0, completion 1 \(reward 1.0\)"):
        run([[0.0, float("nan")]])


def test_nan_score_where_reward_is_missing_is_allowed_and_demoted():
    out = run(lambda g: g.rewards * 10, rewards=((float("nan"), 1.0, 0.0),), completions=(("a", "b", "c"),))
    assert np.isfinite(out).all()
    assert out[0][1] == 10.0 and out[0][2] == 0.0 and out[0][0] < 0.0


def test_missing_reward_with_high_score_is_demoted_but_order_among_missing_kept():
    out = np.array(
        run(np.array([[100.0, 5.0, 50.0, 1.0]]), completions=(("a",) * 4,), rewards=((None, 0.0, None, 0.0),))
    )
    order = np.argsort(-out[0], kind="stable").tolist()
    assert order == [1, 3, 0, 2]


def test_all_rewards_missing_keeps_the_filter_order():
    out = np.array(run(np.array([[3.0, 1.0, 2.0]]), completions=(("a",) * 3,), rewards=((None,) * 3,)))
    assert np.argsort(-out[0]).tolist() == [0, 2, 1]


def test_torch_output_is_accepted():
    torch = pytest.importorskip("torch")
    assert run(lambda g: torch.tensor([[2.0, 1.0]])) == [[2.0, 1.0]]


def test_filters_do_not_mutate_their_inputs():
    completions = [["aaa", [{"role": "assistant", "content": "b"}]], ["cc", "d"]]
    rewards = [[1.0, None], [0.5, 0.25]]
    lengths = [[3, 1], [2, 1]]
    before = copy.deepcopy((completions, rewards, lengths))
    for name in ("length", "token_efficiency", "reward", "max_variance", "random"):
        load_filter(name)(
            group_completions=completions, group_rewards=rewards, completion_lengths=lengths, num_remains_in_group=1
        )
    assert (completions, rewards, lengths) == before


def test_rollout_reader_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"prompt": "p", "completions": [{"text": "a", "reward": 1}]}\n{"prompt": "q", "completions": [{"text": 5}]}\n'
    )
    with pytest.raises(GroupInputError, match=r"r.jsonl:2: completion 0 must be an object with a string 'text'"):
        read_rollouts(path)
    path.write_text('{"prompt": "p", "completions": [{"text": "a", "reward": "high"}]}\n')
    with pytest.raises(GroupInputError, match=r"r.jsonl:1: completion 0: 'reward' must be a number or null"):
        read_rollouts(path)
    path.write_text("not json\n")
    with pytest.raises(GroupInputError, match=r"r.jsonl:1: not valid JSON"):
        read_rollouts(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rollouts(tmp_path / "missing.jsonl")


def test_rollout_reader_on_real_data(data_dir):
    groups = read_rollouts(data_dir / "gsm8k_g4.jsonl")
    assert len(groups) == 1319 and {g.size for g in groups} == {4}
    first = groups[0]
    assert first.rewards == [0.0, 0.0, 0.0, 1.0] and first.correct == [0.0, 0.0, 0.0, 1.0]
    assert all(r in (0.0, 1.0) for g in groups for r in g.rewards)
