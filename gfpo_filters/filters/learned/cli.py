"""``gfpo-filters train-scorer``: train the built-in scorer on rollout files and save a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gfpo_filters.filters.learned.model import OBJECTIVES, POOLINGS
from gfpo_filters.filters.learned.training import LOSSES

TARGETS = ("reward", "correct")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rollouts", nargs="+", type=Path, help="rollout file(s) in the JSONL format (see rollouts.py)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the checkpoint (e.g. scorer.pt)")
    parser.add_argument("--target", choices=TARGETS, default="reward", help="what to rank or predict (default: reward)")
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="listwise",
        help="listwise (default) or pairwise: rank the completions of each prompt; pointwise: predict the target; "
        "relative: predict the target minus its prompt's mean",
    )
    parser.add_argument(
        "--relative", action="store_true", help="the same as --objective relative (kept for older scripts)"
    )
    parser.add_argument(
        "--loss", choices=LOSSES, default="auto", help="pointwise only: auto = logistic for 0/1 targets, else squared"
    )
    parser.add_argument(
        "--no-group-features",
        action="store_true",
        help="n-grams and length only (no length z-score, similarity, duplicate and answer-agreement features)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="groups (prompts) per step (default 16)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of prompts held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and shuffling")
    parser.add_argument("--dim", type=int, default=16, help="embedding size of the n-gram features")
    parser.add_argument("--hidden", type=int, default=0, help="hidden units of the MLP head; 0 = linear")
    parser.add_argument(
        "--pooling", choices=POOLINGS, default="mean", help="pooling of n-gram embeddings: mean, sum/sqrt(n), or sum"
    )
    parser.add_argument("--buckets", type=int, default=1 << 18, help="number of hashed feature ids (2**18)")
    parser.add_argument("--ngram-max", type=int, default=2, help="word n-grams from 1 up to this n (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="one summary line per epoch, no bar")
    parser.add_argument("--json", action="store_true", help="print the validation report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from gfpo_filters.errors import GFPOFilterError
    from gfpo_filters.filters.learned.features import FeatureConfig
    from gfpo_filters.filters.learned.training import train_scorer
    from gfpo_filters.rollouts import read_rollouts

    if not args.out.parent.is_dir():  # fail before training, not after
        print(
            f"gfpo-filters train-scorer: error: cannot write {str(args.out)!r}: "
            f"directory {str(args.out.parent)!r} does not exist",
            file=sys.stderr,
        )
        return 2
    try:
        texts, targets, keys = [], [], []
        for path in args.rollouts:
            for g in read_rollouts(path):
                values = g.rewards if args.target == "reward" else g.correct
                key = f"{path}:{g.prompt_id}"
                texts.extend(g.texts)
                targets.extend(values)  # NaN where missing
                keys.extend([key] * g.size)
        result = train_scorer(
            texts,
            targets,
            keys,
            features=FeatureConfig(
                n_buckets=args.buckets, ngram_max=args.ngram_max, group_features=not args.no_group_features
            ),
            objective="relative" if args.relative else args.objective,
            dim=args.dim,
            hidden=args.hidden,
            pooling=args.pooling,
            loss=args.loss,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            val_fraction=args.val_fraction,
            seed=args.seed,
            target_name=args.target,
            progress=not args.no_progress,
            metadata={"rollouts": [str(p) for p in args.rollouts]},
        )
    except (GFPOFilterError, FileNotFoundError, ValueError) as e:
        print(f"gfpo-filters train-scorer: error: {e}", file=sys.stderr)
        return 2
    try:
        result.scorer.save(args.out)
    except (OSError, RuntimeError) as e:
        print(f"gfpo-filters train-scorer: error: cannot write {str(args.out)!r}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.report, indent=2))
    print(f"wrote {args.out} (use: load_filter('learned', checkpoint={str(args.out)!r}))", file=sys.stderr)
    return 0
