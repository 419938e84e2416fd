"""keep_signal on 0/1 rewards: does GFPO keep its length control and learn as fast as GRPO?

The demo's toy task (:mod:`gfpo_filters.experiments.toy`: reward 1 when the completion contains an ``x``, so
longer random completions earn more), trained with GRPO, plain GFPO and GFPO with each
``keep_signal`` mode, from the same seed: G = 16, k = 4, ``token_efficiency`` (``--filter``,
``-k`` to change), 2 prompts per step. Each run is one process with one thread.

"Final" numbers are means over the last 50 steps (5 logs of 10 steps; every log averages its
10 steps): mean completion length and mean reward over all 16 samples, as the demo prints them,
their ratio to GRPO's, and the share of groups with no non-zero advantage over the last 50 steps.

    OMP_NUM_THREADS=1 python benchmarks/keep_signal.py                      # seed 0, 300 steps
    OMP_NUM_THREADS=1 python benchmarks/keep_signal.py --seeds 0,1,2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfpo_filters.experiments.demo import train_variant  # noqa: E402

MODES = ("off", "swap", "swap_long", "group_baseline", "balanced", "typical")
LAST = 5  # logs averaged for the final numbers (5 x 10 steps)


def final(history: list[dict], key: str) -> float:
    values = [h[key] for h in history[-LAST:] if h.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--filter", default="token_efficiency")
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES), help=f"keep_signal modes (default {','.join(MODES)})")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--save-json", metavar="FILE", help="also write every run's history to FILE")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    runs = [("GRPO", None, None, "off")] + [
        (f"GFPO {args.filter} {args.k}/16 keep_signal={m}", args.filter, args.k, m) for m in modes
    ]
    jobs = [(run, seed) for seed in seeds for run in runs]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(train_variant, label, name, k, args.steps, seed, args.learning_rate, mode)
            for (label, name, k, mode), seed in jobs
        ]
        results = []
        for ((label, *_), seed), future in zip(jobs, futures):
            result = future.result()
            result["seed"] = seed
            results.append(result)
            print(f"  done: seed {seed} {label} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)

    rows = {}
    for r in results:
        key = (r["filter"], r["keep_signal"])
        rows.setdefault(key, []).append(r)
    grpo = rows[(None, "off")]
    grpo_len = sum(final(r["history"], "length") for r in grpo) / len(grpo)
    grpo_rew = sum(final(r["history"], "reward") for r in grpo) / len(grpo)

    print(f"\n{args.filter}, k = {args.k} of 16, {args.steps} steps, seeds {args.seeds}: means over the last 50 steps")
    print("| run | length | reward | length / GRPO | reward / GRPO | groups without signal | swaps per step |")
    print("|---|---|---|---|---|---|---|")
    for (name, mode), rs in rows.items():
        length = sum(final(r["history"], "length") for r in rs) / len(rs)
        reward = sum(final(r["history"], "reward") for r in rs) / len(rs)
        label = "GRPO" if name is None else f"GFPO `keep_signal={mode}`"
        zero = sum(final(r["history"], "no_signal") for r in rs) / len(rs) if name else float("nan")
        swaps = sum(final(r["history"], "swaps") for r in rs) / len(rs) if name else float("nan")
        cells = [f"{length:.1f}", f"{reward:.3f}", f"{length / grpo_len:.2f}", f"{reward / grpo_rew:.2f}"]
        cells += ["" if name is None else f"{zero:.2f}", "" if name is None else f"{swaps:.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        print("\nper seed (length, reward):")
        for (name, mode), rs in rows.items():
            label = "GRPO" if name is None else mode
            cells = [f"{final(r['history'], 'length'):.1f}/{final(r['history'], 'reward'):.2f}" for r in rs]
            print(f"  {label:<15} " + "  ".join(cells))
    print(f"\n{len(results)} runs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
