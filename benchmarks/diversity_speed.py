"""Speed and memory of the ``diversity`` filter against a straightforward pure-Python version.

One group of G completions of L token ids each, passed the way a trainer passes them
(``completion_ids`` as lists of Python ints). Two synthetic kinds of group:

* ``clustered``: 8 random "template" sequences; completion j is template j % 8 with 15% of its
  tokens replaced at random (near-duplicates inside a cluster, distinct across clusters);
* ``independent``: every completion drawn independently (almost no shared n-grams).

Every timing is the median of ``--repeat`` calls after ``--warmup`` calls, on one thread.
A last row per kind passes the ids as one (G, L) int64 array (default parameters), to show
what converting lists of Python ints costs.
The baseline builds Python sets of n-gram tuples, computes ``len(a & b) / len(a | b)`` for each
pair and runs the same greedy max-min selection (medoid first) in Python loops; the script
checks that it gives the same order as the exact filter.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diversity_speed.py
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from gfpo_filters.filters.diversity import DiversityFilter  # noqa: E402


def make_group(kind: str, g: int, length: int, seed: int = 0, vocab: int = 32000) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    if kind == "independent":
        return [[int(v) for v in rng.integers(0, vocab, length)] for _ in range(g)]
    templates = rng.integers(0, vocab, (8, length))
    docs = []
    for j in range(g):
        d = templates[j % 8].copy()
        m = rng.random(length) < 0.15
        d[m] = rng.integers(0, vocab, int(m.sum()))
        docs.append([int(v) for v in d])
    return docs


def baseline_order(docs: list[list[int]], n: int = 3) -> list[int]:
    """Straightforward pure Python: n-gram tuple sets, pairwise Jaccard, greedy max-min."""
    sets = []
    for d in docs:
        s = {tuple(d[i : i + n]) for i in range(len(d) - n + 1)}
        if not s and d:
            s = {tuple(d)}
        sets.append(s)
    g = len(sets)
    sim = [[1.0] * g for _ in range(g)]
    for a in range(g):
        for b in range(a + 1, g):
            union = len(sets[a] | sets[b])
            sim[a][b] = sim[b][a] = len(sets[a] & sets[b]) / union if union else 1.0
    start = max(range(g), key=lambda i: (sum(sim[i]), -i))
    order = [start]
    chosen = {start}
    nearest = [sim[start][j] for j in range(g)]  # max similarity to the chosen set
    while len(order) < g:
        best = max((j for j in range(g) if j not in chosen), key=lambda j: (1.0 - nearest[j], -j))
        order.append(best)
        chosen.add(best)
        nearest = [max(nearest[j], sim[best][j]) for j in range(g)]
    return order


def timed(fn, warmup: int, repeat: int) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3, out


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--baseline-repeat", type=int, default=3)
    args = ap.parse_args()
    g, length = args.group_size, args.length
    rewards = [[1.0] * g]
    texts = [[""] * g]
    print(f"one group of G={g} completions x {length} token ids, ngram=3, objective=maxmin, one thread")
    print(f"{'group':<12} {'method':<28} {'median ms':>10} {'vs baseline':>12}")
    for kind in ("clustered", "independent"):
        docs = make_group(kind, g, length)
        base_ms, base = timed(lambda: baseline_order(docs), 1, args.baseline_repeat)
        print(f"{kind:<12} {'pure-Python baseline':<28} {base_ms:>10.1f} {'1.0x':>12}")
        for similarity in ("jaccard", "minhash", "auto"):
            f = DiversityFilter(similarity=similarity)
            ms, scores = timed(
                lambda: f(group_completions=texts, group_rewards=rewards, completion_ids=[docs]),
                args.warmup,
                args.repeat,
            )
            order = list(np.argsort(-np.asarray(scores[0]), kind="stable"))
            same = " (same order as baseline)" if order == base else ""
            if similarity == "jaccard" and not same:
                raise SystemExit("exact filter and baseline disagree: this is a bug")
            label = f"diversity similarity={similarity}"
            print(f"{kind:<12} {label:<28} {ms:>10.2f} {base_ms / ms:>11.0f}x{same}")
        # The same call with the ids as one (G, L) int64 array instead of lists of Python ints.
        as_array = np.array(docs, dtype=np.int64)
        f = DiversityFilter()
        ms, _ = timed(
            lambda: f(group_completions=texts, group_rewards=rewards, completion_ids=as_array),
            args.warmup,
            args.repeat,
        )
        print(f"{kind:<12} {'  same, ids as one array':<28} {ms:>10.2f} {base_ms / ms:>11.0f}x")
    print()
    print("peak traced memory (tracemalloc) of one call, clustered group, G=64:")
    for n_tokens in (500, 1000, 2000, 4000):
        docs = make_group("clustered", g, n_tokens)
        for similarity in ("jaccard", "minhash"):
            f = DiversityFilter(similarity=similarity)
            mib = peak_mib(lambda: f(group_completions=texts, group_rewards=rewards, completion_ids=[docs]))
            print(f"  L={n_tokens:>5} tokens  {similarity:<8} {mib:7.1f} MiB")


if __name__ == "__main__":
    main()
