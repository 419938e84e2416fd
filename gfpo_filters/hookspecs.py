"""The plugin hooks of gfpo-filters.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match a
hook below. Third-party packages expose theirs through the ``gfpo_filters`` entry-point group::

    [project.entry-points.gfpo_filters]
    my_filters = "my_package.filters"

Built-in filters are plugin modules too (``gfpo_filters.filters.*``), registered through the
same hook.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

PROJECT_NAME = "gfpo_filters"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_filters() -> Iterable[type]:
    """Return the :class:`~gfpo_filters.GroupFilter` subclasses this plugin provides.

    Each class needs a unique ``name``; ``load_filter(name, **params)`` builds it.
    """
