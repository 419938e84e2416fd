"""Quality and speed of the built-in learned scorer (the ``learned`` filter).

Quality, on ``gsm8k_g4.jsonl`` (reward = 1 if the final answer is correct), for each seed:

1. hold out ``--test-fraction`` of the prompts as a test set the scorer never sees;
2. train two scorers with the package defaults on the other prompts (``train_scorer`` holds
   out another 20% of those for validation and keeps the best epoch: the same code as
   ``gfpo-filters train-scorer``): ``pooled`` (predicts the reward, the default) and
   ``relative`` (``--relative``: predicts reward minus its prompt's mean); save each
   checkpoint and load it with ``load_filter("learned", checkpoint=...)``;
3. on the test prompts, compare their ROC AUC for correct vs incorrect with a length-only
   ranking (characters: the data has no token counts; the direction, shorter or longer
   first, is chosen on the training prompts).

"AUC" pools all test completions; "within-group AUC" counts only (correct, incorrect) pairs of
the same prompt, which is what a group filter can act on. Ties count one half.

Speed: completions per second of ``learned`` (checkpoint) on CPU, one thread, for 64 groups of
16 completions of 1,000 scorer tokens each (words and punctuation marks; text from gsm8k),
median of ``--repeat`` calls after one warm-up call.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_quality.py
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gfpo_filters.scorer import FeatureConfig, featurize, roc_auc, split_by_prompt, train_scorer  # noqa: E402

from gfpo_filters import load_filter  # noqa: E402
from gfpo_filters.rollouts import read_rollouts, to_groups  # noqa: E402


def within_group_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Pairs (correct, incorrect) of the same group ordered right, ties one half; arrays (n, G)."""
    pos = labels[:, :, None] == 1
    neg = labels[:, None, :] == 0
    pairs = pos & neg
    diff = scores[:, :, None] - scores[:, None, :]
    good = ((diff > 0) + 0.5 * (diff == 0))[pairs].sum()
    return float(good / pairs.sum())


def quality(path: Path, seed: int, test_fraction: float, log: io.TextIOBase) -> dict[str, float]:
    rollouts = read_rollouts(path)
    keys = [g.prompt_id for g in rollouts]
    train_groups, test_groups = split_by_prompt(keys, test_fraction, seed)
    train = [rollouts[i] for i in train_groups]
    test = [rollouts[i] for i in test_groups]
    texts = [t for g in train for t in g.texts]
    rewards = [r for g in train for r in g.rewards]
    prompt_keys = [g.prompt_id for g in train for _ in g.texts]
    y = np.array([g.correct for g in test], dtype=np.float64)
    out: dict[str, float] = {}
    for name, relative in (("pooled", False), ("relative", True)):
        result = train_scorer(texts, rewards, prompt_keys, seed=seed, relative=relative, stream=log, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "scorer.pt"
            result.scorer.save(ckpt)
            f = load_filter("learned", checkpoint=ckpt, device="cpu")
            learned = f.score_groups(to_groups(test))
        out[f"{name}_auc"] = roc_auc(learned.ravel(), y.ravel())
        out[f"{name}_within"] = within_group_auc(learned, y)
        out[f"{name}_epoch"] = result.scorer.training["best_epoch"]
    length = np.array([[len(t) for t in g.texts] for g in test], dtype=np.float64)
    train_len = np.array([len(t) for t in texts], dtype=np.float64)
    sign = -1.0 if roc_auc(-train_len, np.array(rewards)) >= 0.5 else 1.0
    by_length = sign * length
    return {
        **out,
        "length_auc": roc_auc(by_length.ravel(), y.ravel()),
        "length_within": within_group_auc(by_length, y),
        "length_direction": "shorter first" if sign < 0 else "longer first",
        "n_test_prompts": len(test),
        "n_test_completions": int(y.size),
    }


def long_texts(path: Path, n: int, tokens: int) -> list[str]:
    rx = re.compile(FeatureConfig().pattern)
    stream = [w for g in read_rollouts(path) for t in g.texts for w in rx.findall(t)]
    out, pos = [], 0
    for _ in range(n):
        if pos + tokens > len(stream):
            pos = 0
        out.append(" ".join(stream[pos : pos + tokens]))
        pos += tokens
    return out


def speed(path: Path, ckpt_seed: int, repeat: int, tokens: int) -> dict[str, float]:
    rollouts = read_rollouts(path)
    texts = [t for g in rollouts for t in g.texts]
    rewards = [r for g in rollouts for r in g.rewards]
    keys = [g.prompt_id for g in rollouts for _ in g.texts]
    scorer = train_scorer(texts, rewards, keys, seed=ckpt_seed, epochs=1, progress=False, stream=io.StringIO()).scorer
    n_groups, g = 64, 16
    docs = long_texts(path, n_groups * g, tokens)
    assert all(len(featurize([d], scorer.features).dense) == 1 for d in docs[:1])
    groups = [docs[i * g : (i + 1) * g] for i in range(n_groups)]
    rewards_in = np.ones((n_groups, g))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "scorer.pt"
        scorer.save(ckpt)
        f = load_filter("learned", checkpoint=ckpt, device="cpu")
        f(groups, rewards_in)
        times, feat_times = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            f(groups, rewards_in)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            featurize(docs, scorer.features)
            feat_times.append(time.perf_counter() - t)
    n = n_groups * g
    med, feat = float(np.median(times)), float(np.median(feat_times))
    return {"completions": n, "seconds": med, "per_s": n / med, "featurize_share": feat / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--verbose", action="store_true", help="show the training log (validation metric per epoch)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = args.data / "gsm8k_g4.jsonl"
    log = sys.stderr if args.verbose else io.StringIO()
    print(f"gsm8k_g4: test = {args.test_fraction:.0%} of prompts, unseen in training; scorers with package defaults")
    print("AUC: all test completions pooled; within: (correct, incorrect) pairs of the same prompt only")
    cols = [
        ("pooled_auc", "pooled AUC"),
        ("relative_auc", "relative AUC"),
        ("length_auc", "length AUC"),
        ("pooled_within", "pooled within"),
        ("relative_within", "relative within"),
        ("length_within", "length within"),
    ]
    print(f"{'seed':>4}  " + "  ".join(f"{h:>15}" for _, h in cols) + "  best epochs (pooled, relative)")
    rows = []
    for seed in args.seeds:
        r = quality(path, seed, args.test_fraction, log)
        rows.append(r)
        print(
            f"{seed:>4}  "
            + "  ".join(f"{r[k]:>15.3f}" for k, _ in cols)
            + f"  {r['pooled_epoch']}, {r['relative_epoch']}  (length: {r['length_direction']})"
        )
    print(f"{'mean':>4}  " + "  ".join(f"{np.mean([r[k] for r in rows]):>15.3f}" for k, _ in cols))
    beats = sum(r["pooled_auc"] > r["length_auc"] for r in rows)
    beats_w = sum(r["relative_within"] > r["length_within"] for r in rows)
    print(
        f"pooled AUC > length AUC on {beats} of {len(rows)} splits; "
        f"relative within > length within on {beats_w} of {len(rows)} splits"
    )
    print(f"test set per seed: {rows[0]['n_test_prompts']} prompts, {rows[0]['n_test_completions']} completions")
    s = speed(path, 0, args.repeat, args.tokens)
    print(
        f"\nspeed (CPU, 1 thread): {s['completions']} completions of {args.tokens} scorer tokens in "
        f"{s['seconds'] * 1e3:.0f} ms = {s['per_s']:,.0f} completions/s "
        f"(featurising is {s['featurize_share']:.0%} of it)"
    )


if __name__ == "__main__":
    main()
