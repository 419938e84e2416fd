"""Throughput of filters through the trainer call (issue 2's speed figures).

    OMP_NUM_THREADS=1 python benchmarks/throughput.py [--filters length,token_efficiency,max_variance]

Calls each filter exactly as GFPOTrainer does: ``group_completions`` (strings), ``group_rewards``
(nested lists), ``completion_lengths`` (an int array) and ``num_remains_in_group``. Reports the
best of several timed repeats (the machine is shared; the minimum is the least disturbed run).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gfpo_filters import load_filter


def batch(n_groups: int, g: int, rewards_kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 2000, size=(n_groups, g))
    if rewards_kind == "binary":  # 0/1 correctness: token_efficiency also ranks the zeros
        rewards = (rng.random((n_groups, g)) < 0.5).astype(float).tolist()
    else:
        rewards = rng.random((n_groups, g)).round(3).tolist()
    completions = [["x" * 8 for _ in range(g)] for _ in range(n_groups)]  # texts are not read when lengths arrive
    return completions, rewards, lengths


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", default="length,token_efficiency,max_variance")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"{'filter':<18} {'rewards':<8} {'groups x G':>11} {'ms/call':>9} {'completions/s':>15}")
    for name in args.filters.split(","):
        f = load_filter(name)
        for rewards_kind, (n_groups, g) in [(r, s) for r in ("binary", "uniform") for s in ((64, 16), (64, 256))]:
            completions, rewards, lengths = batch(n_groups, g, rewards_kind)
            k = max(2, g // 4)
            call = lambda: f(
                group_completions=completions,
                group_rewards=rewards,
                completion_lengths=lengths,  # noqa: E731
                num_remains_in_group=k,
            )
            seconds = best_time(call, args.repeats)
            print(
                f"{name:<18} {rewards_kind:<8} {f'{n_groups} x {g}':>11} {seconds * 1e3:>9.3f} {n_groups * g / seconds:>15,.0f}"  # noqa: E501
            )


if __name__ == "__main__":
    main()
