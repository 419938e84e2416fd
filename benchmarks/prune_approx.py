"""How much the approximate pruning rule changes the selection, on real rollout groups (docs/pruning.md).

``FirstFinished(m)``: once max(m, k) completions of a group have finished, stop the rest and select among the
finished. Generation is replayed in lockstep (gfpo_filters.pruning.simulate) with lengths in words (the data has
no token counts); a stopped completion keeps its first words and gets no reward. For each filter and keep_signal
mode, k = G/2 and each m from k to G-1, against the same groups unpruned: the share of groups whose kept set
changes, kept accuracy and kept length, and the decode steps and words written (per group, relative to unpruned).
The exact rule (``length``, keep_signal off) is in the table as the control: it changes nothing.

    python benchmarks/prune_approx.py --data ../data --out docs/benchmark/prune_approx.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gfpo_filters import load_filter  # noqa: E402
from gfpo_filters.groups import Groups  # noqa: E402
from gfpo_filters.pruning import FirstFinished, ShortestK, simulate  # noqa: E402
from gfpo_filters.rollouts import read_rollouts  # noqa: E402
from gfpo_filters.step import select  # noqa: E402

SETTINGS = [("length", "off"), ("token_efficiency", "off"), ("token_efficiency", "typical"), ("reward", "off"),
            ("diversity", "off"), ("consensus", "off")]  # fmt: skip


def kept_of(name: str, texts, rewards, lengths, k, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = load_filter(name).score_groups(Groups(texts, rewards, completion_lengths=lengths))
    return select(scores, rewards, k, lengths=lengths, keep_signal=mode).kept


def measure(path: Path) -> list[dict]:
    groups = [g for g in read_rollouts(path) if np.isfinite(g.rewards).all()]
    size = max({g.size for g in groups}, key=lambda s: sum(g.size == s for g in groups))
    groups = [g for g in groups if g.size == size]
    texts = [g.texts for g in groups]
    words = [[t.split() for t in g.texts] for g in groups]
    lengths = np.array([[max(len(w), 1) for w in grp] for grp in words])
    rewards = np.array([g.rewards for g in groups], dtype=np.float64)
    correct = np.array([g.correct for g in groups], dtype=np.float64)
    k = size // 2
    rows = []
    for name, mode in SETTINGS:
        before = kept_of(name, texts, rewards, lengths, k, mode)
        rules = [("ShortestK", ShortestK())] if (name, mode) == ("length", "off") else []
        rules += [(f"FirstFinished(m={m})", FirstFinished(m)) for m in range(k, size)]
        for label, rule in rules:
            sim = simulate(rule, lengths, rewards, k)  # one lockstep batch; per-group steps below
            pruned, cut = sim.pruned, sim.pruned_lengths
            cut_texts = [[" ".join(w[: cut[i, j]]) for j, w in enumerate(grp)] for i, grp in enumerate(words)]
            seen = np.where(pruned, cut, lengths)
            after = kept_of(name, cut_texts, np.where(pruned, np.nan, rewards), seen, k, mode)
            rows.append(
                {
                    "data": path.stem,
                    "G": size,
                    "k": k,
                    "groups": len(groups),
                    "filter": name,
                    "keep_signal": mode,
                    "rule": label,
                    "changed_groups": float((after != before).any(axis=1).mean()),
                    "kept_accuracy": float(correct[after].mean()),
                    "kept_accuracy_unpruned": float(correct[before].mean()),
                    "kept_length": float(lengths[after].mean()),
                    "kept_length_unpruned": float(lengths[before].mean()),
                    # A group decoded alone ends when its last row stops: per group, against its longest row.
                    "decode_steps": float((cut.max(axis=1) / lengths.max(axis=1)).mean()),
                    "words_written": float(cut.sum() / lengths.sum()),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| data | filter | keep_signal | rule | groups changed | kept accuracy (unpruned) | kept words (unpruned) "
        "| decode steps | words written |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['data']} (G={r['G']}, k={r['k']}) | {r['filter']} | {r['keep_signal']} | {r['rule']} | "
            f"{r['changed_groups']:.2f} | {r['kept_accuracy']:.3f} ({r['kept_accuracy_unpruned']:.3f}) | "
            f"{r['kept_length']:.0f} ({r['kept_length_unpruned']:.0f}) | {r['decode_steps']:.2f}x | "
            f"{r['words_written']:.2f}x |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "data"))
    p.add_argument("--files", nargs="+", default=["gsm8k_g4.jsonl", "math100_qwen25_g8.jsonl"])
    p.add_argument("--out", default="docs/benchmark/prune_approx.json")
    args = p.parse_args(argv)
    rows = [r for f in args.files for r in measure(Path(args.data) / f)]
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
