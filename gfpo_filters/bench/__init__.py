"""``gfpo-filters bench``: what a filter keeps, and how fast it runs.

Four parts, each usable on its own:

* :mod:`~gfpo_filters.bench.data`: rollout files (read by :mod:`gfpo_filters.rollouts`), the
  synthetic generator, and the per-group arrays (lengths, rewards, correctness) counted once;
* :mod:`~gfpo_filters.bench.measure`: one record per (data, filter, k): the filter's trainer-style
  calls, timed, and what its kept sets hold (every metric is defined there);
* :mod:`~gfpo_filters.bench.report`: the terminal table, Markdown, JSON and the plot;
* :mod:`~gfpo_filters.bench.cli`: the command line (``configure`` and ``run``).

Columns and results on real data: ``docs/benchmark.md``.
"""

from gfpo_filters.bench.cli import configure, parse_filter_specs, parse_ks, run
from gfpo_filters.bench.data import BenchUsageError, Dataset, Prepared, load_datasets, prepare, synthetic_rollouts
from gfpo_filters.bench.measure import FilterSpec, measure
from gfpo_filters.bench.report import format_markdown, format_table, plot_records

__all__ = [
    "BenchUsageError",
    "Dataset",
    "FilterSpec",
    "Prepared",
    "configure",
    "format_markdown",
    "format_table",
    "load_datasets",
    "measure",
    "parse_filter_specs",
    "parse_ks",
    "plot_records",
    "prepare",
    "run",
    "synthetic_rollouts",
]
