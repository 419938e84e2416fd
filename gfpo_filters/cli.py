"""The ``gfpo-filters`` command line.

``list`` lives here; every other command lives in the module that does the work and
exposes ``configure(parser)`` and ``run(args) -> int`` (heavy imports stay inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("gfpo_filters.cli", "List the registered filters and the plugins that provide them."),
    "train-scorer": (
        "gfpo_filters.filters.learned.cli",
        "Train the built-in learned scorer on logged rollouts (for the 'learned' filter).",
    ),
    "bench": (
        "gfpo_filters.bench",
        "Measure what filters keep (length, reward, accuracy, signal) and how fast they run.",
    ),
    "demo": (
        "gfpo_filters.experiments.demo",
        "Train tiny policies with GRPO and GFPO on a toy task (CPU, a few minutes) and compare length.",
    ),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of filters")


def run(args: argparse.Namespace) -> int:
    from gfpo_filters.errors import PluginLoadWarning
    from gfpo_filters.registry import get_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # reported below instead
        reg = get_registry()
    infos = [reg.filters[n] for n in sorted(reg.filters)]
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
    else:
        rows = [(i.name, i.provider, i.version, i.description) for i in infos]
        widths = [max(len(r[c]) for r in rows + [("name", "provider", "version", "")]) for c in range(3)]
        print(f"{'name':<{widths[0]}}  {'provider':<{widths[1]}}  {'version':<{widths[2]}}  description")
        for r in rows:
            print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    for name, conflict in sorted(reg.conflicts.items()):
        providers = " and ".join(f"{i.provider} {i.version} ({i.plugin})" for i in conflict)
        print(f"conflict: filter {name!r} is provided by {providers}; it cannot be loaded", file=sys.stderr)
    for problem in reg.problems:
        print(f"problem: {problem}", file=sys.stderr)
    for skipped in reg.skipped:
        print(f"skipped (environment): {skipped}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gfpo_filters._version import __version__

    parser = argparse.ArgumentParser(
        prog="gfpo-filters", description="Group filters for GFPO: list, benchmark, train and demo them."
    )
    parser.add_argument("--version", action="version", version=f"gfpo-filters {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
