"""Effect of the ``diversity`` filter on real rollout groups: near-duplicate pairs kept.

For every data set in ``../shared/data`` (or ``--data DIR``) and k in {2, G/2}: the number of
kept pairs (two completions of the same prompt, both kept) whose word-3-gram Jaccard exceeds
0.9, 0.5 and 0.15, summed over prompts, and the mean pairwise Jaccard inside the kept sets.

* ``random``: the exact expectation for a uniformly random k of G (each pair is kept with
  probability k(k-1) / (G(G-1))), so no sampling noise;
* ``diversity ...``: the filter with the parameters shown (words, ngram=3).

The Jaccard values used for counting are computed here independently of the filter (Python
sets of word 3-gram tuples, same tokenisation: lower-cased ``\\w+`` runs and punctuation).
``acc`` is the mean correctness of the kept completions where the data set has it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diversity_effect.py
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from gfpo_filters.filters.diversity import DiversityFilter  # noqa: E402
from gfpo_filters.rollouts import batches, read_rollouts  # noqa: E402

DATASETS = ("gsm8k_g4", "math100_qwen25_g8", "creative_text_gpt4_g10")
THRESHOLDS = (0.9, 0.5, 0.15)
WORD = re.compile(r"\w+|[^\w\s]")


def python_jaccard(texts: list[str], n: int = 3) -> np.ndarray:
    sets = []
    for t in texts:
        w = WORD.findall(t.lower())
        s = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
        sets.append(s if s or not w else {tuple(w)})
    g = len(sets)
    out = np.ones((g, g))
    for a in range(g):
        for b in range(a + 1, g):
            union = len(sets[a] | sets[b])
            out[a, b] = out[b, a] = len(sets[a] & sets[b]) / union if union else 1.0
    return out


def kept_stats(sim: np.ndarray, kept: np.ndarray) -> tuple[list[int], float]:
    """Near-duplicate pair counts per threshold and mean pairwise Jaccard over kept pairs."""
    g = sim.shape[1]
    iu = np.triu_indices(g, 1)
    both = kept[:, iu[0]] & kept[:, iu[1]]
    vals = sim[:, iu[0], iu[1]]
    counts = [int(((vals > t) & both).sum()) for t in THRESHOLDS]
    return counts, float(vals[both].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    head = "  ".join(f"J>{t:<5}" for t in THRESHOLDS)
    for name in DATASETS:
        rollouts = read_rollouts(args.data / f"{name}.jsonl")
        for idx, groups in batches(rollouts):
            n, g = groups.shape
            sim = np.stack([python_jaccard(t) for t in groups.completions])
            correct = np.array([rollouts[i].correct for i in idx], dtype=np.float64)
            has_correct = np.isfinite(correct).all()
            iu = np.triu_indices(g, 1)
            total_pairs = [int((sim[:, iu[0], iu[1]] > t).sum()) for t in THRESHOLDS]
            print(
                f"\n{name}: {n} prompts x G={g}; pairs above threshold among all {n * len(iu[0])} pairs: "
                + ", ".join(f"J>{t}: {c}" for t, c in zip(THRESHOLDS, total_pairs))
            )
            for k in sorted({2, g // 2}):
                print(f"  k={k}  {'selection':<44} {head}  mean J   acc")
                p = k * (k - 1) / (g * (g - 1))
                exp = [c * p for c in total_pairs]
                mean_all = float(sim[:, iu[0], iu[1]].mean())
                acc = f"{np.nanmean(correct):.3f}" if has_correct else "  -  "
                print(
                    f"        {'random (expected)':<44} "
                    + "  ".join(f"{e:7.1f}" for e in exp)
                    + f"  {mean_all:.3f}  {acc}"
                )
                configs = [
                    ("diversity objective=maxmin", {}),
                    ("diversity objective=facility_location", {"objective": "facility_location"}),
                    ("diversity maxmin similarity=minhash", {"similarity": "minhash"}),
                ]
                if has_correct:
                    configs.append(("diversity maxmin reward_threshold=1.0", {"reward_threshold": 1.0}))
                for label, params in configs:
                    f = DiversityFilter(unit="words", **params)
                    if "reward_threshold" in params:
                        # correctness as the reward, so the threshold means "correct first"
                        from gfpo_filters.groups import Groups

                        gr = Groups(groups.raw_completions, correct)
                        kept = f.select(gr, k)
                    else:
                        kept = f.select(groups, k)
                    counts, mean_j = kept_stats(sim, kept)
                    acc = f"{correct[kept].mean():.3f}" if has_correct else "  -  "
                    print(f"        {label:<44} " + "  ".join(f"{c:7d}" for c in counts) + f"  {mean_j:.3f}  {acc}")


if __name__ == "__main__":
    main()
