"""gfpo-filters: group filters for GFPO (Group Filtered Policy Optimization).

    from gfpo_filters import load_filter
    trainer = GFPOTrainer(..., group_filter_func=load_filter("token_efficiency"))

Importing this package loads numpy and pluggy only; torch and trl load when the trainer
adapter (``gfpo_filters.trainer``) or a torch-backed filter is used.
"""

from gfpo_filters._version import __version__
from gfpo_filters.base import GroupFilter, check_filter_class, check_scores, finalize_scores
from gfpo_filters.errors import (
    DuplicateFilterError,
    FilterOutputError,
    FilterParameterError,
    FilterStateError,
    FilterStateWarning,
    GFPOFilterError,
    GFPOFilterWarning,
    GFPOStepWarning,
    GroupInputError,
    PluginLoadError,
    PluginLoadWarning,
    UnknownFilterError,
)
from gfpo_filters.groups import Groups
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.registry import get_registry, list_filters, load_filter, reset_registry
from gfpo_filters.selection import gfpo_advantages, topk_mask

__all__ = [
    "DuplicateFilterError",
    "FilterOutputError",
    "FilterParameterError",
    "FilterStateError",
    "FilterStateWarning",
    "GFPOFilterError",
    "GFPOFilterWarning",
    "GFPOStepWarning",
    "GroupFilter",
    "GroupInputError",
    "Groups",
    "PluginLoadError",
    "PluginLoadWarning",
    "UnknownFilterError",
    "__version__",
    "check_filter_class",
    "check_scores",
    "finalize_scores",
    "get_registry",
    "gfpo_advantages",
    "hookimpl",
    "list_filters",
    "load_filter",
    "reset_registry",
    "topk_mask",
]
