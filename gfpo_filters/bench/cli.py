"""The ``gfpo-filters bench`` command: options, the (data, filter, k) jobs, and what is printed.

Wired into :mod:`gfpo_filters.cli` through ``configure(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gfpo_filters.bench.data import (
    LENGTH_UNITS,
    SYNTHETIC_DEFAULTS,
    BenchUsageError,
    Dataset,
    Prepared,
    length_counter,
    load_datasets,
    prepare,
)
from gfpo_filters.bench.measure import DEFAULT_BATCH_GROUPS, DEFAULT_REPEAT, FilterSpec, measure
from gfpo_filters.bench.report import (
    format_markdown,
    format_table,
    plot_records,
    report_exclusions,
    require_matplotlib,
    to_json,
)
from gfpo_filters.step import KEEP_SIGNAL_DEFAULT


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  gfpo-filters bench                                   # synthetic groups, every filter that needs no parameters\n"  # noqa: E501
        "  gfpo-filters bench --data rollouts.jsonl -f token_efficiency,length,random -k 2,4\n"
        "  gfpo-filters bench --data r.jsonl -f tri=diversity --param tri.ngram=3 -k 4 --json\n"
        '  gfpo-filters bench -f weighted --params \'{"weighted": {"filters": ["length", "reward"]}}\'\n'
        "\nSee docs/benchmark.md for the definition of every column."
    )
    _add_measure_options(parser)
    _add_output_options(parser)
    _add_synthetic_options(parser)


def _add_measure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        action="append",
        metavar="ROLLOUTS.jsonl",
        default=[],
        help="rollout file (JSON Lines, one prompt per line); repeatable. Without it: synthetic groups",
    )
    parser.add_argument(
        "-f",
        "--filters",
        action="append",
        metavar="SPEC",
        default=[],
        help="comma-separated filters: NAME or LABEL=NAME (to bench one filter under several parameter sets); "
        "repeatable. Default: every registered filter that can be built without parameters",
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="LABEL.KEY=VALUE",
        default=[],
        help='a filter parameter; VALUE is read as JSON when it parses (3, 0.5, true, ["a"]), else as a string',
    )
    parser.add_argument(
        "--params",
        action="append",
        metavar="JSON",
        default=[],
        help="parameters as a JSON object {LABEL: {KEY: VALUE}}; repeatable",
    )
    parser.add_argument(
        "-k",
        action="append",
        metavar="K",
        default=[],
        help="completions kept per group: -k 2 -k 4 or -k 2,4 (default: a quarter of the largest group size)",
    )
    parser.add_argument(
        "--keep-signal",
        nargs="?",
        const="true",
        metavar="MODES",
        help=f"select as the trainer's keep_signal does (docs/keep_signal.md): alone, the default mode "
        f"({KEEP_SIGNAL_DEFAULT}); "
        "or comma-separated modes, e.g. off,swap,balanced, one record each",
    )
    parser.add_argument(
        "--length-unit",
        choices=LENGTH_UNITS,
        default="chars",
        help="length for metrics and length-based filters: chars (default; what filters count without "
        "token information) or words (whitespace-separated; passed to filters as completion_lengths)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        help="count tokens instead: a tokenizer.json file or a transformers tokenizer name/path "
        "(counts are passed to filters as completion_lengths)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help=f"timed passes per (filter, k); the fastest counts (default {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--batch-groups",
        type=int,
        default=DEFAULT_BATCH_GROUPS,
        help=f"groups per filter call (default {DEFAULT_BATCH_GROUPS})",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="print a JSON list, one record per (data, filter, k), instead of the table"
    )
    out.add_argument("--markdown", action="store_true", help="print Markdown tables instead of the terminal table")
    out.add_argument("--save-json", metavar="FILE", help="also write the JSON records to FILE (whatever is printed)")
    out.add_argument(
        "--plot", metavar="FILE.png", help="plot kept length vs kept reward per filter (needs gfpo-filters[plot])"
    )
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _add_synthetic_options(parser: argparse.ArgumentParser) -> None:
    # No argparse defaults: an option given with --data is an error (see load_datasets).
    syn = parser.add_argument_group("synthetic groups (used without --data)")
    d = SYNTHETIC_DEFAULTS
    syn.add_argument("--groups", type=int, help=f"number of prompts (default {d['groups']})")
    syn.add_argument("--group-size", type=int, help=f"completions per prompt, G (default {d['group_size']})")
    syn.add_argument(
        "--mean-length", type=float, help=f"mean completion length in characters (default {d['mean_length']:g})"
    )
    syn.add_argument(
        "--length-sigma", type=float, help=f"spread of log length, a lognormal sigma (default {d['length_sigma']:g})"
    )
    syn.add_argument(
        "--reward-model",
        choices=("binary", "continuous"),
        help="binary: reward = correct (default); continuous: correct + N(0, 0.3)",
    )
    syn.add_argument(
        "--length-effect",
        type=float,
        help=f"logit change of P(correct) per std of log length (default {d['length_effect']:g}: "
        "longer is less often right)",
    )
    syn.add_argument(
        "--missing-rate", type=float, help=f"fraction of rewards set missing (default {d['missing_rate']:g})"
    )
    syn.add_argument("--seed", type=int, help=f"random seed of the generator (default {d['seed']})")


def run(args: argparse.Namespace) -> int:
    """Run the command; bad input is one line on stderr and exit status 2, a failed filter exit status 1."""
    from gfpo_filters.errors import GFPOFilterError

    try:
        return _run(args)
    except (BenchUsageError, GFPOFilterError, FileNotFoundError) as e:
        print(f"gfpo-filters bench: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise BenchUsageError(f"--repeat must be at least 1, got {args.repeat}")
    if args.batch_groups < 1:
        raise BenchUsageError(f"--batch-groups must be at least 1, got {args.batch_groups}")
    if args.json and args.markdown:
        raise BenchUsageError("choose one of --json and --markdown")
    ks = parse_ks(args.k)
    modes = parse_keep_signal(getattr(args, "keep_signal", None))
    if args.plot:
        require_matplotlib()
    specs = parse_filter_specs(args.filters, args.param, args.params)
    for spec in specs:  # fail early, before any data is read, on unknown names or bad parameters
        spec.build()
    synthetic = {key: getattr(args, key) for key in SYNTHETIC_DEFAULTS if getattr(args, key, None) is not None}
    datasets = load_datasets(args.data, synthetic)
    unit, length_fn = length_counter(args.length_unit, args.tokenizer)
    jobs: list[tuple[Prepared, FilterSpec, int]] = []
    for ds in datasets:
        prepared = prepare(ds, length_fn, unit)
        jobs += [(prepared, spec, k, m) for k in ks or [default_k(prepared)] for spec in specs for m in modes]

    records = []
    with progress_bar(len(jobs), args.progress) as bar:
        for prepared, spec, k, mode in jobs:
            bar.set_description_str(f"{prepared.dataset.name}: {spec.label} k={k}")
            records.append(
                measure(prepared, spec, k, repeat=args.repeat, batch_groups=args.batch_groups, keep_signal=mode)
            )
            bar.update()

    print_records(records, datasets, args)
    failed = [r for r in records if r["error"]]
    for r in failed:
        print(f"gfpo-filters bench: {r['data']}, filter {r['filter']!r}, k={r['k']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def default_k(prepared: Prepared) -> int:
    """Without ``-k``: a quarter of the largest group (said on stderr)."""
    k = max(1, max(prepared.sizes) // 4)
    print(f"note: {prepared.dataset.name}: no -k given; k = largest group size // 4 = {k}", file=sys.stderr)
    return k


def progress_bar(total: int, show: bool | None) -> tqdm:
    """One bar over the (data, filter, k) jobs on stderr; ``show=None``: only when stderr is a terminal."""
    return tqdm(
        total=total,
        disable=None if show is None else not show,
        file=sys.stderr,
        leave=False,
        mininterval=0,
        ascii=".#",
        bar_format="bench [{bar:24}] {n_fmt}/{total_fmt} {desc} [{elapsed}<{remaining}]",
    )


def print_records(records: list[dict[str, Any]], datasets: list[Dataset], args: argparse.Namespace) -> None:
    """The table, Markdown or JSON on stdout; the JSON file, notes and plot as asked."""
    if args.save_json:
        Path(args.save_json).write_text(to_json(records) + "\n", encoding="utf-8")
    if args.json:
        print(to_json(records))
    elif args.markdown:
        print(format_markdown(records, datasets))
    else:
        print(format_table(records, datasets))
    report_exclusions(records)
    if args.plot:
        plot_records(records, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)


def parse_keep_signal(value: str | None) -> list[str]:
    """``--keep-signal``: absent -> ["off"]; alone -> the default mode; else the comma-separated modes."""
    from gfpo_filters.step import keep_signal_mode

    modes: list[str] = []
    for part in (value or "off").split(","):
        try:
            mode = keep_signal_mode(part.strip())
        except ValueError as e:
            raise BenchUsageError(f"--keep-signal: {e}") from None
        if mode not in modes:
            modes.append(mode)
    return modes


def parse_ks(values: Sequence[str]) -> list[int]:
    ks: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                k = int(part)
            except ValueError:
                raise BenchUsageError(f"-k takes positive integers (e.g. -k 2,4), got {part!r}") from None
            if k < 1:
                raise BenchUsageError(f"-k must be at least 1, got {k}")
            if k not in ks:
                ks.append(k)
    return sorted(ks)


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_filter_specs(filters: Sequence[str], params: Sequence[str], params_json: Sequence[str]) -> list[FilterSpec]:
    """Filters from ``-f`` (``NAME`` or ``LABEL=NAME``, comma-separated) and their parameters."""
    specs: dict[str, FilterSpec] = {}
    for value in filters:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            label, _, name = part.partition("=") if "=" in part else (part, "", part)
            label, name = label.strip(), name.strip()
            if not label or not name:
                raise BenchUsageError(f"-f entry {part!r}: expected NAME or LABEL=NAME")
            if label in specs:
                raise BenchUsageError(
                    f"-f: filter label {label!r} is given twice; use LABEL=NAME to bench a filter twice"
                )
            specs[label] = FilterSpec(label, name)
    if not specs:
        specs = {s.label: s for s in default_filter_specs()}

    def target(label: str, where: str) -> FilterSpec:
        if label not in specs:
            raise BenchUsageError(f"{where}: no filter labelled {label!r} is benchmarked (filters: {', '.join(specs)})")
        return specs[label]

    for value in params_json:
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as e:
            raise BenchUsageError(f"--params {value!r} is not valid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
            raise BenchUsageError(f"--params must be a JSON object {{LABEL: {{KEY: VALUE}}}}, got {value!r}")
        for label, kv in obj.items():
            target(label, "--params").params.update(kv)
    for value in params:
        key, eq, raw = value.partition("=")
        label, dot, pname = key.rpartition(".")
        if not eq or not dot or not label or not pname:
            raise BenchUsageError(f"--param {value!r}: expected LABEL.KEY=VALUE, e.g. diversity.ngram=3")
        target(label, f"--param {value!r}").params[pname] = _json_or_str(raw)
    return list(specs.values())


def default_filter_specs() -> list[FilterSpec]:
    """Every registered filter that can be built without parameters (the others are named on stderr)."""
    from gfpo_filters.errors import FilterParameterError
    from gfpo_filters.registry import list_filters

    specs, skipped = [], []
    for info in list_filters():
        spec = FilterSpec(info.name, info.name)
        try:
            spec.build()
        except FilterParameterError:
            skipped.append(info.name)
            continue
        specs.append(spec)
    if skipped:
        print(
            f"note: not benchmarked by default because they need parameters: {', '.join(skipped)} "
            "(name them with -f and give --param)",
            file=sys.stderr,
        )
    return specs
