"""Plugin loading: good plugins, broken ones, duplicates, environment controls."""

from __future__ import annotations

import json
import sys
import types
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import gfpo_filters
from gfpo_filters import (
    DuplicateFilterError,
    FilterParameterError,
    GroupFilter,
    PluginLoadError,
    PluginLoadWarning,
    UnknownFilterError,
    hookimpl,
    load_filter,
    registry,
)
from gfpo_filters.cli import main as cli_main

BUILTINS = {"chain", "length", "max_variance", "random", "reward", "token_efficiency", "weighted"}


def make_plugin(module_name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(module_name)

    @hookimpl
    def register_filters():
        return list(classes)

    module.register_filters = register_filters
    return module


def entry_point(name: str, dist: str, load, version: str = "1.0"):
    return SimpleNamespace(
        name=name,
        value=f"{dist.replace('-', '_')}:plugin",
        group="gfpo_filters",
        dist=SimpleNamespace(name=dist, version=version),
        load=load,
    )


def install(monkeypatch, *eps):
    monkeypatch.setattr(registry, "_entry_points", lambda: list(eps))


class Shortest(GroupFilter):
    name = "shortest_words"
    description = "Keep the fewest words."

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def score(self, groups):
        return -self.scale * np.array([[len(t.split()) for t in g] for g in groups.completions], dtype=float)


def test_builtins_are_registered_through_the_hook():
    infos = {i.name: i for i in gfpo_filters.list_filters()}
    assert BUILTINS <= set(infos)
    assert all(infos[n].provider == "gfpo-filters" for n in BUILTINS)
    assert infos["length"].plugin == "gfpo_filters.filters.length"


def test_good_third_party_plugin_is_found(monkeypatch):
    install(monkeypatch, entry_point("words", "gfpo-words", lambda: make_plugin("gfpo_words", Shortest)))
    f = load_filter("shortest_words", scale=2.0)
    assert f(group_completions=[["a b c", "a"]], group_rewards=[[0, 0]]) == [[-6.0, -2.0]]
    info = registry.get_registry().filters["shortest_words"]
    assert (info.provider, info.version, info.plugin) == ("gfpo-words", "1.0", "gfpo-words:words")


def test_plugin_that_raises_on_import_is_reported_and_skipped(monkeypatch):
    def boom():
        raise ImportError("No module named 'missing_dependency'")

    install(
        monkeypatch,
        entry_point("broken", "gfpo-broken", boom),
        entry_point("words", "gfpo-words", lambda: make_plugin("gfpo_words", Shortest)),
    )
    with pytest.warns(PluginLoadWarning) as record:
        names = registry.get_registry().names()
    assert len(record) == 1
    message = str(record[0].message)
    assert "gfpo-broken" in message and "broken" in message and "missing_dependency" in message
    assert BUILTINS | {"shortest_words"} <= set(names)
    # Reported once: later lookups do not warn again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_filter("length")


def test_strict_mode_turns_a_broken_plugin_into_an_error(monkeypatch):
    monkeypatch.setenv("GFPO_FILTERS_STRICT", "1")
    install(monkeypatch, entry_point("broken", "gfpo-broken", lambda: 1 / 0))
    with pytest.raises(PluginLoadError, match=r"gfpo-broken.*ZeroDivisionError"):
        load_filter("length")


def test_same_name_from_two_providers_is_an_error_naming_both(monkeypatch):
    class Other(Shortest):
        pass

    install(
        monkeypatch,
        entry_point("a", "gfpo-alpha", lambda: make_plugin("alpha", Shortest)),
        entry_point("b", "gfpo-beta", lambda: make_plugin("beta", Other), version="2.1"),
    )
    with pytest.warns(PluginLoadWarning, match="shortest_words"):
        registry.get_registry()
    with pytest.raises(DuplicateFilterError, match=r"gfpo-alpha 1.0.*gfpo-beta 2.1"):
        load_filter("shortest_words")
    assert load_filter("length").name == "length"  # the rest keeps working


def test_a_third_party_plugin_cannot_silently_shadow_a_builtin(monkeypatch):
    class FakeLength(Shortest):
        name = "length"

    install(monkeypatch, entry_point("evil", "gfpo-evil", lambda: make_plugin("evil", FakeLength)))
    with pytest.warns(PluginLoadWarning):
        with pytest.raises(DuplicateFilterError, match=r"gfpo-filters.*gfpo-evil"):
            load_filter("length")


@pytest.mark.parametrize(
    "returned, match",
    [
        ([int], "not a GroupFilter subclass"),
        ([type("NoName", (GroupFilter,), {"score": lambda self, g: None})], "invalid name"),
        ([type("NoScore", (GroupFilter,), {"name": "no_score"})], "does not implement score"),
    ],
)
def test_plugins_returning_bad_classes_are_reported(monkeypatch, returned, match):
    install(monkeypatch, entry_point("bad", "gfpo-bad", lambda: make_plugin("bad", *returned)))
    with pytest.warns(PluginLoadWarning, match=match):
        assert BUILTINS <= set(registry.get_registry().names())


def test_register_filters_raising_is_reported(monkeypatch):
    module = types.ModuleType("raiser")

    @hookimpl
    def register_filters():
        raise RuntimeError("config file not found")

    module.register_filters = register_filters
    install(monkeypatch, entry_point("raiser", "gfpo-raiser", lambda: module))
    with pytest.warns(PluginLoadWarning, match=r"gfpo-raiser.*register_filters\(\) raised RuntimeError: config file"):
        registry.get_registry()


def test_misspelled_hook_is_reported(monkeypatch):
    module = types.ModuleType("typo")

    @hookimpl
    def register_filter():
        return [Shortest]

    module.register_filter = register_filter
    install(monkeypatch, entry_point("typo", "gfpo-typo", lambda: module))
    with pytest.warns(PluginLoadWarning, match=r"unknown hook 'register_filter'"):
        reg = registry.get_registry()
    assert "shortest_words" not in reg.filters


def test_allow_list_and_block_list(monkeypatch):
    install(
        monkeypatch,
        entry_point("words", "gfpo-words", lambda: make_plugin("words", Shortest)),
        entry_point("broken", "gfpo-broken", lambda: 1 / 0),
    )
    monkeypatch.setenv("GFPO_FILTERS_PLUGINS", "gfpo_words")  # normalised: _ and - are the same
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken plugin is not even imported
        reg = registry.get_registry()
    assert "shortest_words" in reg.filters and reg.skipped == ["gfpo-broken:broken"]

    registry.reset_registry()
    monkeypatch.setenv("GFPO_FILTERS_PLUGINS", "")  # empty: no external plugins at all
    reg = registry.get_registry()
    assert {i.provider for i in reg.filters.values()} == {"gfpo-filters"} and BUILTINS <= set(reg.filters)

    registry.reset_registry()
    monkeypatch.delenv("GFPO_FILTERS_PLUGINS")
    monkeypatch.setenv("GFPO_FILTERS_BLOCK_PLUGINS", "gfpo-broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "shortest_words" in registry.get_registry().filters


def test_unknown_name_lists_choices_and_suggests(monkeypatch):
    with pytest.raises(UnknownFilterError) as info:
        load_filter("token_eficiency")
    message = str(info.value)
    assert "Did you mean 'token_efficiency'" in message and "Available filters: chain, " in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_bad_parameters_name_the_filter_and_parameter():
    with pytest.raises(
        FilterParameterError, match=r"filter 'random' has no parameter 'sead' \(did you mean 'seed'\?\)"
    ):
        load_filter("random", sead=1)
    with pytest.raises(FilterParameterError, match=r"filter 'random', parameter 'seed'"):
        load_filter("random", seed=-1)
    with pytest.raises(FilterParameterError, match=r"filter 'reward', parameter 'threshold'"):
        load_filter("reward", threshold=float("nan"))


def test_required_parameter_missing_is_named(monkeypatch):
    class NeedsPath(Shortest):
        name = "needs_path"

        def __init__(self, path):
            self.path = path

    install(monkeypatch, entry_point("np", "gfpo-np", lambda: make_plugin("np", NeedsPath)))
    with pytest.raises(FilterParameterError, match=r"filter 'needs_path' needs parameter\(s\): path"):
        load_filter("needs_path")


def test_loading_is_lazy_once_and_resettable(monkeypatch):
    calls = []

    def load():
        calls.append(1)
        return make_plugin("counted", Shortest)

    install(monkeypatch, entry_point("counted", "gfpo-counted", load))
    registry.reset_registry()
    assert calls == []  # nothing loads before the first lookup
    load_filter("length")
    load_filter("shortest_words")
    assert calls == [1]
    registry.reset_registry()
    load_filter("length")
    assert calls == [1, 1]


def test_real_distribution_that_fails_to_import(tmp_path, monkeypatch):
    """A real installed distribution (dist-info on sys.path) whose module raises on import."""
    dist = tmp_path / "gfpo_broken_real-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gfpo-broken-real\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[gfpo_filters]\nbroken_real = gfpo_broken_real\n")
    (tmp_path / "gfpo_broken_real.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginLoadWarning) as record:
        reg = registry.get_registry()
    messages = [str(r.message) for r in record]
    assert any("gfpo-broken-real" in m and "broken_real" in m and "broken on purpose" in m for m in messages)
    assert BUILTINS <= set(reg.names())
    sys.modules.pop("gfpo_broken_real", None)


def test_cli_list_json(capsys, monkeypatch):
    install(monkeypatch, entry_point("words", "gfpo-words", lambda: make_plugin("words", Shortest), version="0.9"))
    assert cli_main(["list", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["length"]["provider"] == "gfpo-filters" and records["length"]["version"] == gfpo_filters.__version__
    assert records["shortest_words"]["provider"] == "gfpo-words" and records["shortest_words"]["version"] == "0.9"
    assert records["shortest_words"]["description"] == "Keep the fewest words."
    assert records["random"]["parameters"] == {"seed": 0}


def test_cli_list_reports_problems_on_stderr(capsys, monkeypatch):
    install(monkeypatch, entry_point("broken", "gfpo-broken", lambda: 1 / 0))
    assert cli_main(["list"]) == 0
    out, err = capsys.readouterr()
    assert "token_efficiency" in out and "gfpo-broken" in err and "ZeroDivisionError" in err


def test_import_is_light():
    import subprocess

    code = "import sys, gfpo_filters; gfpo_filters.load_filter('length'); print(sorted(m for m in ('torch', 'trl', 'transformers', 'scipy.stats', 'matplotlib') if m in sys.modules))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
