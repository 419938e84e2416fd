"""Choose the learned scorer's defaults on validation prompts only (never on the test folds).

Uses the same prompt folds as ``benchmarks/learned_quality.py`` (same ``--seed``), but only each
fold's *training* prompts: ``train_scorer`` holds out 20% of them for validation, and the figure
here is the scorer's within-group AUC on those validation prompts (its validation report). The
test prompts of the fold are not read. Prints one line per setting, the mean over folds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_tune.py
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gfpo_filters.filters.learned.features import FeatureConfig  # noqa: E402
from gfpo_filters.filters.learned.training import train_scorer  # noqa: E402
from gfpo_filters.rollouts import read_rollouts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get("GFPO_FILTERS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data", type=Path, default=default_data, help="folder of the rollout files ($GFPO_FILTERS_DATA)")
    ap.add_argument("--file", default="gsm8k_g4.jsonl")
    ap.add_argument("--folds", type=int, default=5, help="fold count of learned_quality.py (same split)")
    ap.add_argument("--use-folds", type=int, default=3, help="how many of those folds' training sets to tune on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rollouts = read_rollouts(args.data / args.file)
    order = np.random.default_rng(args.seed).permutation(len(rollouts))
    grid = {
        "objective": ["pairwise", "listwise"],
        "lr": [0.003, 0.01, 0.03],
        "similarity_ngram": [2, 3],
    }
    print(f"{args.file}: validation within-group AUC (20% of each fold's training prompts), mean over folds")
    for values in itertools.product(*grid.values()):
        cfg = dict(zip(grid, values))
        vals = []
        for k in range(args.use_folds):
            train = np.setdiff1d(np.arange(len(rollouts)), order[k :: args.folds])
            texts = [t for i in train for t in rollouts[i].texts]
            targets = [r for i in train for r in rollouts[i].rewards]
            keys = [rollouts[i].prompt_id for i in train for _ in rollouts[i].texts]
            res = train_scorer(
                texts,
                targets,
                keys,
                objective=cfg["objective"],
                lr=cfg["lr"],
                features=FeatureConfig(similarity_ngram=cfg["similarity_ngram"]),
                seed=args.seed,
                progress=False,
                stream=io.StringIO(),
            )
            vals.append(res.report["within_auc"]["scorer"])
        print(f"{cfg}  {np.mean(vals):.4f}  ({', '.join(f'{v:.3f}' for v in vals)})", flush=True)


if __name__ == "__main__":
    main()
