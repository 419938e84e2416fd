"""Within-group quality of the built-in learned scorer against simple rankings (docs/filters/learned.md).

For each data set the prompts are cut into ``--folds`` prompt-level folds (seeded); each fold in
turn is the test set, the scorers are trained on the other prompts with the package's
``train_scorer`` (which holds out 20% of those training prompts again for epoch selection: no
test prompt is ever seen in training or selection), and every ranking is scored on the test prompts:

* ``new``: the package default (pairwise objective, n-grams + group features);
* ``old``: the format-1 default (``objective="pointwise"``, n-grams and length only);
* ``relative``: the format-1 ``--relative`` (reward minus the prompt's mean, n-grams and length only);
* ``shortest``: shortest first (characters: the data has no token counts);
* ``consensus``: the ``consensus`` filter, default (mean word-3-gram Jaccard to the rest);
* ``vote``: the ``consensus`` filter with ``answer_pattern`` = the last number (majority answer).

Metric: within-group AUC of correct vs incorrect completions, the mean over the test groups that mix
both (ties count one half; random = 0.5). gsm8k_g4 trains on its reward (= correctness);
math100_qwen25_g8 trains on its reward-model score (the ``train-scorer`` default target) and is
evaluated on ``correct``; only 10 of its 100 prompts mix right and wrong answers, so its folds
cannot tell rankings apart and the row over all folds is what there is.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_quality.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gfpo_filters import load_filter  # noqa: E402
from gfpo_filters.filters.learned.features import NUMBER_PATTERN, FeatureConfig  # noqa: E402
from gfpo_filters.filters.learned.report import group_aucs  # noqa: E402
from gfpo_filters.filters.learned.training import train_scorer  # noqa: E402
from gfpo_filters.rollouts import read_rollouts, to_groups  # noqa: E402

SCORERS = {
    "new": {},
    "old": {"objective": "pointwise", "features": FeatureConfig(group_features=False)},
    "relative": {"objective": "relative", "features": FeatureConfig(group_features=False)},
}
SIMPLE = ("shortest", "consensus", "vote")
COLUMNS = (*SCORERS, *SIMPLE)
ENOUGH = 30  # mixed test groups needed to call a difference of 0.03 (standard error about 0.35 / sqrt(n))


def fold_scores(rollouts: list, test: np.ndarray, seed: int, log: io.TextIOBase, **train_kw) -> dict[str, np.ndarray]:
    """Every ranking's scores (n_test, G) on the test prompts, the scorers trained on the rest."""
    train = np.setdiff1d(np.arange(len(rollouts)), test)
    texts = [t for i in train for t in rollouts[i].texts]
    targets = [r for i in train for r in rollouts[i].rewards]
    keys = [rollouts[i].prompt_id for i in train for _ in rollouts[i].texts]
    groups = to_groups([rollouts[i] for i in test])
    n, g = groups.shape
    out = {}
    for name, kw in SCORERS.items():
        result = train_scorer(texts, targets, keys, seed=seed, stream=log, progress=False, **{**train_kw, **kw})
        out[name] = result.scorer.predict(groups.flat_texts(), (n, g)).reshape(n, g)
    out["shortest"] = -np.array([[len(t) for t in rollouts[i].texts] for i in test], dtype=np.float64)
    out["consensus"] = load_filter("consensus").score_groups(groups)
    out["vote"] = load_filter("consensus", answer_pattern=NUMBER_PATTERN).score_groups(groups)
    return out


def evaluate(path: Path, folds: int, seed: int, log: io.TextIOBase) -> dict:
    rollouts = read_rollouts(path)
    order = np.random.default_rng(seed).permutation(len(rollouts))
    rows, all_aucs = [], {c: [] for c in COLUMNS}
    for k in range(folds):
        test = np.sort(order[k::folds])
        scores = fold_scores(rollouts, test, seed, log)
        correct = np.array([rollouts[i].correct for i in test], dtype=np.float64)
        keys = np.repeat(np.arange(test.size), correct.shape[1])
        row = {"fold": k, "test_prompts": int(test.size)}
        for c in COLUMNS:
            aucs = group_aucs(scores[c].ravel(), correct.ravel(), keys)
            all_aucs[c].extend(aucs.tolist())
            row[c] = float(aucs.mean()) if aucs.size else float("nan")
        row["mixed"] = int(aucs.size)
        rows.append(row)
    total = {"fold": "all", "test_prompts": len(rollouts), "mixed": len(all_aucs["new"])}
    total.update({c: float(np.mean(v)) if v else float("nan") for c, v in all_aucs.items()})
    return {"data": path.name, "rows": rows, "all": total}


def print_table(res: dict) -> None:
    print(f"\n{res['data']}: within-group AUC (correct vs incorrect) on held-out prompts, mean over mixed groups")
    print(f"{'fold':>5} {'mixed':>6} " + " ".join(f"{c:>9}" for c in COLUMNS) + "  new - best simple")
    for r in [*res["rows"], res["all"]]:
        best = max(SIMPLE, key=lambda c: r[c] if np.isfinite(r[c]) else -1.0)
        best_v = max(r[best], 0.5) if np.isfinite(r[best]) else 0.5
        margin = r["new"] - best_v
        verdict = "too few mixed groups to tell" if r["mixed"] < ENOUGH else ("yes" if margin >= 0.03 else "NO")
        print(
            f"{r['fold']:>5} {r['mixed']:>6} "
            + " ".join(f"{r[c]:>9.3f}" for c in COLUMNS)
            + f"  {margin:+.3f} vs {best} (>= 0.03: {verdict})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get("GFPO_FILTERS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data", type=Path, default=default_data, help="folder of the rollout files ($GFPO_FILTERS_DATA)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", nargs="+", default=["gsm8k_g4.jsonl", "math100_qwen25_g8.jsonl"])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--verbose", action="store_true", help="show the training logs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    log = sys.stderr if args.verbose else io.StringIO()
    results = []
    for name in args.files:
        res = evaluate(args.data / name, args.folds, args.seed, log)
        print_table(res)
        results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
