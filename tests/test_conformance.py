"""The conformance suite: every built-in passes it, and every check catches a filter broken on purpose."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gfpo_filters
from gfpo_filters import GroupFilter, Groups
from gfpo_filters.errors import UnknownFilterError
from gfpo_filters.testing import (
    CHECKS,
    ConformanceError,
    check_filter,
    checks_for,
    generate_case,
    parametrize_with_checks,
    run_check,
    run_checks,
)

pytest_plugins = ["pytester"]


def _learned_params() -> dict:
    torch = pytest.importorskip("torch")

    class ShorterFirst(torch.nn.Module):  # the smallest model the learned filter accepts: model(batch) -> (B,)
        def forward(self, batch):
            return -batch.lengths.float()

    return {"model": ShorterFirst()}


# Built-ins that cannot be built without parameters, and what to check them with (a dict, or a
# function returning one when building the parameters is expensive).
REQUIRED_PARAMS = {
    "max_variance": {"k": 2},
    "weighted": {"filters": ["token_efficiency", "length"], "weights": [1.0, 0.5]},
    "chain": {"filters": [("reward", {"threshold": 1.0}), "length"]},
    "learned": _learned_params,
}
# More parameter sets worth checking.
EXTRA_PARAMS = [
    ("reward", {"threshold": 0.5}),
    ("random", {"seed": 7}),
    ("token_efficiency", {"reward_bound": 1.0}),
    ("weighted", {"filters": ["random", "length"], "normalize": "zscore"}),
]


def _builtins() -> list[str]:
    names = sorted(i.name for i in gfpo_filters.list_filters() if i.provider == "gfpo-filters")
    gfpo_filters.reset_registry()
    return names


@pytest.mark.parametrize("name", _builtins())
def test_every_builtin_conforms(name):
    params = REQUIRED_PARAMS.get(name, {})
    params = params() if callable(params) else params
    try:
        report = check_filter(name, **params)
    except gfpo_filters.FilterParameterError as e:  # pragma: no cover - only when a new built-in needs parameters
        pytest.fail(f"built-in {name!r} needs parameters to be checked: add them to REQUIRED_PARAMS ({e})")
    assert report.passed == list(CHECKS)
    assert report.speed["completions_per_s"] > 0


@pytest.mark.parametrize("name, params", EXTRA_PARAMS, ids=[f"{n}-{p}" for n, p in EXTRA_PARAMS])
def test_builtins_with_other_parameters_conform(name, params):
    check_filter(name, **params)


def test_max_variance_without_k_fails_only_where_no_k_reaches_it():
    # Without a k parameter it can only work when the trainer passes num_remains_in_group:
    # the suite reports that (a clear parameter error), and the extra-kwargs check passes.
    with pytest.raises(ConformanceError, match="max_variance needs k"):
        run_check("max_variance", "output_type")
    run_check("max_variance", "extra_kwargs")


# ====================================================================== broken filters
class _Base(GroupFilter):
    name = "broken"
    description = "a filter broken on purpose"

    def score(self, groups: Groups) -> np.ndarray:
        return -groups.lengths.astype(np.float64)


class NoDescription(_Base):
    description = ""


class ForgetsParams(_Base):
    def __init__(self, target: int = 3) -> None:
        self._target = target  # not stored as self.target: params cannot round-trip


class ReturnsArray(_Base):
    def __call__(self, group_completions, group_rewards, **kwargs):
        return self.score_groups(Groups.from_call(group_completions, group_rewards, **kwargs))


class ReturnsInts(_Base):
    def __call__(self, group_completions, group_rewards, **kwargs):
        return [[int(x) for x in row] for row in super().__call__(group_completions, group_rewards, **kwargs)]


class FixedBuffer(_Base):
    def score(self, groups):
        out = np.zeros((groups.n_groups, 64))  # assumes G <= 64
        g = min(groups.group_size, 64)
        out[:, :g] = -groups.lengths[:, :g]
        return out[:, : groups.group_size]


class Squeezes(_Base):
    def score(self, groups):
        return np.squeeze(-groups.lengths.astype(np.float64))  # (G,) for one group


class DividesByStd(_Base):
    def score(self, groups):
        r = groups.rewards
        with np.errstate(invalid="ignore", divide="ignore"):
            return (r - np.nanmean(r, axis=1, keepdims=True)) / np.nanstd(r, axis=1, keepdims=True)


class SecretlyRandom(_Base):
    def score(self, groups):
        return np.random.random(groups.shape)  # deterministic = True is a lie


class UnseededRandom(_Base):
    deterministic = False

    def __init__(self) -> None:
        self._rng = np.random.default_rng()  # no seed: fresh instances disagree

    def score(self, groups):
        return self._rng.random(groups.shape)


class NaNOnTop(_Base):
    def score_groups(self, groups):  # skips the base class's demotion of missing rewards
        return np.where(groups.valid, self.score(groups), 1e9)


class PerCharacterPython(_Base):
    def score(self, groups):
        return np.array([[1.0 / len(t) for t in g] for g in groups.completions])


class CountsMessages(_Base):
    def score(self, groups):  # len() of a message list is 1: not the text's length
        return np.array([[-float(len(c)) for c in g] for g in groups.raw_completions])


class StrictSignature(_Base):
    def __call__(self, group_completions, group_rewards):  # no **kwargs
        return super().__call__(group_completions, group_rewards)


class SortsRewardsInPlace(_Base):
    def __call__(self, group_completions, group_rewards, **kwargs):
        out = super().__call__(group_completions, group_rewards, **kwargs)
        for row in group_rewards:
            if isinstance(row, list):
                row.sort(key=lambda x: -1e300 if x is None else x)
        return out


class SmallBatchesOnly(_Base):
    def score(self, groups):
        if groups.n_groups > 32:
            raise MemoryError("pretend the batch does not fit")
        return super().score(groups)


class ForgetsItsGenerator(_Base):
    deterministic = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def score(self, groups):  # draws on with every call, but state_dict() does not save the generator
        return self._rng.random(groups.shape)


class EagerPruning(_Base):
    """Keeps the shortest (score -length), and claims an exact pruning rule that assumes a running completion writes
    at least two more tokens: it may write only its end-of-sequence token, and then beat a finished one."""

    def score(self, groups):
        return -groups.get_lengths().astype(float)

    def pruning_rule(self):
        from gfpo_filters.pruning import ScoreBound

        class TwoMore(ScoreBound):
            def finished_scores(self, lengths, rewards):
                return -lengths

            def running_bounds(self, lengths):
                return -(lengths + 2.0)

        return TwoMore()


class MissingLast(_Base):
    """Correct filter used to show a check passes: ranks by reward."""

    def score(self, groups):
        return groups.rewards.copy()


BROKEN = [
    # (filter class, check that must catch it, words the message must contain)
    (NoDescription, "metadata", "description = ''"),
    (ForgetsParams, "metadata", "parameter(s) 'target' not stored as attributes"),
    (ReturnsArray, "output_type", "returned a ndarray, not a list"),
    (ReturnsInts, "output_type", "is a int, not a float"),
    (FixedBuffer, "group_sizes", "shape (1, 64); expected (n_groups, G) = (1, 256)"),
    (Squeezes, "batch_sizes", "shape (2,); expected (n_groups, G) = (1, 2)"),
    (DividesByStd, "reward_values", "non-finite score"),
    (SecretlyRandom, "determinism", "declares deterministic = True"),
    (UnseededRandom, "determinism", "fresh instances with the same params give scores that differ"),
    (NaNOnTop, "missing_rewards", "has no reward but scored 1000000000.0"),
    (PerCharacterPython, "empty_strings", "ZeroDivisionError"),
    (CountsMessages, "message_completions", "ranked differently as messages"),
    (StrictSignature, "extra_kwargs", "unexpected keyword argument"),
    (SortsRewardsInPlace, "no_mutation", "argument group_rewards was modified"),
    (ForgetsItsGenerator, "state", "a fresh instance scores group 0 as"),
    (SmallBatchesOnly, "speed", "MemoryError: pretend the batch does not fit"),
    (EagerPruning, "pruning", "(exact) stopped completions"),
]


def test_every_check_has_a_broken_filter():
    assert {check for _, check, _ in BROKEN} == set(CHECKS)


@pytest.mark.parametrize("cls, check, words", BROKEN, ids=[f"{c.__name__}-{k}" for c, k, _ in BROKEN])
def test_check_catches_broken_filter(cls, check, words):
    with pytest.raises(ConformanceError) as info:
        run_check(cls, check)
    message = str(info.value)
    assert info.value.check == check
    assert f"breaks '{check}'" in message
    assert CHECKS[check].prop in message
    assert words in message, message
    # The well-behaved base passes the same check.
    run_check(_Base, check)


def test_missing_reward_check_passes_a_reward_filter_and_names_the_group():
    run_check(MissingLast, "missing_rewards")
    with pytest.raises(ConformanceError) as info:
        run_check(NaNOnTop, "missing_rewards")
    message = str(info.value)
    # Shrunk to a single group, with a reproducer that runs.
    assert "shrunk from 5 group(s)" in message
    assert ".subset([" in message


def test_reproducer_in_the_message_reproduces_the_failure():
    with pytest.raises(ConformanceError) as info:
        run_check(NaNOnTop, "missing_rewards")
    lines = str(info.value).splitlines()
    start = lines.index("  reproduce:") + 1
    code = []
    for line in lines[start:]:
        if not line.startswith("      "):
            break
        code.append(line[6:])
    assert code[0] == "from gfpo_filters.testing import generate_case"
    assert code[1] == f"from {__name__} import NaNOnTop"
    namespace: dict = {}
    exec("\n".join(code[:1] + code[2:]), {"NaNOnTop": NaNOnTop}, namespace)
    case, scores = namespace["case"], np.array(namespace["scores"])
    assert case.n_groups == 1
    valid = case.valid[0]
    assert (~valid).any() and scores[0][~valid].max() >= scores[0][valid].min()


def test_written_out_call_is_given_for_small_inputs():
    with pytest.raises(ConformanceError) as info:
        run_check(PerCharacterPython, "empty_strings")
    message = str(info.value)
    assert "the same call, written out:" in message
    literal = message.split("the same call, written out:\n")[1].strip()
    with pytest.raises(ZeroDivisionError):
        eval(literal, {"f": PerCharacterPython(), "np": np})


def test_check_filter_lists_every_failure_and_report_on_success():
    with pytest.raises(ConformanceError) as info:
        check_filter(PerCharacterPython)
    message = str(info.value)
    # Empty strings are in the inputs of empty_strings, and of no_mutation (which then reports the crash).
    assert info.value.check == "empty_strings,no_mutation"
    assert message.startswith("2 of 14 conformance checks failed for broken():")
    assert "breaks 'empty_strings'" in message and "breaks 'no_mutation'" in message
    report = check_filter(_Base)
    assert report.passed == list(CHECKS) and str(report).startswith("broken(): 14 checks passed; ")


def test_subjects_names_classes_and_instances():
    check_filter(gfpo_filters.load_filter("random", seed=3))
    check_filter("random", seed=3)
    with pytest.raises(UnknownFilterError, match="Did you mean 'length'"):
        check_filter("lenght")
    with pytest.raises(TypeError, match="not an instance"):
        check_filter(_Base(), seed=1)
    with pytest.raises(TypeError, match="got int"):
        check_filter(3)
    with pytest.raises(KeyError, match="unknown check 'speeed'"):
        run_check(_Base, "speeed")
    assert run_checks(_Base, checks=["speed"]).passed == ["speed"]


def test_generated_cases_are_reproducible_from_their_recipe():
    from gfpo_filters.testing import Case  # noqa: F401 - used by eval of the recipe

    case = generate_case(
        5, n_groups=3, group_size=7, rewards="mixed", missing=0.3, empty=0.2, extra="flat", per_group_k=True
    )
    again = eval(case.recipe, {"generate_case": generate_case})
    assert again.texts == case.texts
    np.testing.assert_array_equal(again.rewards, case.rewards)
    small = case.subset([2])
    assert small.texts == [case.texts[2]] and small.recipe.endswith(".subset([2])")
    kw = case.call_kwargs()
    assert len(kw["completion_ids"]) == 21 and len(kw["prompts"]) == 21 and kw["num_remains_in_group"].shape == (3,)
    assert kw["group_rewards"][0] is not case.call_kwargs()["group_rewards"][0]  # fresh objects every call
    missing = generate_case(1, n_groups=3, group_size=4, missing_groups=1, empty_groups=1, container="list")
    assert missing.call_kwargs()["group_rewards"][2] == [None] * 4
    assert missing.texts[0] == [""] * 4
    ints = generate_case(1, n_groups=2, group_size=3, rewards="int")
    assert all(type(x) is int for row in ints.call_kwargs()["group_rewards"] for x in row)


def test_checks_for_and_parametrize_with_checks():
    bound = checks_for("random", {"seed": 2})
    assert [b.check for b in bound] == list(CHECKS)
    assert bound[0].id == "random(seed=2)-metadata"
    assert bound[-1]()["completions_per_s"] > 0
    mark = parametrize_with_checks(["length", ("random", {"seed": 1})], checks=["metadata"])
    assert mark.args[0] == "gfpo_check"
    assert [b.id for b in mark.args[1]] == ["length-metadata", "random(seed=1)-metadata"]


@parametrize_with_checks([("random", {"seed": 4})], checks=["determinism", "missing_rewards"])
def test_parametrize_with_checks_works_as_a_decorator(gfpo_check):
    gfpo_check()


@pytest.mark.gfpo_filter("token_efficiency")
def test_marker_parametrises_one_test_per_check(gfpo_check, request):
    assert request.node.callspec.id.startswith("token_efficiency-")
    gfpo_check()


# ====================================================================== the pytest plugin
def test_plugin_runs_checks_and_reports_failures(pytester):
    pytester.makepyfile(
        textwrap.dedent(
            """
            import numpy as np
            import pytest
            from gfpo_filters import GroupFilter

            class Good(GroupFilter):
                name = "good"
                description = "shortest first"
                def score(self, groups):
                    return -groups.lengths.astype(float)

            class Bad(Good):
                name = "bad"
                def score_groups(self, groups):
                    return np.where(groups.valid, self.score(groups), 1e9)

            # A class alone would be taken as the thing to decorate: pytest's rule for marks; hence with_args.
            @pytest.mark.gfpo_filter.with_args(Good)
            @pytest.mark.gfpo_filter.with_args(Bad)
            def test_contract(gfpo_check):
                gfpo_check()

            def test_fixture(gfpo_check_filter):
                assert gfpo_check_filter(Good).passed
            """
        )
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    # Good passes every check, Bad every one but missing_rewards; plus the fixture test.
    result.assert_outcomes(passed=2 * len(CHECKS) - 1 + 1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_contract?bad-missing_rewards?*",
            "*filter bad() breaks 'missing_rewards'*",
            "*gfpo-filters conformance: speed*",
            "good(): * completions/s*",
        ]
    )


def test_plugin_says_when_the_marker_is_missing(pytester):
    pytester.makepyfile("def test_contract(gfpo_check):\n    gfpo_check()\n")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*takes 'gfpo_check' but has no @pytest.mark.gfpo_filter(filter, **params) marker*"])
    assert result.ret != 0


def test_plugin_module_is_cheap_and_side_effect_free():
    code = (
        "import sys, warnings\n"
        "import numpy, pluggy  # what 'import gfpo_filters' loads anyway (numpy adds warning filters)\n"
        "before = list(warnings.filters)\n"
        "import gfpo_filters.pytest_plugin\n"
        "import gfpo_filters.registry as r\n"
        "heavy = [m for m in ('torch', 'trl', 'matplotlib', 'scipy.stats', 'gfpo_filters.testing', 'transformers') if m in sys.modules]\n"  # noqa: E501
        "assert not heavy, heavy\n"
        "assert r._registry is None, 'the registry was built at import'\n"
        "assert warnings.filters == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_docs_list_every_check():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    missing = [name for name in CHECKS if f"| `{name}` |" not in doc]
    assert not missing, f"docs/plugins.md does not describe the check(s) {missing}"
