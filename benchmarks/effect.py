"""The effect of GFPO settings on a family of toy tasks: reward and length against GRPO, over seeds.

Every task of :data:`gfpo_filters.experiments.toy.TASKS` (the demo's ``x``; ``prompt_letter``, whose right letter
depends on the prompt; ``long_x``, where a right answer needs at least 20 letters) is trained with GRPO, the paper's
GFPO (``length`` and ``token_efficiency``, ``keep_signal`` off) and ``token_efficiency`` with every ``keep_signal``
mode, from the same seeds: the tiny Llama of :mod:`gfpo_filters.experiments.toy`, G = 16, k = 4 (``-k``), 2 prompts per
step, lr 5e-4, one thread per run (``gfpo_filters.experiments.demo.train_variant``).

"start" is the first log (mean over steps 1-10), "end" the mean of the last 5 logs (the last 50 steps): mean reward
and mean length of all 16 samples. Ratios to GRPO are taken seed by seed, then averaged; the spread is their min and
max over seeds. A setting ends below its start when its end reward is lower than its own start on some seed.

Every finished run is appended to ``--results`` (JSON lines) and reused by the next call with the same steps,
learning rate and k, so a table can be built, interrupted and extended a few runs at a time::

    OMP_NUM_THREADS=1 python benchmarks/effect.py                                 # everything: 3 tasks x 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/effect.py --tasks long_x --settings grpo,token_efficiency:matched --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfpo_filters.experiments.demo import LENGTH_REWARDS, train_variant  # noqa: E402
from gfpo_filters.experiments.toy import BINARY_TASKS, TASKS  # noqa: E402
from gfpo_filters.step import KEEP_SIGNAL  # noqa: E402

#: Settings: "grpo", or "filter:keep_signal mode" (G' = 16 or "@G'", k = ``-k``), optionally "+kimi", "+kimi_correct" or
#: "+overlong" (a length control added to the reward, ``demo.LENGTH_REWARDS``); or a GRPO baseline at its own G,
#: "BASELINE@G" with BASELINE one of :data:`BASELINES` (e.g. "grpo@8", "kimi@8": GRPO at G = 8 on as many trained
#: rows as GFPO 8 of 16).
#: ``swap_long`` is left out: with ``token_efficiency`` on 0/1 rewards
#: it keeps exactly what ``swap`` keeps (docs/keep_signal.md), so its runs are ``swap``'s.
SETTINGS = ["grpo", "length:off", "token_efficiency:off"] + [
    f"token_efficiency:{m}" for m in KEEP_SIGNAL if m not in ("off", "swap_long")
]
#: GRPO baselines at their own G: name -> (length_reward, loss_type)
BASELINES = {
    "grpo": (None, None),
    "kimi": ("kimi", None),  # Kimi k1.5's group-relative length reward, scale 0.5
    "kimi_correct": ("kimi_correct", None),  # the same, min and max over the group's correct answers only
    "overlong": ("overlong", None),  # DAPO's soft overlong punishment, cap 48, cache 12
    "dr_grpo": (None, "dr_grpo"),  # Dr. GRPO: loss_type="dr_grpo", scale_rewards="none"
}
LAST = 5  # logs averaged for "end" (5 x 10 steps)


def summary(history: list[dict]) -> dict[str, float]:
    """Start and end reward (the task reward, without a length control's term) and length."""
    end = history[-LAST:]
    task = lambda h: h.get("task_reward", h["reward"])  # noqa: E731
    return {
        "reward_start": task(history[0]),
        "length_start": history[0]["length"],
        "reward": sum(task(h) for h in end) / len(end),
        "length": sum(h["length"] for h in end) / len(end),
    }


def load(path: Path) -> dict[tuple, dict]:
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                runs[tuple(r["key"])] = r
    return runs


def parse(setting: str) -> dict:
    """A setting's train_variant arguments: filter, k, keep_signal mode, G, length_reward, loss_type (k = None: -k)."""
    if "@" in setting and setting.split("@")[0] in BASELINES:
        name, g = setting.split("@")
        if name not in BASELINES or not g.isdigit() or int(g) < 2:
            raise ValueError(f"setting {setting!r}: use BASELINE@G with BASELINE one of {', '.join(BASELINES)}")
        return {
            "filter": None,
            "mode": "off",
            "G": int(g),
            "length_reward": BASELINES[name][0],
            "loss_type": BASELINES[name][1],
            "prune": "off",
            "prune_m": None,
        }
    if setting == "grpo":
        return {"filter": None, "mode": "off", "G": 16, "length_reward": None, "loss_type": None, "prune": "off",
                "prune_m": None}  # fmt: skip
    core, _, extra = setting.partition("+")
    core, _, g_prime = core.partition("@")  # "filter:mode@32": G' = 32 (default 16)
    parts = core.split(":")
    prune = parts[2] if len(parts) == 3 else "off"
    if (
        len(parts) not in (2, 3)
        or parts[1] not in KEEP_SIGNAL
        or (extra and extra not in LENGTH_REWARDS)
        or not (prune in ("auto", "off") or re.fullmatch(r"approximate\d*", prune))
        or (g_prime and not (g_prime.isdigit() and int(g_prime) >= 2))
    ):
        raise ValueError(
            f"setting {setting!r}: use grpo, BASELINE@G, or filter:mode[:prune][@G'][+{'|+'.join(LENGTH_REWARDS)}] "
            "with a mode of "
            f"{', '.join(KEEP_SIGNAL)} and prune auto, off, approximate or approximateM (M finished per group)"
        )
    prune_m = int(prune[len("approximate") :]) if prune.startswith("approximate") and prune != "approximate" else None
    return {
        "filter": parts[0],
        "mode": parts[1],
        "G": int(g_prime) if g_prime else 16,
        "length_reward": extra or None,
        "loss_type": None,
        "prune": "approximate" if prune_m else prune,
        "prune_m": prune_m,
    }


def train(task: str, setting: str, seed: int, args: argparse.Namespace) -> dict:
    p = parse(setting)
    result = train_variant(
        setting,
        p["filter"],
        None if p["filter"] is None else args.k,
        args.steps,
        seed,
        args.lr,
        p["mode"],
        task=task,
        gfpo_loss_normalizer=args.normalizer,
        gfpo_prune=p["prune"],
        gfpo_prune_m=p["prune_m"],
        eval_samples=args.eval_samples,
        num_generations=p["G"],
        length_reward=p["length_reward"],
        loss_type=p["loss_type"],
    )
    evals = {key: result[key] for key in ("eval_start", "eval_end") if key in result}
    return {"seconds": result["seconds"], **summary(result["history"]), "history": result["history"], **evals}


def eval_table(task: str, settings: list[str], seeds: list[int], runs: dict, base: tuple) -> list[str]:
    """Unpruned samples of the policy before and after training (``--eval-samples``), where runs have them."""
    lines = [
        f"**{task}**, unpruned samples before → after training:",
        "",
        "| setting | reward | length | ends below start |",
        "|---|---|---|---|",
    ]
    for setting in settings:
        rs = {s: runs[k] for s in seeds if (k := (task, setting, s, *base)) in runs and "eval_end" in runs[k]}
        if not rs:
            continue

        def mean(when, key, rs=rs):
            return sum(r[when][key] for r in rs.values()) / len(rs)

        below = [
            f"seed {s}: {r['eval_end']['reward'] - r['eval_start']['reward']:+.2f}"
            for s, r in rs.items()
            if r["eval_end"]["reward"] < r["eval_start"]["reward"]
        ]
        lines.append(
            f"| {setting} | {mean('eval_start', 'reward'):.3f} → {mean('eval_end', 'reward'):.3f} | "
            f"{mean('eval_start', 'length'):.1f} → {mean('eval_end', 'length'):.1f} | "
            f"{', '.join(below) if below else 'none'} ({len(rs)} seeds) |"
        )
    return lines if len(lines) > 4 else []


def spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else f"{mean:.2f}"


def table(
    task: str, settings: list[str], seeds: list[int], runs: dict, base: tuple, reference: str = "grpo"
) -> list[str]:
    lines = [
        f"**{task}**: {TASKS[task][1]}",
        "",
        f"| setting | reward start → end | length start → end | reward / {reference} | length / {reference} | "
        "ends below start |",
        "|---|---|---|---|---|---|",
    ]
    grpo = {s: runs.get((task, reference, s, *base)) for s in seeds}
    for setting in settings:
        rs = {s: runs[(task, setting, s, *base)] for s in seeds if (task, setting, s, *base) in runs}
        if not rs:
            continue

        def mean(key, rs=rs):
            return sum(r[key] for r in rs.values()) / len(rs)

        paired = [s for s in rs if grpo[s]]
        rr = [rs[s]["reward"] / grpo[s]["reward"] for s in paired]
        lr = [rs[s]["length"] / grpo[s]["length"] for s in paired]
        below = [
            f"seed {s}: {rs[s]['reward'] - rs[s]['reward_start']:+.2f}"
            for s in rs
            if rs[s]["reward"] < rs[s]["reward_start"]
        ]
        label = (
            "GRPO"
            if setting == "grpo"
            else f"`{setting}`"
            if "@" in setting or "+" in setting
            else f"`{setting.split(':')[0]}` {' '.join(setting.split(':')[1:])}"
        )
        lines.append(
            f"| {label} | {mean('reward_start'):.2f} → {mean('reward'):.3f} | {mean('length_start'):.1f} → "
            f"{mean('length'):.1f} | {spread(rr) if rr else ''} | {spread(lr) if lr else ''} | "
            f"{', '.join(below) if below else 'none'} |"
        )
    lines.append("")
    lines.append(f"seeds {','.join(map(str, seeds))}; per seed (end reward / end length):")
    for setting in settings:
        cells = [
            f"{runs[key]['reward']:.2f}/{runs[key]['length']:.1f}"
            for s in seeds
            if (key := (task, setting, s, *base)) in runs
        ]
        if cells:
            lines.append(f"    {setting:<32} " + "  ".join(cells))
    return lines


def plot_frontier(tasks: list[str], settings: list[str], seeds: list[int], runs: dict, base: tuple, path: Path) -> None:
    """End reward against end length, one point per setting and seed, a panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20").colors
    for ax, task in zip(axes[0], tasks):
        for i, setting in enumerate(settings):
            pts = [runs[key] for s in seeds if (key := (task, setting, s, *base)) in runs]
            if pts:
                ax.scatter(
                    [r["length"] for r in pts],
                    [r["reward"] for r in pts],
                    color=colors[i % len(colors)],
                    marker="osD^vP*Xh<>"[i % 11],
                    s=50,
                    label=setting,
                    alpha=0.85,
                )
        ax.set(title=task, xlabel="end length (tokens)", ylabel="end task reward")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(
        f"Toy tasks, {base[0]} steps, GFPO k = {base[2]} of 16 (or @G'), baselines at their own G; one point per seed"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks", default=",".join(BINARY_TASKS), help=f"toy tasks of {','.join(TASKS)} (default the 0/1 ones)"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS), help="grpo or filter:mode, comma-separated")
    parser.add_argument("--modes", help="shorthand: token_efficiency with these keep_signal modes (plus grpo)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--normalizer", default="kept", choices=["kept", "all"], help="GFPOConfig.gfpo_loss_normalizer (default kept)"
    )
    parser.add_argument("--results", default="effect-results.jsonl", help="runs cache (JSON lines)")
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=0,
        help="also sample this many unpruned completions per prompt before and after training (reward, length): "
        "with a pruning setting (filter:mode:prune) the batch metrics cover only the tokens written",
    )
    parser.add_argument("--table-only", action="store_true", help="print the table from --results, train nothing")
    parser.add_argument("--frontier", metavar="PNG", help="draw end reward against end length, a point per seed")
    parser.add_argument("--reference", default="grpo", help="the setting ratios are taken to (default grpo; grpo@8)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    tasks = args.tasks.split(",")
    settings = (
        args.settings.split(",")
        if not args.modes
        else ["grpo"] + [f"token_efficiency:{m}" for m in args.modes.split(",")]
    )
    for task in tasks:
        if task not in TASKS:
            parser.error(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    for setting in [*settings, args.reference]:
        try:
            parse(setting)
        except ValueError as err:
            parser.error(str(err))
    seeds = [int(s) for s in args.seeds.split(",")]
    # The normaliser joins the runs' key only when it is not the default, so older result files still load.
    base = (args.steps, args.lr, args.k) + (() if args.normalizer == "kept" else (args.normalizer,))
    path = Path(args.results)
    runs = load(path)
    start = time.perf_counter()
    # Seed by seed, so that an interrupted table still compares every setting on the seeds it finished.
    todo = [(t, st, s) for s in seeds for t in tasks for st in settings if (t, st, s, *base) not in runs]
    if not args.table_only:
        for i, (task, setting, seed) in enumerate(todo):
            run = {"key": [task, setting, seed, *base], **train(task, setting, seed, args)}
            runs[tuple(run["key"])] = run
            with path.open("a") as f:
                f.write(json.dumps(run) + "\n")
            print(
                f"  [{i + 1}/{len(todo)}] {task} {setting} seed {seed}: reward {run['reward_start']:.2f} -> "
                f"{run['reward']:.3f}, length {run['length_start']:.1f} -> {run['length']:.1f} "
                f"({run['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"{args.steps} steps, k = {args.k} of 16, lr {args.lr}, gfpo_loss_normalizer {args.normalizer!r}; "
        "end = mean of the last 50 steps\n"
    )
    for task in tasks:
        print("\n".join(table(task, settings, seeds, runs, base, args.reference)) + "\n")
        evals = eval_table(task, settings, seeds, runs, base)
        if evals:
            print("\n".join(evals) + "\n")
    if args.frontier:
        plot_frontier(tasks, settings, seeds, runs, base, Path(args.frontier))
        print(f"wrote {args.frontier}")
    print(f"{len(todo)} runs trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
