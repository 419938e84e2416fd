"""Exceptions and warnings raised by gfpo-filters.

Every error says what was wrong and where (which filter, parameter, group or plugin),
so that a failure in step 40,000 of a run can be read without a debugger.
"""

from __future__ import annotations


class GFPOFilterError(Exception):
    """Base class of every error raised by gfpo-filters."""


class GroupInputError(GFPOFilterError, ValueError):
    """The completions, rewards or extra arguments handed to a filter are malformed."""


class FilterOutputError(GFPOFilterError, ValueError):
    """A filter returned scores of the wrong shape, type or value."""


class FilterParameterError(GFPOFilterError, ValueError):
    """A filter was given a parameter it does not accept, or a value out of range."""


class UnknownFilterError(GFPOFilterError, KeyError, ValueError):
    """No registered filter has the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FilterStateError(GFPOFilterError, ValueError):
    """A checkpointed filter state does not belong to this filter (another filter, another model) or is malformed."""


class DuplicateFilterError(GFPOFilterError, ValueError):
    """Two providers register the same filter name."""


class PluginLoadError(GFPOFilterError, RuntimeError):
    """A plugin failed to load and strict mode (GFPO_FILTERS_STRICT=1) is on."""


class GFPOFilterWarning(UserWarning):
    """Something in the input deserves attention but was handled (e.g. empty completions)."""


class PluginLoadWarning(GFPOFilterWarning):
    """A plugin failed to import or register; its filters are unavailable, all others work."""


class GFPOStepWarning(GFPOFilterWarning):
    """:func:`gfpo_filters.step.gfpo_step` met input it could handle, but not as asked (e.g. NaN scores)."""


class IgnoredSettingWarning(GFPOFilterWarning):
    """A setting the user made has no effect with GFPO (e.g. one verl drops for custom samplers)."""


class AdvantageStdWarning(GFPOFilterWarning):
    """The engine standardises advantages with another std than the paper's (e.g. verl's GRPO, n - 1)."""


class FilterStateWarning(GFPOFilterWarning):
    """A checkpoint lacks state a stateful filter (or adaptive k) needs: the resumed run starts it afresh."""
