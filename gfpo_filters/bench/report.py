"""What ``gfpo-filters bench`` prints and draws: the terminal table, Markdown, JSON records, notes and the plot."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

from gfpo_filters.bench.data import BenchUsageError, Dataset

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, record key, format)
    ("filter", "filter", "s"),
    ("k", "k", "d"),
    ("len kept/all", "kept_length_ratio", ".3f"),
    ("R kept", "kept_reward_mean", ".3f"),
    ("R all", "group_reward_mean", ".3f"),
    ("acc kept", "kept_accuracy", ".3f"),
    ("acc all", "group_accuracy", ".3f"),
    ("signal", "signal_fraction", ".3f"),
    ("signal GRPO", "group_signal_fraction", ".3f"),
    ("len-press GFPO", "length_pressure_gfpo", ".1f"),
    ("len-press GRPO", "length_pressure_grpo", ".1f"),
    ("compl/s", "completions_per_s", "rate"),
    ("us/group", "us_per_group", ".1f"),
)


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "rate":
        return f"{value:,.0f}"
    return format(value, fmt)


def _header(ds: Dataset, recs: list[dict[str, Any]]) -> str:
    r = recs[0]
    sizes = sorted({s for rec in recs for s in rec["group_sizes"]})
    return (
        f"{ds.description}: {len(ds.groups)} groups, G = {', '.join(map(str, sizes)) or '-'}; "
        f"lengths in {r['length_unit']}; timing: fastest of {r['repeats']} passes, {r['batch_groups']} groups per call"
    )


def format_table(records: list[dict[str, Any]], datasets: list[Dataset]) -> str:
    blocks = []
    for ds in datasets:
        recs = [r for r in records if r["data"] == ds.name]
        if not recs:
            continue
        rows = [[h for h, _, _ in COLUMNS]] + [[_fmt(r[key], f) for _, key, f in COLUMNS] for r in recs]
        widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
        lines = [_header(ds, recs)]
        for n, row in enumerate(rows):
            cells = [cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_markdown(records: list[dict[str, Any]], datasets: list[Dataset]) -> str:
    blocks = []
    for ds in datasets:
        recs = [r for r in records if r["data"] == ds.name]
        if not recs:
            continue
        lines = [_header(ds, recs), ""]
        lines.append("| " + " | ".join(h for h, _, _ in COLUMNS) + " |")
        lines.append("|" + "|".join("---" if f == "s" else "---:" for _, _, f in COLUMNS) + "|")
        for r in recs:
            lines.append("| " + " | ".join(_fmt(r[key], f) for _, key, f in COLUMNS) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def report_exclusions(records: list[dict[str, Any]]) -> None:
    """Notes on stderr, each once: the groups left out of the measurement, and what filters warned."""
    seen = set()
    for r in records:
        for reason, names in r["excluded"].items():
            if not names:
                continue
            key = (r["data"], reason, r["k"] if reason == "group_smaller_than_k" else None)
            if key in seen:
                continue
            seen.add(key)
            what = (
                "have no reward at all"
                if reason == "all_rewards_missing"
                else f"have fewer than k={r['k']} completions"
            )
            shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
            print(f"note: {r['data']}: {len(names)} group(s) {what} and were excluded: {shown}", file=sys.stderr)
    warned = set()
    for r in records:
        for w in r["warnings"]:
            if (r["filter"], w) not in warned:
                warned.add((r["filter"], w))
                print(f"note: filter {r['filter']!r} warned: {w}", file=sys.stderr)


def to_json(records: list[dict[str, Any]]) -> str:
    """The records as the JSON list ``--json`` prints and ``--save-json`` writes."""
    return json.dumps([jsonable(r) for r in records], indent=2)


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy numbers become Python numbers, NaN and infinity become null."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchUsageError(
            "--plot needs matplotlib, which is not installed: pip install 'gfpo-filters[plot]'"
        ) from None


def plot_records(records: list[dict[str, Any]], path: str) -> None:
    """One panel per data set: kept length ratio (x) against kept mean reward (y), one line per filter."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["data"] for r in records))
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        recs = [r for r in records if r["data"] == name and r["kept_length_ratio"] is not None]
        for label in dict.fromkeys(r["filter"] for r in recs):
            pts = sorted((r for r in recs if r["filter"] == label), key=lambda r: r["k"])
            x = [r["kept_length_ratio"] for r in pts]
            y = [r["kept_reward_mean"] for r in pts]
            (line,) = ax.plot(x, y, marker="o", label=label)
            for r, xi, yi in zip(pts, x, y):
                ax.annotate(
                    f"k={r['k']}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=7,
                    color=line.get_color(),
                )
        if recs and recs[0]["group_reward_mean"] is not None:
            ax.axhline(recs[0]["group_reward_mean"], color="grey", linestyle="--", linewidth=1, label="all completions")
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        unit = recs[0]["length_unit"] if recs else ""
        ax.set_title(name)
        ax.set_xlabel(f"mean kept length / mean length ({unit})")
        ax.set_ylabel("mean reward of kept completions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
