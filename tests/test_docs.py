"""The docs are part of the product: every built-in filter and hook is documented, links resolve,
the README's example runs, and CI runs the README's commands."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

from gfpo_filters import hookspecs, list_filters

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def builtin_filters():
    return [info for info in list_filters() if info.provider == "gfpo-filters"]


def test_every_builtin_filter_has_a_page_naming_its_parameters():
    for info in builtin_filters():
        page = DOCS / "filters" / f"{info.name}.md"
        assert page.is_file(), f"built-in filter {info.name!r} has no page {page.relative_to(REPO)}"
        text = page.read_text()
        assert f"`{info.name}`" in text.splitlines()[0], f"{page.name} should start with the filter's name"
        for param in info.cls.parameters():
            assert f"`{param}`" in text, f"{page.name} does not document parameter {param!r}"


def test_every_builtin_filter_is_in_the_index_and_the_readme():
    index = (DOCS / "filters" / "index.md").read_text()
    readme = (REPO / "README.md").read_text()
    for info in builtin_filters():
        assert f"[{info.name}.md]" in index, f"{info.name} missing from docs/filters/index.md"
        assert f"| `{info.name}` |" in readme, f"{info.name} missing from the README's filter table"


def test_every_hook_is_documented():
    hooks = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "gfpo_filters_spec")]
    assert hooks == ["register_filters"]
    plugins = (DOCS / "plugins.md").read_text()
    for hook in hooks:
        assert f"{hook}" in plugins


def markdown_files():
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links to missing {target}"


def test_readme_example_runs():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(>>> .*?)```", readme, re.S).group(1)
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 2


def test_ci_runs_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) == 6  # demo, tests, tests on TRL 1.7.1, tests on verl, tests with vLLM, lint
    assert commands[0].endswith("gfpo-filters demo")
    for command in commands[1:]:
        assert command in ci, f".ci/run does not run the README command: {command}"
