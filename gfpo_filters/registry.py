"""The filter registry: built-in and third-party plugins, found once and looked up by name.

Loading rules
    * Built-in filters are plugin modules listed in :data:`BUILTIN_PLUGINS`.
    * Third-party plugins come from the ``gfpo_filters`` entry-point group.
    * A plugin that fails to import, to register, or returns something that is not a filter
      class is reported once (a :class:`~gfpo_filters.errors.PluginLoadWarning` naming the
      distribution, the entry point and the error) and skipped: every other filter works.
      ``GFPO_FILTERS_STRICT=1`` turns that into a :class:`~gfpo_filters.errors.PluginLoadError`.
    * A name provided by two different plugins is a conflict: ``load_filter`` of that name
      raises :class:`~gfpo_filters.errors.DuplicateFilterError` naming both distributions.
    * ``GFPO_FILTERS_PLUGINS=a,b`` loads only the listed external plugins (distribution or
      entry-point names; empty = none); ``GFPO_FILTERS_BLOCK_PLUGINS=a,b`` skips the listed ones.
    * The registry is built lazily on first use; :func:`reset_registry` forgets it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from gfpo_filters import hookspecs
from gfpo_filters._version import __version__
from gfpo_filters.base import GroupFilter, check_filter_class
from gfpo_filters.errors import (
    DuplicateFilterError,
    FilterParameterError,
    PluginLoadError,
    PluginLoadWarning,
    UnknownFilterError,
)

ENTRY_POINT_GROUP = "gfpo_filters"
ENV_ALLOW = "GFPO_FILTERS_PLUGINS"
ENV_BLOCK = "GFPO_FILTERS_BLOCK_PLUGINS"
ENV_STRICT = "GFPO_FILTERS_STRICT"
BUILTIN_PROVIDER = "gfpo-filters"

#: Internal plugin modules, registered through the same hook as third-party plugins.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "gfpo_filters.filters.length",
    "gfpo_filters.filters.reward",
    "gfpo_filters.filters.max_variance",
    "gfpo_filters.filters.combine",
    "gfpo_filters.filters.diversity",
    "gfpo_filters.filters.learned",
    "gfpo_filters.filters.consensus",
)


@dataclass(frozen=True)
class FilterInfo:
    """One registered filter and where it comes from."""

    name: str
    cls: type[GroupFilter]
    provider: str  # distribution name; "gfpo-filters" for built-ins
    version: str
    plugin: str  # plugin name: module for built-ins, "dist:entry_point" for third-party

    @property
    def description(self) -> str:
        return self.cls.description

    def as_dict(self) -> dict[str, Any]:
        params = {
            k: (None if v is inspect.Parameter.empty else v if isinstance(v, (int, float, str, bool)) else repr(v))
            for k, v in self.cls.parameters().items()
        }
        required = [k for k, v in self.cls.parameters().items() if v is inspect.Parameter.empty]
        return {
            "name": self.name,
            "provider": self.provider,
            "version": self.version,
            "description": self.description,
            "plugin": self.plugin,
            "parameters": params,
            "required_parameters": required,
        }


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be used (fully or partly)."""

    provider: str
    plugin: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from distribution {self.provider!r}: {self.message}"


@dataclass
class Registry:
    """What the plugin loading produced."""

    filters: dict[str, FilterInfo] = field(default_factory=dict)
    conflicts: dict[str, tuple[FilterInfo, ...]] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # external plugins left out by the environment

    def names(self) -> list[str]:
        return sorted(set(self.filters) | set(self.conflicts))

    def get(self, name: str) -> FilterInfo:
        if name in self.conflicts:
            providers = " and ".join(f"{i.provider} {i.version} (plugin {i.plugin!r})" for i in self.conflicts[name])
            raise DuplicateFilterError(
                f"filter name {name!r} is provided by more than one plugin: {providers}. "
                f"Uninstall one, or block it with {ENV_BLOCK}=<distribution>."
            )
        if name in self.filters:
            return self.filters[name]
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        broken = (
            f" ({len(self.problems)} plugin problem(s) at load time: run 'gfpo-filters list')" if self.problems else ""
        )
        raise UnknownFilterError(f"unknown filter {name!r}.{hint} Available filters: {', '.join(names)}.{broken}")


# ---------------------------------------------------------------------- building
def _entry_points() -> Iterable[Any]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {_normalize(v) for v in value.split(",") if v.strip()}


def _package_version() -> str:
    return __version__


def build_registry() -> Registry:
    """Load every plugin and collect its filters (see the module docstring for the rules)."""
    reg = Registry()
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    origin: dict[str, tuple[str, str]] = {}  # plugin name -> (provider, version)

    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        origin[module_name] = (BUILTIN_PROVIDER, _package_version())

    allow, block = _env_list(ENV_ALLOW), _env_list(ENV_BLOCK) or set()
    for ep in sorted(_entry_points(), key=lambda e: (getattr(e.dist, "name", "") or "", e.name)):
        dist = getattr(ep, "dist", None)
        provider = getattr(dist, "name", None) or "<unknown distribution>"
        version = getattr(dist, "version", None) or "?"
        plugin_name = f"{provider}:{ep.name}"
        keys = {_normalize(provider), _normalize(ep.name)}
        if (allow is not None and not keys & allow) or keys & block:
            reg.skipped.append(plugin_name)
            continue
        try:
            pm.register(ep.load(), name=plugin_name)
        except Exception as e:  # noqa: BLE001 - any failure of a plugin must not stop the host
            reg.problems.append(
                PluginProblem(provider, plugin_name, f"entry point {ep.name} = {ep.value!r} failed to load: {_err(e)}")
            )
            continue
        origin[plugin_name] = (provider, version)

    # Hooks the spec does not know (misspellings) are silent in pluggy unless looked for.
    for hook_name, caller in vars(pm.hook).items():
        if getattr(caller, "spec", True) is None:
            for impl in caller.get_hookimpls():
                provider = origin.get(impl.plugin_name, ("?", "?"))[0]
                reg.problems.append(
                    PluginProblem(
                        provider,
                        impl.plugin_name,
                        f"defines unknown hook {hook_name!r} (known hooks: register_filters); it is ignored",
                    )
                )

    candidates: dict[str, list[FilterInfo]] = {}
    for impl in pm.hook.register_filters.get_hookimpls():
        provider, version = origin.get(impl.plugin_name, ("?", "?"))
        try:
            returned = list(impl.function() or ())
        except Exception as e:  # noqa: BLE001
            reg.problems.append(PluginProblem(provider, impl.plugin_name, f"register_filters() raised {_err(e)}"))
            continue
        for cls in returned:
            problem = check_filter_class(cls)
            message = f"{problem}; it is ignored" if problem else None
            if message:
                reg.problems.append(PluginProblem(provider, impl.plugin_name, message))
                continue
            found = candidates.setdefault(cls.name, [])
            if not any(f.cls is cls for f in found):
                found.append(FilterInfo(cls.name, cls, provider, version, impl.plugin_name))

    for name, infos in candidates.items():
        if len(infos) == 1:
            reg.filters[name] = infos[0]
        else:
            reg.conflicts[name] = tuple(infos)
    return reg


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------- the shared instance
_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The registry, built on first call and reused afterwards."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                reg = build_registry()
                _report(reg)
                _registry = reg
    return _registry


def reset_registry() -> None:
    """Forget the loaded plugins; the next lookup loads them again (tests use this)."""
    global _registry
    with _lock:
        _registry = None


def _report(reg: Registry) -> None:
    messages = [str(p) for p in reg.problems]
    for name, infos in reg.conflicts.items():
        providers = " and ".join(f"{i.provider} ({i.plugin})" for i in infos)
        messages.append(f"filter name {name!r} is registered by {providers}; loading it is an error")
    if not messages:
        return
    if os.environ.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on"):
        raise PluginLoadError(f"{ENV_STRICT} is set and plugin loading had problems:\n  " + "\n  ".join(messages))
    for message in messages:
        warnings.warn(message, PluginLoadWarning, stacklevel=3)


# ---------------------------------------------------------------------- public lookups
def list_filters() -> list[FilterInfo]:
    """Every usable filter, sorted by name (conflicting names are left out)."""
    reg = get_registry()
    return [reg.filters[n] for n in sorted(reg.filters)]


def load_filter(name: str, **params: Any) -> GroupFilter:
    """Build the filter registered as ``name`` with ``params``.

    The result is a drop-in ``group_filter_func`` for a GFPO trainer. Unknown names raise
    :class:`UnknownFilterError` (listing the choices); parameters the filter does not accept,
    missing required ones, or invalid values raise :class:`FilterParameterError`.
    """
    if not isinstance(name, str):
        raise TypeError(f"load_filter() takes a filter name (str), got {type(name).__name__}")
    cls = get_registry().get(name)
    return instantiate(cls.cls, name, params)


def instantiate(cls: type[GroupFilter], name: str, params: dict[str, Any]) -> GroupFilter:
    accepted = cls.parameters()
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [p for p in params if p not in accepted and not takes_any]
    if unknown:
        hints = []
        for p in unknown:
            close = difflib.get_close_matches(p, list(accepted), n=1)
            hints.append(f"{p!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        choices = ", ".join(accepted) or "none"
        raise FilterParameterError(
            f"filter {name!r} has no parameter {', '.join(hints)}; accepted parameters: {choices}"
        )
    missing = [p for p, d in accepted.items() if d is inspect.Parameter.empty and p not in params]
    if missing:
        raise FilterParameterError(f"filter {name!r} needs parameter(s): {', '.join(missing)}")
    try:
        return cls(**params)
    except FilterParameterError:
        raise
    except (TypeError, ValueError) as e:
        raise FilterParameterError(f"filter {name!r}: invalid parameters {params!r}: {e}") from e
