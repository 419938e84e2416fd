"""Parameter checks for filters: one place for "an int from 1 to 64", "a finite number", "one of ...".

Each check returns the value (converted where that is safe) or raises the filter's
:class:`~gfpo_filters.errors.FilterParameterError` naming the filter, the parameter, what it must be
and what it got::

    self.ngram = check_int(self, "ngram", ngram, low=1, high=64)
    self.objective = check_choice(self, "objective", objective, OBJECTIVES)
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Protocol

import numpy as np

from gfpo_filters.errors import FilterParameterError


class _HasParamError(Protocol):
    def param_error(self, param: str, message: str) -> FilterParameterError: ...


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" between {low} and {high}"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def check_int(
    owner: _HasParamError,
    param: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> int | None:
    """An int (not a bool) in ``[low, high]``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    ok = _is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise owner.param_error(
            param, f"must be an int{_range_text(low, high)}{' or None' if optional else ''}, got {value!r}"
        )
    return int(value)


def check_number(
    owner: _HasParamError,
    param: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    optional: bool = False,
) -> float | None:
    """A finite real number (not a bool) in ``[low, high]``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )
    if not ok:
        raise owner.param_error(
            param, f"must be a finite number{_range_text(low, high)}{' or None' if optional else ''}, got {value!r}"
        )
    return float(value)


def check_bool(owner: _HasParamError, param: str, value: Any) -> bool:
    """True or False (numpy bools too); 0/1 and strings are refused, as a typo in a config would be."""
    if not isinstance(value, (bool, np.bool_)):
        raise owner.param_error(param, f"must be True or False, got {value!r}")
    return bool(value)


def check_choice(owner: _HasParamError, param: str, value: Any, choices: Collection[Any]) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise owner.param_error(param, f"must be one of {tuple(choices)}, got {value!r}")
    return value
