"""Conformance suite: does a group filter honour the :class:`~gfpo_filters.GroupFilter` contract?

Plugin authors run it in their own test suite::

    from gfpo_filters.testing import check_filter

    def test_contract():
        check_filter("target_length", target=512)   # or the class, or an instance

``check_filter`` runs every check on many generated inputs and raises
:class:`ConformanceError` (an ``AssertionError``) naming each property that broke, the input
it broke on (shrunk to one group when possible) and a few lines of Python that reproduce it.
On success it returns a :class:`ConformanceReport` with a speed figure.

One pytest test per property, with the pytest plugin that gfpo-filters registers
(``pytest11`` entry point ``gfpo_filters``)::

    @pytest.mark.gfpo_filter("target_length", target=512)
    def test_contract(gfpo_check):
        gfpo_check()

or, without the plugin (``-p no:gfpo_filters``), :func:`parametrize_with_checks`::

    @parametrize_with_checks([("target_length", {"target": 512})])
    def test_contract(gfpo_check):
        gfpo_check()

The properties are listed in :data:`CHECKS`. Timings are reported, never asserted.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gfpo_filters.base import GroupFilter, check_filter_class
from gfpo_filters.errors import GFPOFilterWarning
from gfpo_filters.selection import ranks

__all__ = [
    "CHECKS",
    "BoundCheck",
    "Case",
    "ConformanceError",
    "ConformanceReport",
    "check_filter",
    "checks_for",
    "generate_case",
    "parametrize_with_checks",
    "run_check",
    "run_checks",
]


class ConformanceError(AssertionError):
    """A filter broke a property of the contract; the message says which, on what input, and how to reproduce."""

    def __init__(self, message: str, check: str = "", filter_label: str = "") -> None:
        super().__init__(message)
        self.check, self.filter_label = check, filter_label


# ====================================================================== generated inputs
_WORDS = (
    "the of and to is we so let then thus step answer total sum each more less than equal "
    "compute check first second next final value number result because therefore hence "
    "x y n k 2 3 7 12 42 100 = + - * / ( ) . , ; : ? \\boxed{7} \\frac{1}{2} $x^2$ "
    "naïve über café Δx 数学 答案 🙂 ﬁnal \n \n\n"
).split(" ")
_REWARD_KINDS = ("continuous", "binary", "int", "tied", "large", "negative", "small")
_CONTAINERS = ("list", "nan-list", "ndarray", "float32", "int-list")


@dataclass
class Case:
    """One generated batch: ``n_groups`` groups of ``group_size`` completions, plus how to call a filter on it.

    ``call_kwargs()`` builds fresh argument objects for every call (so one call cannot change
    another's input); ``subset([i])`` keeps only some groups; ``recipe`` is Python that
    rebuilds this exact case.
    """

    texts: list[list[str]]
    rewards: np.ndarray  # float64 (n, G), NaN = missing
    container: str = "list"  # how rewards are passed: list (None = missing), nan-list, ndarray, float32, int-list
    messages: str | None = None  # None: strings; "content": [{"role", "content": str}]; "parts": content parts
    extra: str | None = None  # None, "nested" or "flat": pass completion_ids, completion_lengths, prompts, ...
    ids: list[list[list[int]]] | None = None
    k: list[int] | None = None  # num_remains_in_group per group (with extra)
    recipe: str = ""

    @property
    def n_groups(self) -> int:
        return len(self.texts)

    @property
    def group_size(self) -> int:
        return len(self.texts[0]) if self.texts else 0

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.rewards)

    def subset(self, groups: Sequence[int]) -> Case:
        groups = list(groups)
        return Case(
            texts=[self.texts[i] for i in groups],
            rewards=self.rewards[groups],
            container=self.container,
            messages=self.messages,
            extra=self.extra,
            ids=None if self.ids is None else [self.ids[i] for i in groups],
            k=None if self.k is None else [self.k[i] for i in groups],
            recipe=f"{self.recipe}.subset({groups})",
        )

    def with_(self, **changes: Any) -> Case:
        """A copy with other passing conventions (same texts and rewards)."""
        args = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        return Case(**{**self.__dict__, **changes, "recipe": f"{self.recipe}.with_({args})"})

    # ---------------------------------------------------------------- the call
    def completions(self) -> list[list[Any]]:
        if self.messages is None:
            return [list(g) for g in self.texts]
        if self.messages == "content":
            return [[[{"role": "assistant", "content": t}] for t in g] for g in self.texts]
        if self.messages == "parts":
            return [[[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in g] for g in self.texts]
        raise ValueError(f"unknown messages mode {self.messages!r}")

    def group_rewards(self) -> Any:
        r = self.rewards
        if self.container == "list":
            return [[None if math.isnan(x) else x for x in row] for row in r.tolist()]
        if self.container == "nan-list":
            return r.tolist()
        if self.container == "ndarray":
            return r.copy()
        if self.container == "float32":
            return r.astype(np.float32)
        if self.container == "int-list":  # Python ints (reward functions may return them; TRL passes floats)
            return [[None if math.isnan(x) else int(x) for x in row] for row in r.tolist()]
        raise ValueError(f"unknown reward container {self.container!r}")

    def call_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"group_completions": self.completions(), "group_rewards": self.group_rewards()}
        if self.extra is None:
            return kw
        n, g = self.n_groups, self.group_size
        ids = [[list(c) for c in grp] for grp in (self.ids or [])]
        lengths = [[len(c) for c in grp] for grp in ids]
        prompts = [f"prompt {i}: what is {i} + {i}?" for i in range(n)]
        if self.extra == "nested":
            kw.update(completion_ids=ids, completion_lengths=lengths, prompts=prompts)
            kw["num_remains_in_group"] = list(self.k) if self.k else max(1, g // 2)
        elif self.extra == "flat":  # the layout of a trainer's flat batch: n*G rows, prompts repeated
            kw.update(
                completion_ids=[c for grp in ids for c in grp],
                completion_lengths=np.array(lengths, dtype=np.int64).reshape(-1),
                prompts=[p for p in prompts for _ in range(g)],
                num_remains_in_group=np.array(self.k, dtype=np.int64) if self.k else max(1, g // 2),
            )
        else:
            raise ValueError(f"unknown extra mode {self.extra!r}")
        kw["some_future_argument"] = {"step": 0}  # trainers may add arguments: filters must ignore unknown ones
        return kw

    def literal(self, limit: int = 700) -> str | None:
        """The call written out in Python, when it is short enough to read."""
        parts = [f"{key}={_py(value)}" for key, value in self.call_kwargs().items()]
        out = "f(" + ", ".join(parts) + ")"
        return out if len(out) <= limit else None

    def describe(self) -> str:
        bits = [f"{self.n_groups} group(s) x G={self.group_size}", f"rewards as {self.container}"]
        missing = int((~self.valid).sum())
        if missing:
            bits.append(f"{missing} missing")
        empty = sum(t == "" for g in self.texts for t in g)
        if empty:
            bits.append(f"{empty} empty completion(s)")
        if self.messages:
            bits.append(f"message-list completions ({self.messages})")
        if self.extra:
            bits.append(f"extra kwargs ({self.extra})")
        return ", ".join(bits)


def _py(value: Any) -> str:
    """Python source for a value of a call (NaN written as float('nan'), arrays as np.array)."""
    if isinstance(value, np.ndarray):
        return f"np.array({_py(value.tolist())}, dtype=np.{value.dtype})"
    if isinstance(value, float) and math.isnan(value):
        return "float('nan')"
    if isinstance(value, list):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_py(v)}" for k, v in value.items()) + "}"
    return repr(value)


def generate_case(
    seed: int = 0,
    n_groups: int = 4,
    group_size: int = 8,
    *,
    rewards: str = "continuous",
    container: str = "list",
    missing: float = 0.0,
    missing_groups: int = 0,
    empty: float = 0.0,
    empty_groups: int = 0,
    duplicates: float = 0.2,
    messages: str | None = None,
    extra: str | None = None,
    per_group_k: bool = False,
    max_words: int = 60,
) -> Case:
    """A reproducible batch of groups: everything is drawn from ``seed``.

    rewards: ``continuous`` (normal), ``binary`` (0.0/1.0), ``int`` (0/1 as Python ints),
    ``tied`` (one value per group), ``large`` (scale 1e9), ``negative``, ``small`` (scale 1e-9),
    or ``mixed`` (a kind per group). ``missing``: fraction of rewards missing;
    ``missing_groups``: groups with no reward at all; ``empty``/``empty_groups``: the same for
    empty-string completions; ``duplicates``: chance that a completion repeats the previous
    one (ties). ``per_group_k``: with ``extra``, ``num_remains_in_group`` differs per group.
    """
    if n_groups < 1 or group_size < 1:
        raise ValueError("n_groups and group_size must be at least 1")
    args = {
        "seed": seed,
        "n_groups": n_groups,
        "group_size": group_size,
        "rewards": rewards,
        "container": container,
        "missing": missing,
        "missing_groups": missing_groups,
        "empty": empty,
        "empty_groups": empty_groups,
        "duplicates": duplicates,
        "messages": messages,
        "extra": extra,
        "per_group_k": per_group_k,
        "max_words": max_words,
    }
    defaults = generate_case.__kwdefaults__ or {}
    shown = [f"seed={seed}", f"n_groups={n_groups}", f"group_size={group_size}"] + [
        f"{k}={v!r}" for k, v in args.items() if k in defaults and v != defaults[k]
    ]
    recipe = f"generate_case({', '.join(shown)})"

    rng = np.random.default_rng(seed)
    n, g = n_groups, group_size
    vocab = np.array(_WORDS, dtype=object)
    texts: list[list[str]] = []
    for _ in range(n):
        pool = rng.choice(vocab, size=min(24, len(vocab)), replace=False)
        group: list[str] = []
        for j in range(g):
            if j and rng.random() < duplicates:
                group.append(group[-1])
                continue
            words = pool[rng.integers(0, len(pool), int(rng.integers(1, max_words + 1)))]
            group.append(" ".join(words))
        texts.append(group)
    empties = rng.random((n, g)) < empty
    empties[:empty_groups] = True
    texts = [[("" if empties[i, j] else t) for j, t in enumerate(grp)] for i, grp in enumerate(texts)]

    def draw(kind: str, shape: tuple[int, ...]) -> np.ndarray:
        if kind == "continuous":
            return rng.normal(0.0, 1.0, shape)
        if kind in ("binary", "int"):
            return rng.integers(0, 2, shape).astype(np.float64)
        if kind == "tied":
            return np.repeat(rng.normal(0.0, 1.0, (shape[0], 1)), shape[1], axis=1)
        if kind == "large":
            return rng.normal(0.0, 1e9, shape)
        if kind == "negative":
            return -rng.exponential(1.0, shape) - 1.0
        if kind == "small":
            return rng.normal(0.0, 1e-9, shape)
        raise ValueError(f"unknown reward kind {kind!r}; choose from {_REWARD_KINDS} or 'mixed'")

    if rewards == "mixed":
        kinds = rng.choice(np.array(_REWARD_KINDS), n)
        r = np.concatenate([draw(str(kd), (1, g)) for kd in kinds], axis=0)
    else:
        r = draw(rewards, (n, g))
    r = np.where(rng.random((n, g)) < missing, np.nan, r)
    if missing_groups:
        r[n - missing_groups :] = np.nan
    if rewards == "int":
        container = "int-list"  # Python ints; None where missing
    case = Case(texts, r, container=container, messages=messages, extra=extra, recipe=recipe)
    if extra is not None:
        case.ids = [[rng.integers(0, 50_000, len(t.split())).tolist() for t in grp] for grp in texts]
        case.k = rng.integers(1, g + 1, n).tolist() if per_group_k else None
    return case


# ====================================================================== the filter under test
def _kwargs_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


class Subject:
    """The filter under test and how to build fresh instances of it."""

    def __init__(self, filter_or_name: Any, params: Mapping[str, Any] | None = None) -> None:
        from gfpo_filters.registry import get_registry, instantiate, load_filter

        params = dict(params or {})
        self.instance: GroupFilter | None = None
        if isinstance(filter_or_name, str):
            name = filter_or_name
            self.cls = get_registry().get(name).cls  # UnknownFilterError with suggestions
            self._make: Callable[[], GroupFilter] = lambda: load_filter(name, **params)
            self.setup = f"from gfpo_filters import load_filter\nf = load_filter({name!r}{', ' if params else ''}{_kwargs_text(params)})"  # noqa: E501
            self.label = f"{name}({_kwargs_text(params)})"
        elif isinstance(filter_or_name, type) and issubclass(filter_or_name, GroupFilter):
            cls = filter_or_name
            self.cls = cls
            self._make = lambda: instantiate(cls, cls.name or cls.__name__, params)
            self.setup = (
                f"from {cls.__module__} import {cls.__qualname__}\nf = {cls.__qualname__}({_kwargs_text(params)})"
            )
            self.label = f"{cls.name or cls.__qualname__}({_kwargs_text(params)})"
        elif isinstance(filter_or_name, GroupFilter):
            if params:
                raise TypeError(
                    "check_filter(instance, **params): parameters go with a filter name or class, not an instance"
                )
            inst = filter_or_name
            self.cls, self.instance = type(inst), inst
            self._make = self._rebuild_instance
            self.setup = f"from {self.cls.__module__} import {self.cls.__qualname__}\nf = {inst!r}"
            self.label = repr(inst)
        else:
            raise TypeError(
                f"check_filter() takes a filter name, a GroupFilter subclass or instance, got {type(filter_or_name).__name__}"  # noqa: E501
            )
        self.params = params

    def _rebuild_instance(self) -> GroupFilter:
        inst = self.instance
        assert inst is not None
        try:
            return type(inst)(**inst.params)
        except Exception:  # noqa: BLE001 - 'metadata' reports this; the other checks use a copy
            return copy.deepcopy(inst)

    def make(self) -> GroupFilter:
        return self._make()


# ====================================================================== checking machinery
@dataclass(frozen=True)
class Check:
    name: str
    prop: str  # the property, in one sentence
    function: Callable[[Subject, int], Any]


CHECKS: dict[str, Check] = {}


def _check(name: str, prop: str) -> Callable[[Callable[[Subject, int], Any]], Callable[[Subject, int], Any]]:
    def register(function: Callable[[Subject, int], Any]) -> Callable[[Subject, int], Any]:
        CHECKS[name] = Check(name, prop, function)
        return function

    return register


class _Broken(Exception):
    """Internal: a property failed; carries what and where."""

    def __init__(self, problem: str, case: Case | None = None, got: Any = None, note: str = "") -> None:
        super().__init__(problem)
        self.problem, self.case, self.got, self.note = problem, case, got, note


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _call(f: GroupFilter, case: Case) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GFPOFilterWarning)
        return f(**case.call_kwargs())


def _crash(e: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"raised {type(e).__name__}: {e}{where}"


def _validate(out: Any, case: Case) -> tuple[int | None, str] | None:
    """Shape and type of the trainer call's result: list of n lists of G finite floats."""
    n, g = case.n_groups, case.group_size
    if not isinstance(out, list):
        return None, f"returned a {type(out).__name__}, not a list (the trainer call must return list[list[float]])"
    if len(out) != n:
        return None, f"returned {len(out)} rows for {n} groups"
    for i, row in enumerate(out):
        if not isinstance(row, list):
            return i, f"row {i} is a {type(row).__name__}, not a list of floats"
        if len(row) != g:
            return i, f"row {i} holds {len(row)} scores for G={g} completions"
        for j, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, float):
                return i, f"score [{i}][{j}] = {x!r} is a {type(x).__name__}, not a float"
            if not math.isfinite(x):
                return i, (
                    f"score [{i}][{j}] = {x!r} is not finite (TRL's torch.topk ranks NaN above every number; "
                    "the base class maps missing-reward scores to finite values)"
                )
    return None


def _expect(
    subject: Subject, case: Case, prop: Callable[[np.ndarray, Case], tuple[int, str] | None] | None = None
) -> np.ndarray:
    """Call a fresh filter on ``case``; check output type and ``prop``; raise _Broken, shrunk, on failure."""

    def attempt(c: Case) -> tuple[int | None, str, Any] | tuple[None, None, np.ndarray]:
        try:
            out = _call(subject.make(), c)
        except Exception as e:  # noqa: BLE001 - any exception is the finding
            return None, _crash(e), None
        bad = _validate(out, c)
        if bad:
            return bad[0], bad[1], out
        arr = np.array(out, dtype=np.float64)
        if prop is not None:
            bad = prop(arr, c)
            if bad:
                return bad[0], bad[1], out
        return None, None, arr

    group, problem, got = attempt(case)
    if problem is None:
        return got
    # Shrink to one group: the failing one if known, else the first single group that fails.
    candidates = [group] if group is not None else list(range(min(case.n_groups, 16)))
    if case.n_groups > 1:
        for i in candidates:
            small = case.subset([i])
            g2, p2, got2 = attempt(small)
            if p2 is not None:
                raise _Broken(p2, small, got2, note=f"shrunk from {case.describe()} to group {i}")
    raise _Broken(problem, case, got)


def _missing_last(arr: np.ndarray, case: Case) -> tuple[int, str] | None:
    valid = case.valid
    lo_valid = np.where(valid, arr, np.inf).min(axis=1)
    hi_missing = np.where(valid, -np.inf, arr).max(axis=1)
    bad = hi_missing >= lo_valid
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    j_m = int(np.argmax(np.where(valid[i], -np.inf, arr[i])))
    j_v = int(np.argmin(np.where(valid[i], arr[i], np.inf)))
    return i, (
        f"group {i}: completion {j_m} has no reward but scored {float(arr[i, j_m])!r}, not below completion {j_v} "
        f"(reward {float(case.rewards[i, j_v])!r}) which scored {float(arr[i, j_v])!r}"
    )


# ====================================================================== the checks
@_check(
    "metadata", "the class declares name, description and deterministic, and an instance can be rebuilt from its params"
)
def _check_metadata(subject: Subject, seed: int) -> None:
    cls = subject.cls
    problem = check_filter_class(cls)
    if problem:
        raise _Broken(problem)
    if not isinstance(cls.description, str) or not cls.description.strip():
        raise _Broken(f"class attribute description = {cls.description!r}: set a one-line description")
    try:
        f = subject.make()
    except Exception as e:  # noqa: BLE001
        raise _Broken(f"building the filter {_crash(e)}") from None
    if not isinstance(f.deterministic, bool):
        raise _Broken(f"deterministic = {f.deterministic!r}: must be True or False")
    unstored = [p for p in type(f).parameters() if not hasattr(f, p)]
    if unstored:
        raise _Broken(
            f"__init__ parameter(s) {', '.join(map(repr, unstored))} not stored as attributes of the same name "
            "(f.params and repr(f) then show defaults, and type(f)(**f.params) builds a different filter)"
        )
    wrong = {
        p: v
        for p, v in subject.params.items()
        if p in type(f).parameters() and f.params.get(p) is not v and f.params.get(p) != v
    }
    if wrong:
        p = next(iter(wrong))
        raise _Broken(f"built with {p}={wrong[p]!r} but f.params[{p!r}] = {f.params.get(p)!r}: params must round-trip")
    try:
        params = f.params
        text = repr(f)
    except Exception as e:  # noqa: BLE001
        raise _Broken(
            f"params/repr {_crash(e)} (store each __init__ parameter under an attribute of the same name)"
        ) from None
    try:
        again = type(f)(**params)
    except Exception as e:  # noqa: BLE001
        raise _Broken(
            f"type(f)(**f.params) {_crash(e)}: store each __init__ parameter under an attribute of the same name, "
            "so a fresh instance with the same parameters can be built"
        ) from None
    if repr(again) != text:
        raise _Broken(f"a rebuilt instance differs: {repr(again)} vs {text} (params must round-trip)")


@_check("output_type", "the trainer call returns a list of n_groups lists of G finite Python floats")
def _check_output_type(subject: Subject, seed: int) -> None:
    for i, kw in enumerate(
        (
            {"n_groups": 3, "group_size": 8},
            {"n_groups": 2, "group_size": 5, "rewards": "binary", "container": "ndarray"},
            {"n_groups": 4, "group_size": 6, "container": "float32"},
            {"n_groups": 3, "group_size": 4, "rewards": "binary", "container": "nan-list"},
        )
    ):
        _expect(subject, generate_case(seed + i, **kw))


@_check("group_sizes", "groups of any size G from 2 to 256 are scored")
def _check_group_sizes(subject: Subject, seed: int) -> None:
    for i, g in enumerate((2, 3, 5, 8, 16, 64, 256)):
        _expect(subject, generate_case(seed + i, n_groups=2, group_size=g, max_words=30 if g > 16 else 60))


@_check("batch_sizes", "one group and many groups per call are scored")
def _check_batch_sizes(subject: Subject, seed: int) -> None:
    for i, (n, g) in enumerate(((1, 2), (1, 8), (64, 4), (200, 2))):
        _expect(subject, generate_case(seed + i, n_groups=n, group_size=g, max_words=20 if n > 8 else 60))


@_check("reward_values", "binary, integer, tied, huge, tiny and negative rewards all give finite scores")
def _check_reward_values(subject: Subject, seed: int) -> None:
    for i, kind in enumerate(_REWARD_KINDS + ("mixed",)):
        container = ("list", "ndarray", "nan-list")[i % 3]
        _expect(subject, generate_case(seed + i, n_groups=4, group_size=6, rewards=kind, container=container))


@_check(
    "determinism",
    "identical input gives identical scores (fresh instances with the same params, for deterministic = False)",
)
def _check_determinism(subject: Subject, seed: int) -> None:
    case = generate_case(seed, n_groups=6, group_size=8, rewards="mixed", missing=0.1, duplicates=0.4)
    first = subject.make()
    deterministic = bool(first.deterministic)

    def compare(a: Any, b: Any, what: str, c: Case) -> None:
        for x in (a, b):
            bad = _validate(x, c)
            if bad:
                raise _Broken(bad[1], c, x)
        a, b = np.array(a), np.array(b)
        ra, rb = ranks(a), ranks(b)
        diff = (ra != rb).any(axis=1) | ~np.isclose(a, b, rtol=1e-6, atol=1e-12).all(axis=1)
        if diff.any():
            i = int(np.argmax(diff))
            hint = (
                " The filter declares deterministic = True: if it draws random numbers, set deterministic = False "
                "and seed its generator from a parameter."
                if deterministic
                else " deterministic = False filters must draw from a generator seeded by their parameters, "
                "so that fresh instances with the same params agree."
            )
            raise _Broken(f"{what} differ in group {i}: {a[i].tolist()} vs {b[i].tolist()}.{hint}", c)

    try:
        if deterministic:
            a = _call(first, case)
            b = _call(first, case)
            compare(a, b, "two calls of the same instance on identical input give scores that", case)
            c = _call(subject.make(), case)
            compare(a, c, "a fresh instance and the first one give scores that", case)
        else:
            a = _call(first, case)
            b = _call(subject.make(), case)
            compare(a, b, "the first calls of two fresh instances with the same params give scores that", case)
    except _Broken:
        raise
    except Exception as e:  # noqa: BLE001
        raise _Broken(_crash(e), case) from None


@_check(
    "missing_rewards",
    "a completion whose reward is missing (None or NaN) never ranks above one of its group that has a reward",
)
def _check_missing_rewards(subject: Subject, seed: int) -> None:
    cases = [
        generate_case(seed, n_groups=5, group_size=6, missing=0.35, container="list"),
        generate_case(seed + 1, n_groups=5, group_size=6, missing=0.35, container="ndarray", rewards="binary"),
        generate_case(seed + 2, n_groups=5, group_size=6, missing=0.35, container="nan-list", rewards="negative"),
        generate_case(seed + 3, n_groups=3, group_size=4, missing=0.5, missing_groups=1, container="list"),
        generate_case(seed + 4, n_groups=2, group_size=3, missing_groups=2, container="list"),
    ]
    for case in cases:
        _expect(subject, case, _missing_last)


@_check("empty_strings", "empty-string completions (some, or a whole group) are scored without error")
def _check_empty_strings(subject: Subject, seed: int) -> None:
    _expect(subject, generate_case(seed, n_groups=4, group_size=6, empty=0.3, rewards="binary"))
    _expect(subject, generate_case(seed + 1, n_groups=3, group_size=4, empty_groups=1, missing=0.2))
    _expect(subject, generate_case(seed + 2, n_groups=2, group_size=2, empty_groups=2, rewards="tied"))


@_check(
    "message_completions",
    "message-list completions ([{'role': 'assistant', 'content': ...}]) are scored, and ranked as their text",
)
def _check_message_completions(subject: Subject, seed: int) -> None:
    for i, mode in enumerate(("content", "parts")):
        plain = generate_case(seed + i, n_groups=4, group_size=6, empty=0.1)
        expected = _expect(subject, plain)
        case = plain.with_(messages=mode)
        got = _expect(subject, case)
        diff = (ranks(expected) != ranks(got)).any(axis=1)
        if diff.any():
            g = int(np.argmax(diff))
            raise _Broken(
                f"group {g} is ranked differently as messages ({got[g].tolist()}) than as plain strings "
                f"({expected[g].tolist()}): a message list should count as the text of its contents",
                case.subset([g]),
            )


@_check(
    "extra_kwargs",
    "the trainer's extra arguments (completion_ids, completion_lengths, prompts, num_remains_in_group, unknown ones) are accepted",  # noqa: E501
)
def _check_extra_kwargs(subject: Subject, seed: int) -> None:
    for i, (layout, per_group) in enumerate((("nested", False), ("flat", False), ("nested", True), ("flat", True))):
        _expect(
            subject, generate_case(seed + i, n_groups=3, group_size=6, extra=layout, per_group_k=per_group, missing=0.1)
        )


def _snapshot(x: Any) -> Any:
    return copy.deepcopy(x)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@_check("no_mutation", "the filter does not modify its inputs (completions, messages, rewards, extra arguments)")
def _check_no_mutation(subject: Subject, seed: int) -> None:
    cases = [
        generate_case(seed, n_groups=3, group_size=6, missing=0.2, empty=0.1, extra="nested"),
        generate_case(
            seed + 1, n_groups=3, group_size=6, missing=0.2, container="ndarray", messages="content", extra="flat"
        ),
    ]
    for case in cases:
        kwargs = case.call_kwargs()
        before = _snapshot(kwargs)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GFPOFilterWarning)
                subject.make()(**kwargs)
        except Exception as e:  # noqa: BLE001
            raise _Broken(_crash(e), case) from None
        for key in before:
            if not _same(before[key], kwargs[key]):
                raise _Broken(
                    f"argument {key} was modified by the call: before {_short(before[key], 200)}, after {_short(kwargs[key], 200)}",  # noqa: E501
                    case,
                )


@_check(
    "state",
    "state_dict() is a JSON-serialisable dict; a fresh instance that loads it scores the next batch as the original",  # noqa: E501
)
def _check_state(subject: Subject, seed: int) -> None:
    case = generate_case(seed, n_groups=4, group_size=6, rewards="mixed", missing=0.1)
    first = subject.make()
    try:
        _call(first, case)  # let any state move on
        state = first.state_dict()
    except Exception as e:  # noqa: BLE001
        raise _Broken(_crash(e), case) from None
    if not isinstance(state, dict):
        raise _Broken(f"state_dict() returned a {type(state).__name__}, not a dict")
    try:
        text = json.dumps(state)
    except (TypeError, ValueError) as e:
        raise _Broken(f"state_dict() is not JSON-serialisable ({e}); checkpoints store it as JSON") from None
    try:
        fresh = subject.make()
        fresh.load_state_dict(json.loads(text))
        a, b = np.array(_call(first, case)), np.array(_call(fresh, case))
    except Exception as e:  # noqa: BLE001
        raise _Broken(_crash(e), case) from None
    diff = (ranks(a) != ranks(b)).any(axis=1) | ~np.isclose(a, b, rtol=1e-6, atol=1e-12, equal_nan=True).all(axis=1)
    if diff.any():
        i = int(np.argmax(diff))
        raise _Broken(
            f"after load_state_dict(state_dict()), a fresh instance scores group {i} as {b[i].tolist()} but the "
            f"original as {a[i].tolist()}: a resumed run would keep other rows. Return from state_dict() "
            "everything that changes as the filter scores (e.g. a generator's bit_generator.state)",
            case,
        )


#: Reward kinds the pruning check draws (each then capped at 1: a rule may assume rewards at most 1, the largest
#: bound a registered example declares, e.g. ``token_efficiency(reward_bound=1)``).
_PRUNING_KINDS = ("binary", "continuous", "tied", "negative", "small")


@_check(
    "pruning",
    "an exact pruning rule never stops a completion that the unpruned selection keeps (batched generation replayed on "
    "random groups, rewards at most 1; the kept rows and advantages must not change)",
)
def _check_pruning(subject: Subject, seed: int) -> None:
    from gfpo_filters.pruning import APPROXIMATE, EXACT, PruneRule, simulate
    from gfpo_filters.step import select

    f = subject.make()
    try:
        rule = f.pruning_rule()
    except Exception as e:  # noqa: BLE001
        raise _Broken(f"pruning_rule() {_crash(e)}") from None
    if rule is None:
        return
    if not isinstance(rule, PruneRule) or rule.exactness not in (EXACT, APPROXIMATE):
        raise _Broken(
            f"pruning_rule() returned {rule!r}: expected None or a gfpo_filters.pruning.PruneRule whose exactness is "
            f"{EXACT!r} or {APPROXIMATE!r}"
        )
    if rule.exactness != EXACT:
        return  # an approximate rule makes no claim to check; docs/pruning.md measures the built-in one
    for i in range(12):
        kind = _PRUNING_KINDS[i % len(_PRUNING_KINDS)]
        case = generate_case(
            seed + i, n_groups=6, group_size=8, rewards=kind, extra="nested", per_group_k=True, max_words=12
        )
        # Every completion has at least one token (its end-of-sequence token), and rewards are at most 1.
        ids = [[c or [0] for c in grp] for grp in case.ids]
        case = case.with_(rewards=np.minimum(case.rewards, 1.0), ids=ids)
        lengths = np.array([[len(c) for c in grp] for grp in case.ids], dtype=np.int64)
        k = np.array(case.k, dtype=np.int64)
        try:
            full = np.array(_call(subject.make(), case), dtype=np.float64)
            # Half the cases in lockstep (batched decoding), half with rows starting at random steps (an engine
            # that admits requests over time), so that running rows of one group have written different lengths.
            start = None if i % 2 == 0 else np.random.default_rng(seed + i).integers(0, 8, lengths.shape)
            sim = simulate(rule, lengths, case.rewards, k, start=start)
        except Exception as e:  # noqa: BLE001
            raise _Broken(_crash(e), case) from None
        before = select(full, case.rewards, k)
        wrong = sim.pruned & before.kept
        # The pruned run: stopped rows keep the tokens they wrote and get no reward.
        cut = sim.pruned_lengths
        ids = [[c[: cut[g, j]] for j, c in enumerate(grp)] for g, grp in enumerate(case.ids)]
        texts = [[" ".join(t.split()[: cut[g, j]]) for j, t in enumerate(grp)] for g, grp in enumerate(case.texts)]
        pruned_case = case.with_(ids=ids, texts=texts, rewards=np.where(sim.pruned, np.nan, case.rewards))
        try:
            after = select(np.array(_call(subject.make(), pruned_case), dtype=np.float64), pruned_case.rewards, k)
        except Exception as e:  # noqa: BLE001
            raise _Broken(_crash(e), pruned_case) from None
        changed = (after.kept != before.kept).any(axis=1) | ~np.isclose(after.advantages, before.advantages).all(axis=1)
        if wrong.any() or changed.any():
            g = int(np.argmax(wrong.any(axis=1) | changed))
            raise _Broken(
                f"rule {rule!r} (exact) stopped completions {np.flatnonzero(sim.pruned[g]).tolist()} of group {g} "
                f"(lengths {lengths[g].tolist()}, k={int(k[g])}); the unpruned selection keeps "
                f"{np.flatnonzero(before.kept[g]).tolist()}, the pruned one {np.flatnonzero(after.kept[g]).tolist()}",
                case,
            )


SPEED_LOG: list[dict[str, Any]] = []  # every speed measurement of this process (the pytest plugin prints it)


@_check("speed", "a batch of 64 groups x 16 completions is scored (completions per second is reported, not asserted)")
def _check_speed(subject: Subject, seed: int) -> dict[str, Any]:
    case = generate_case(seed, n_groups=64, group_size=16, rewards="mixed", max_words=80)
    f = subject.make()
    _expect(subject, case)  # correctness first, with a useful message
    times = []
    budget = time.perf_counter() + 1.0
    while len(times) < 3 or (len(times) < 20 and time.perf_counter() < budget):
        kwargs = case.call_kwargs()
        t0 = time.perf_counter()
        _call_prepared(f, kwargs)
        times.append(time.perf_counter() - t0)
    best = min(times)
    n = case.n_groups * case.group_size
    result = {
        "filter": subject.label,
        "completions_per_s": n / best if best > 0 else math.inf,
        "us_per_group": best / case.n_groups * 1e6,
        "n_groups": case.n_groups,
        "group_size": case.group_size,
        "runs": len(times),
    }
    SPEED_LOG.append(result)
    return result


def _call_prepared(f: GroupFilter, kwargs: dict[str, Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GFPOFilterWarning)
        return f(**kwargs)


# ====================================================================== running
def _format_failure(subject: Subject, check: Check, broken: _Broken) -> str:
    lines = [
        f"filter {subject.label} breaks '{check.name}'",
        f"  property: {check.prop}",
        f"  problem:  {broken.problem}",
    ]
    case = broken.case
    if case is not None:
        lines.append(f"  input:    {case.describe()}" + (f" ({broken.note})" if broken.note else ""))
        if broken.got is not None:
            lines.append(f"  returned: {_short(broken.got)}")
        lines.append("  reproduce:")
        code = (
            ["from gfpo_filters.testing import generate_case"]
            + subject.setup.splitlines()
            + [
                f"case = {case.recipe}",
                "scores = f(**case.call_kwargs())",
            ]
        )
        lines += [f"      {line}" for line in code]
        literal = case.literal()
        if literal:
            lines += ["  the same call, written out:", f"      {literal}"]
    return "\n".join(lines)


def run_check(filter_or_name: Any, check: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> Any:
    """Run one check; raise :class:`ConformanceError` if it fails, else return its result (speed: a dict)."""
    if check not in CHECKS:
        raise KeyError(f"unknown check {check!r}; checks: {', '.join(CHECKS)}")
    subject = filter_or_name if isinstance(filter_or_name, Subject) else Subject(filter_or_name, params)
    c = CHECKS[check]
    try:
        return c.function(subject, seed)
    except _Broken as b:
        raise ConformanceError(_format_failure(subject, c, b), c.name, subject.label) from None


@dataclass
class ConformanceReport:
    filter: str
    passed: list[str] = field(default_factory=list)
    speed: dict[str, Any] | None = None

    def __str__(self) -> str:
        speed = (
            f"; {self.speed['completions_per_s']:,.0f} completions/s, {self.speed['us_per_group']:.1f} us/group "
            f"(G={self.speed['group_size']}, {self.speed['n_groups']} groups per call)"
            if self.speed
            else ""
        )
        return f"{self.filter}: {len(self.passed)} checks passed{speed}"


def run_checks(
    filter_or_name: Any, params: Mapping[str, Any] | None = None, checks: Sequence[str] | None = None, seed: int = 0
) -> ConformanceReport:
    """Run ``checks`` (default: all); raise one :class:`ConformanceError` listing every failure."""
    subject = Subject(filter_or_name, params)
    names = list(checks) if checks is not None else list(CHECKS)
    report = ConformanceReport(subject.label)
    failures = []
    for name in names:
        try:
            result = run_check(subject, name, seed=seed)
        except ConformanceError as e:
            failures.append(str(e))
            continue
        report.passed.append(name)
        if name == "speed":
            report.speed = result
    if failures:
        head = f"{len(failures)} of {len(names)} conformance checks failed for {subject.label}:\n\n"
        raise ConformanceError(
            head + "\n\n".join(failures), ",".join(n for n in names if n not in report.passed), subject.label
        )
    return report


def check_filter(filter_or_name: Any, /, **params: Any) -> ConformanceReport:
    """Check a filter (registered name, :class:`GroupFilter` subclass, or instance) against the contract.

    ``params`` build the filter (for a name or a class). Raises :class:`ConformanceError`
    naming every broken property with a reproducer; returns a :class:`ConformanceReport`.
    Options (a subset of checks, another input seed): :func:`run_checks`.
    """
    return run_checks(filter_or_name, params)


# ====================================================================== pytest helpers
@dataclass(frozen=True)
class BoundCheck:
    """One check bound to one filter: the value of the ``gfpo_check`` test argument."""

    filter: Any
    params: tuple[tuple[str, Any], ...]
    check: str
    seed: int = 0

    def __call__(self) -> Any:
        return run_check(self.filter, self.check, dict(self.params), seed=self.seed)

    @property
    def id(self) -> str:
        f = self.filter
        name = f if isinstance(f, str) else getattr(f, "name", "") or type(f).__name__
        args = ",".join(f"{k}={v!r}" for k, v in self.params)
        return f"{name}({args})-{self.check}" if args else f"{name}-{self.check}"

    def __repr__(self) -> str:
        return f"BoundCheck({self.id})"


def _split_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        return spec[0], dict(spec[1])
    return spec, {}


def checks_for(
    filter_or_name: Any, params: Mapping[str, Any] | None = None, *, checks: Sequence[str] | None = None, seed: int = 0
) -> list[BoundCheck]:
    """One :class:`BoundCheck` per check, for parametrising tests.

    ``params`` is a mapping (not keywords, so that a filter parameter named ``seed`` or
    ``checks`` cannot clash with the options).
    """
    names = list(checks) if checks is not None else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; checks: {', '.join(CHECKS)}")
    frozen = tuple(sorted((params or {}).items()))
    return [BoundCheck(filter_or_name, frozen, n, seed) for n in names]


def parametrize_with_checks(filters: Sequence[Any], checks: Sequence[str] | None = None, seed: int = 0) -> Any:
    """A ``pytest.mark.parametrize`` over every (filter, check): the test takes ``gfpo_check`` and calls it.

    ``filters``: names, classes, instances, or ``(name_or_class, {params})`` pairs.
    """
    import pytest

    bound = []
    for spec in filters:
        f, params = _split_spec(spec)
        bound += checks_for(f, params, checks=checks, seed=seed)
    return pytest.mark.parametrize("gfpo_check", bound, ids=[b.id for b in bound])
