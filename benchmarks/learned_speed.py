"""Speed of the ``learned`` filter with a built-in checkpoint, and the share spent featurising.

Scores 64 groups of 16 completions of ``--tokens`` scorer words each (words and punctuation marks of
gsm8k completions, joined by spaces, wrapping around the file) in one call, on CPU with one thread;
the median of ``--repeat`` calls after a warm-up call. Featurising (``featurize``: tokenising,
n-gram hashing, the group features with their similarity matrices) is timed alone on the same batch.

Two clocks: wall time, and the CPU time of the calling thread (``time.thread_time``). On a machine
shared with other jobs the wall time includes waiting for a core; the thread's CPU time does not,
so it is the figure for "one CPU thread" (torch and numpy run single-threaded here). Columns: the
medians, and completions per second of the fastest call (least disturbed by other jobs).
The checkpoint is trained for one epoch on gsm8k_g4 (the weights do not change the speed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_speed.py
"""

from __future__ import annotations

import argparse
import io
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gfpo_filters import load_filter  # noqa: E402
from gfpo_filters.filters.learned.features import featurize  # noqa: E402
from gfpo_filters.filters.learned.training import train_scorer  # noqa: E402
from gfpo_filters.ngrams import WORD_PATTERN  # noqa: E402
from gfpo_filters.rollouts import read_rollouts  # noqa: E402


def long_texts(rollouts: list, n: int, tokens: int) -> list[str]:
    rx = re.compile(WORD_PATTERN)
    stream = [w for g in rollouts for t in g.texts for w in rx.findall(t)]
    out, pos = [], 0
    for _ in range(n):
        if pos + tokens > len(stream):
            pos = 0
        out.append(" ".join(stream[pos : pos + tokens]))
        pos += tokens
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get("GFPO_FILTERS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data", type=Path, default=default_data, help="folder of the rollout files ($GFPO_FILTERS_DATA)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rollouts = read_rollouts(args.data / "gsm8k_g4.jsonl")
    texts = [t for g in rollouts for t in g.texts]
    rewards = [r for g in rollouts for r in g.rewards]
    keys = [g.prompt_id for g in rollouts for _ in g.texts]
    scorer = train_scorer(texts, rewards, keys, epochs=1, progress=False, stream=io.StringIO()).scorer
    n, g = args.groups, args.group_size
    print(f"learned filter (checkpoint), CPU, 1 thread: {n} groups x {g} completions per call, median of {args.repeat}")
    print(
        f"{'tokens':>7} {'CPU ms/call':>12} {'completions/s (CPU)':>20} {'featurising':>12} "
        f"{'wall ms/call':>13} {'best (CPU)/s':>14}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "scorer.pt"
        scorer.save(ckpt)
        f = load_filter("learned", checkpoint=ckpt, device="cpu")
        for tokens in args.tokens:
            docs = long_texts(rollouts, n * g, tokens)
            groups = [docs[i * g : (i + 1) * g] for i in range(n)]
            ones = np.ones((n, g))
            f(groups, ones)
            walls, cpus, feats = [], [], []
            for _ in range(args.repeat):
                w, c = time.perf_counter(), time.thread_time()
                f(groups, ones)
                walls.append(time.perf_counter() - w)
                cpus.append(time.thread_time() - c)
                c = time.thread_time()
                featurize(docs, (n, g), scorer.features)
                feats.append(time.thread_time() - c)
            wall, cpu, feat = (float(np.median(x)) for x in (walls, cpus, feats))
            best = min(cpus)
            print(
                f"{tokens:>7} {cpu * 1e3:>12.1f} {n * g / cpu:>20,.0f} {feat / cpu:>12.0%} {wall * 1e3:>13.1f}"
                f" {n * g / best:>14,.0f}"
            )


if __name__ == "__main__":
    main()
