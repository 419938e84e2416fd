"""``gfpo-filters bench``: what a filter keeps, and how fast it runs.

For every (filter, k) the benchmark runs the filter through its trainer-style call,
``f(group_completions=..., group_rewards=..., num_remains_in_group=k, prompts=...)``, on
real rollout groups (``--data``, the JSONL format of :mod:`gfpo_filters.rollouts`) or on a
built-in synthetic generator, keeps the top ``k`` of each group, and reports

what it keeps (over the groups it measured; see "Definitions" below)
    ``kept_length_ratio``      mean length of the kept completions / mean length of all completions
    ``kept_reward_mean``       mean reward of the kept completions (``group_reward_mean``: of all)
    ``kept_accuracy``          mean ``correct`` of the kept completions (``group_accuracy``: of all);
                               null when the data has no ``correct`` field
    ``signal_fraction``        fraction of groups whose kept set still has two different rewards
                               (a non-zero GFPO advantage somewhere); ``group_signal_fraction``: the
                               same for the full group, i.e. GRPO
    ``length_pressure_gfpo``   covariance of GFPO advantage and length over the kept rows
    ``length_pressure_grpo``   covariance of GRPO advantage and length over all rows

how fast
    ``completions_per_s`` and ``us_per_group``: from the fastest of ``--repeat`` passes over the
    data, timing only the filter calls (batches of ``--batch-groups`` groups per call).

Definitions
    A group's rewards R, lengths L (characters by default: the rollouts carry no token counts,
    and without token information a filter counts characters too), kept set S = the top k
    scores (ties to the earlier completion). Completions with a missing reward take no part in
    reward means, advantages or covariances.

    GFPO advantage   A_i = (R_i - mean_S R) / (std_S R + 1e-4) for i in S (population std), else 0.
    GRPO advantage   the same with S = the whole group.
    length pressure  Cov(A, L) = mean(A*L) - mean(A)*mean(L) over the pooled rows (kept rows of
                     every group for GFPO, all rows for GRPO). Advantages sum to 0 in each
                     group, so this equals mean(A*L): the average push of the policy gradient on
                     length, in length units. Negative = training favours shorter completions.
    length push      sum(A*L) over the rows of a group, averaged over groups (JSON only): the push
                     per prompt, k * pressure for GFPO and G * pressure for GRPO when every
                     reward is known (GFPO trains on k rows of a prompt, GRPO on G).

Groups whose rewards are all missing, and groups with fewer than k completions, are excluded
and reported (count and names), never crashed on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfpo_filters.base import check_scores

LENGTH_UNITS = ("chars", "words")
DEFAULT_REPEAT = 5
DEFAULT_BATCH_GROUPS = 32


class BenchUsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------- command line
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
    syn = parser.add_argument_group("synthetic groups (used without --data)")
    syn.add_argument("--groups", type=int, help="number of prompts (default 512)")
    syn.add_argument("--group-size", type=int, help="completions per prompt, G (default 16)")
    syn.add_argument("--mean-length", type=float, help="mean completion length in characters (default 800)")
    syn.add_argument("--length-sigma", type=float, help="spread of log length, a lognormal sigma (default 0.5)")
    syn.add_argument(
        "--reward-model",
        choices=("binary", "continuous"),
        help="binary: reward = correct (default); continuous: correct + N(0, 0.3)",
    )
    syn.add_argument(
        "--length-effect",
        type=float,
        help="logit change of P(correct) per std of log length (default -0.5: longer is less often right)",
    )
    syn.add_argument("--missing-rate", type=float, help="fraction of rewards set missing (default 0)")
    syn.add_argument("--seed", type=int, help="random seed of the generator (default 0)")


SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "groups": 512,
    "group_size": 16,
    "mean_length": 800.0,
    "length_sigma": 0.5,
    "reward_model": "binary",
    "length_effect": -0.5,
    "missing_rate": 0.0,
    "seed": 0,
}


def run(args: argparse.Namespace) -> int:
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
    if sum(bool(x) for x in (args.json, args.markdown)) > 1:
        raise BenchUsageError("choose one of --json and --markdown")
    ks = parse_ks(args.k)
    if args.plot:
        _require_matplotlib()
    specs = parse_filter_specs(args.filters, args.param, args.params)
    for spec in specs:  # fail early, before any data is read, on unknown names or bad parameters
        spec.build()
    datasets = load_datasets(args)
    unit, length_fn = length_counter(args.length_unit, args.tokenizer)

    jobs = []
    for ds in datasets:
        prepared = prepare(ds, length_fn, unit)
        if not ks:
            print(
                f"note: {ds.name}: no -k given; k = largest group size // 4 = {max(1, max(prepared.sizes) // 4)}",
                file=sys.stderr,
            )
        for k in ks or [max(1, max(prepared.sizes) // 4)]:
            for spec in specs:
                jobs.append((prepared, spec, k))

    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = Progress(len(jobs), enabled=show)
    records = []
    for prepared, spec, k in jobs:
        progress.update(f"{prepared.dataset.name}: {spec.label} k={k}")
        records.append(measure(prepared, spec, k, repeat=args.repeat, batch_groups=args.batch_groups))
    progress.close()

    if args.save_json:
        Path(args.save_json).write_text(json.dumps([_jsonable(r) for r in records], indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps([_jsonable(r) for r in records], indent=2))
    elif args.markdown:
        print(format_markdown(records, datasets))
    else:
        print(format_table(records, datasets))
    _report_exclusions(records)
    if args.plot:
        plot_records(records, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    failed = [r for r in records if r["error"]]
    for r in failed:
        print(f"gfpo-filters bench: {r['data']}, filter {r['filter']!r}, k={r['k']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


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


@dataclass
class FilterSpec:
    label: str  # how the filter is named in the output and in --param
    name: str  # registry name
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        from gfpo_filters.registry import load_filter

        return load_filter(self.name, **self.params)


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


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchUsageError(
            "--plot needs matplotlib, which is not installed: pip install 'gfpo-filters[plot]'"
        ) from None


# ---------------------------------------------------------------------- data
@dataclass
class Dataset:
    name: str
    groups: list[Any]  # RolloutGroup
    description: str


def load_datasets(args: argparse.Namespace) -> list[Dataset]:
    from gfpo_filters.rollouts import read_rollouts

    synthetic = {k: getattr(args, k) for k in SYNTHETIC_DEFAULTS if getattr(args, k, None) is not None}
    if args.data:
        if synthetic:
            opts = ", ".join("--" + k.replace("_", "-") for k in synthetic)
            raise BenchUsageError(f"{opts}: synthetic-data options have no effect with --data")
        return [Dataset(Path(p).name, read_rollouts(p), str(p)) for p in args.data]
    opts = {**SYNTHETIC_DEFAULTS, **synthetic}
    groups = synthetic_rollouts(
        n_groups=opts["groups"],
        group_size=opts["group_size"],
        mean_length=opts["mean_length"],
        length_sigma=opts["length_sigma"],
        reward_model=opts["reward_model"],
        length_effect=opts["length_effect"],
        missing_rate=opts["missing_rate"],
        seed=opts["seed"],
    )
    desc = ", ".join(f"{k}={v}" for k, v in opts.items())
    return [Dataset("synthetic", groups, f"synthetic ({desc})")]


_SYLLABLES = np.array("ka to ri mu se na lo pe di vu ba ne so te ga ru mi ha zo fi an el or us it ex ul om ax".split())


def synthetic_rollouts(
    n_groups: int = 512,
    group_size: int = 16,
    mean_length: float = 800.0,
    length_sigma: float = 0.5,
    reward_model: str = "binary",
    length_effect: float = -0.5,
    missing_rate: float = 0.0,
    seed: int = 0,
) -> list[Any]:
    """Synthetic rollout groups in which correctness depends on length.

    Lengths (characters) are lognormal with the given mean and log-spread. Each prompt has a
    difficulty ``d ~ U(-2, 2)`` (a logit); a completion is correct with probability
    ``sigmoid(d + length_effect * z)``, ``z`` its standardised log length. The binary reward
    is correctness; the continuous one adds N(0, 0.3). Texts are words drawn from a
    per-prompt pool (completions of one prompt share vocabulary), cut to the drawn length.
    """
    from gfpo_filters.rollouts import RolloutGroup

    for name, value, ok in (
        ("--groups", n_groups, n_groups >= 1),
        ("--group-size", group_size, group_size >= 1),
        ("--mean-length", mean_length, mean_length >= 1),
        ("--length-sigma", length_sigma, length_sigma >= 0),
        ("--missing-rate", missing_rate, 0 <= missing_rate <= 1),
    ):
        if not ok:
            raise BenchUsageError(f"{name} out of range: {value}")
    if reward_model not in ("binary", "continuous"):
        raise BenchUsageError(f"--reward-model must be binary or continuous, got {reward_model!r}")
    rng = np.random.default_rng(seed)
    shape = (n_groups, group_size)
    mu = math.log(mean_length) - length_sigma**2 / 2
    lengths = np.maximum(1, np.rint(rng.lognormal(mu, length_sigma, shape))).astype(np.int64)
    z = (np.log(lengths) - mu) / max(length_sigma, 1e-9)
    difficulty = rng.uniform(-2.0, 2.0, (n_groups, 1))
    p = 1.0 / (1.0 + np.exp(-(difficulty + length_effect * z)))
    correct = (rng.random(shape) < p).astype(np.float64)
    rewards = correct + (rng.normal(0.0, 0.3, shape) if reward_model == "continuous" else 0.0)
    rewards = np.where(rng.random(shape) < missing_rate, np.nan, rewards)

    words = np.array([a + b + c for a in _SYLLABLES[:12] for b in _SYLLABLES for c in ("", "n", "s")])
    out = []
    for i in range(n_groups):
        pool = rng.choice(words, 40, replace=False)
        n_words = int(lengths[i].max()) // 3 + 2  # words are >= 2 letters plus a space
        texts = []
        for j in range(group_size):
            text = " ".join(pool[rng.integers(0, len(pool), n_words)])
            texts.append(text[: lengths[i, j]])
        out.append(
            RolloutGroup(
                prompt=f"synthetic prompt {i}",
                prompt_id=i,
                texts=texts,
                rewards=rewards[i].tolist(),
                correct=correct[i].tolist(),
                source=f"synthetic:{i}",
            )
        )
    return out


def length_counter(unit: str, tokenizer: str | None):
    """(unit label, function texts -> lengths, or None for characters counted by the filter)."""
    if tokenizer:
        tok = _load_tokenizer(tokenizer)
        from gfpo_filters.groups import count_tokens

        return f"tokens ({tokenizer})", lambda texts: count_tokens(tok, texts)
    if unit == "words":
        return "words", lambda texts: [len(t.split()) for t in texts]
    if unit == "chars":
        return "characters", None
    raise BenchUsageError(f"--length-unit must be one of {LENGTH_UNITS}, got {unit!r}")


def _load_tokenizer(name: str) -> Any:
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BenchUsageError("--tokenizer with a tokenizer.json file needs the 'tokenizers' package") from None
        return Tokenizer.from_file(str(path))
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BenchUsageError("--tokenizer NAME needs the 'transformers' package") from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any loading failure is a usage problem here
        raise BenchUsageError(f"--tokenizer {name!r} could not be loaded: {type(e).__name__}: {e}") from None


@dataclass
class Prepared:
    """A dataset with per-group arrays computed once."""

    dataset: Dataset
    unit: str
    pass_lengths: bool  # give filters completion_lengths (words/tokens), else they count characters
    lengths: list[np.ndarray]
    rewards: list[np.ndarray]
    correct: list[np.ndarray]
    all_missing: list[int]  # indices of groups without any reward

    @property
    def sizes(self) -> list[int]:
        return [g.size for g in self.dataset.groups]

    @property
    def has_correct(self) -> bool:
        return any(np.isfinite(c).any() for c in self.correct)


def prepare(ds: Dataset, length_fn: Any, unit: str) -> Prepared:
    groups = ds.groups
    flat = [t for g in groups for t in g.texts]
    counts = (
        np.fromiter(map(len, flat), np.int64, len(flat)) if length_fn is None else np.asarray(length_fn(flat), np.int64)
    )
    bounds = np.cumsum([0] + [g.size for g in groups])
    lengths = [counts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    rewards = [np.asarray(g.rewards, np.float64) for g in groups]
    correct = [np.asarray(g.correct, np.float64) for g in groups]
    all_missing = [i for i, r in enumerate(rewards) if not np.isfinite(r).any()]
    return Prepared(ds, unit, length_fn is not None, lengths, rewards, correct, all_missing)


# ---------------------------------------------------------------------- measuring
def measure(
    prepared: Prepared, spec: FilterSpec, k: int, repeat: int = DEFAULT_REPEAT, batch_groups: int = DEFAULT_BATCH_GROUPS
) -> dict[str, Any]:
    """One record: run ``spec`` with keep-``k`` over the prepared data."""
    from gfpo_filters.selection import gfpo_advantages, topk_mask

    groups = prepared.dataset.groups
    missing = set(prepared.all_missing)
    too_small = [i for i, g in enumerate(groups) if g.size < k and i not in missing]
    skip = missing | set(too_small)
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        if i not in skip:
            by_size.setdefault(g.size, []).append(i)

    record: dict[str, Any] = {
        "data": prepared.dataset.name,
        "filter": spec.label,
        "name": spec.name,
        "params": {
            p: v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v)
            for p, v in spec.params.items()
        },
        "k": k,
        "group_sizes": sorted(by_size),
        "n_groups": sum(len(v) for v in by_size.values()),
        "n_completions": sum(G * len(v) for G, v in by_size.items()),
        "length_unit": prepared.unit,
        "excluded": {
            "all_rewards_missing": [groups[i].source for i in sorted(missing)],
            "group_smaller_than_k": [groups[i].source for i in too_small],
        },
        "repeats": repeat,
        "batch_groups": batch_groups,
        "warnings": [],
        "error": None,
    }
    for key in _METRICS:
        record[key] = None
    if not by_size:
        record["error"] = f"no group left to measure (every group has fewer than k={k} completions or no reward)"
        return record

    # Call arguments, built once: nested Python lists, as a trainer passes them.
    buckets = []
    for G, idx in sorted(by_size.items(), reverse=True):
        calls = []
        for start in range(0, len(idx), batch_groups):
            part = idx[start : start + batch_groups]
            kwargs: dict[str, Any] = {
                "group_completions": [list(groups[i].texts) for i in part],
                "group_rewards": [prepared.rewards[i].tolist() for i in part],
                "num_remains_in_group": k,
            }
            prompts = [groups[i].prompt for i in part]
            if any(p is not None for p in prompts):
                kwargs["prompts"] = prompts
            if prepared.pass_lengths:
                kwargs["completion_lengths"] = [prepared.lengths[i].tolist() for i in part]
            calls.append(kwargs)
        buckets.append((G, idx, calls))

    try:
        filt = spec.build()
    except Exception as e:  # noqa: BLE001 - reported in the record
        record["error"] = f"{type(e).__name__}: {e}"
        return record

    seen_warnings: dict[str, None] = {}
    best = math.inf
    scores: list[np.ndarray] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for rep in range(repeat):
                elapsed = 0.0
                for G, _idx, calls in buckets:
                    outs = []
                    for kwargs in calls:
                        t0 = time.perf_counter()
                        out = filt(**kwargs)
                        elapsed += time.perf_counter() - t0
                        if rep == 0:
                            outs.append(check_scores(out, (len(kwargs["group_completions"]), G), spec.label))
                    if rep == 0:
                        scores.append(np.concatenate(outs, axis=0))
                best = min(best, elapsed)
        except Exception as e:  # noqa: BLE001 - one failing filter must not stop the benchmark
            record["error"] = f"{type(e).__name__}: {e}"
            return record
        finally:
            for w in caught:
                seen_warnings.setdefault(f"{w.category.__name__}: {w.message}", None)
            record["warnings"] = list(seen_warnings)[:20]

    # What is kept: pooled sums over all buckets, each bucket a (n, G) array.
    acc = {
        key: 0.0
        for key in (
            "len_kept",
            "n_kept",
            "len_all",
            "n_all",
            "r_kept",
            "nr_kept",
            "r_all",
            "nr_all",
            "c_kept",
            "nc_kept",
            "c_all",
            "nc_all",
            "signal",
            "signal_all",
            "al_gfpo",
            "a_gfpo",
            "l_gfpo",
            "n_gfpo",
            "al_grpo",
            "a_grpo",
            "l_grpo",
            "n_grpo",
        )
    }
    for (_, idx, _), s in zip(buckets, scores):
        L = np.stack([prepared.lengths[i] for i in idx]).astype(np.float64)
        R = np.stack([prepared.rewards[i] for i in idx])
        C = np.stack([prepared.correct[i] for i in idx])
        valid = np.isfinite(R)
        kept = topk_mask(s, k)
        kv = kept & valid
        acc["len_kept"] += L[kept].sum()
        acc["n_kept"] += kept.sum()
        acc["len_all"] += L.sum()
        acc["n_all"] += L.size
        acc["r_kept"] += R[kv].sum()
        acc["nr_kept"] += kv.sum()
        acc["r_all"] += R[valid].sum()
        acc["nr_all"] += valid.sum()
        known = np.isfinite(C)
        acc["c_kept"] += C[kept & known].sum()
        acc["nc_kept"] += (kept & known).sum()
        acc["c_all"] += C[known].sum()
        acc["nc_all"] += known.sum()
        acc["signal"] += _has_spread(R, kv).sum()
        acc["signal_all"] += _has_spread(R, valid).sum()
        a_gfpo = gfpo_advantages(R, kept)
        a_grpo = gfpo_advantages(R, valid)
        for tag, a, rows in (("gfpo", a_gfpo, kv), ("grpo", a_grpo, valid)):
            acc[f"al_{tag}"] += (a * L)[rows].sum()
            acc[f"a_{tag}"] += a[rows].sum()
            acc[f"l_{tag}"] += L[rows].sum()
            acc[f"n_{tag}"] += rows.sum()

    def ratio(a: float, b: float) -> float | None:
        return float(a / b) if b else None

    def cov(tag: str) -> float | None:
        n = acc[f"n_{tag}"]
        if not n:
            return None
        return float(acc[f"al_{tag}"] / n - (acc[f"a_{tag}"] / n) * (acc[f"l_{tag}"] / n))

    n_groups = record["n_groups"]
    record.update(
        kept_length_mean=ratio(acc["len_kept"], acc["n_kept"]),
        group_length_mean=ratio(acc["len_all"], acc["n_all"]),
        kept_reward_mean=ratio(acc["r_kept"], acc["nr_kept"]),
        group_reward_mean=ratio(acc["r_all"], acc["nr_all"]),
        kept_accuracy=ratio(acc["c_kept"], acc["nc_kept"]),
        group_accuracy=ratio(acc["c_all"], acc["nc_all"]),
        signal_fraction=acc["signal"] / n_groups,
        group_signal_fraction=acc["signal_all"] / n_groups,
        length_pressure_gfpo=cov("gfpo"),
        length_pressure_grpo=cov("grpo"),
        length_push_gfpo=float(acc["al_gfpo"] / n_groups),
        length_push_grpo=float(acc["al_grpo"] / n_groups),
        time_s=best,
        completions_per_s=record["n_completions"] / best if best > 0 else None,
        us_per_group=best / n_groups * 1e6,
    )
    km, gm = record["kept_length_mean"], record["group_length_mean"]
    record["kept_length_ratio"] = km / gm if km is not None and gm else None
    return record


_METRICS = (
    "kept_length_ratio",
    "kept_length_mean",
    "group_length_mean",
    "kept_reward_mean",
    "group_reward_mean",
    "kept_accuracy",
    "group_accuracy",
    "signal_fraction",
    "group_signal_fraction",
    "length_pressure_gfpo",
    "length_pressure_grpo",
    "length_push_gfpo",
    "length_push_grpo",
    "completions_per_s",
    "us_per_group",
    "time_s",
)


def _has_spread(R: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per group: do the rewards on ``rows`` take at least two different values?"""
    hi = np.where(rows, R, -np.inf).max(axis=1)
    lo = np.where(rows, R, np.inf).min(axis=1)
    return (rows.sum(axis=1) >= 2) & (hi > lo)


# ---------------------------------------------------------------------- output
class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool = True, stream: Any = None, width: int = 24) -> None:
        self.total, self.enabled, self.width, self.done = total, enabled, width, 0
        self.stream = stream or sys.stderr
        self._last = 0

    def update(self, label: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * self.done / max(self.total, 1))
        line = f"bench [{'#' * filled}{'.' * (self.width - filled)}] {self.done + 1}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last))
        self.stream.flush()
        self._last = len(line)
        self.done += 1

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()


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


def _report_exclusions(records: list[dict[str, Any]]) -> None:
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def plot_records(records: list[dict[str, Any]], path: str) -> None:
    """One panel per data set: kept length ratio (x) against kept mean reward (y), one line per filter."""
    _require_matplotlib()
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
