"""GFPO's training step against TRL's GRPOTrainer on the same kept rows: max |gradient difference|, per loss type x
feature x process count (issue 16), and per loss type x batch shape (issue 21, ``--shapes``).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/trainer_exact.py --procs 1   # or 2 (torchrun, gloo)
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/trainer_exact.py --shapes    # unequal micro-batches

Each case is ``tests/trainer_utils.exact_case``: one GFPO run of the tiny Llama (3 groups of 4 per process, k = 3,
off-policy old log-probs and importance ratios, SGD, no clipping) recording every optimizer step's gradient, and
TRL's own GRPOTrainer trained on the rows GFPO kept. Two references:

* ``exact``: GRPOTrainer with the same processes, ``steps_per_generation`` and gradient accumulation, on the kept
  rows laid out as TRL lays them out, with the same shuffle (what ``tests/test_trainer_exact.py`` asserts). It
  exists only when the kept rows fill equal micro-batches, which the adapter before issue 16 did not guarantee.
* ``step``: per optimizer step, GRPOTrainer on one process trains one micro-batch of every real row that step
  trained (``trainer_utils.step_reference``). It applies to any run, padded or not; for bnpo, the entropy bonus and
  the router loss, which are means per micro-batch, it is one layout among others, so a difference there is partly
  the split.

To measure the adapter before issue 16, put its package first:
``git archive 590bd89 gfpo_filters | tar -x -C /tmp/before && ln -s $PWD/tests /tmp/before/tests`` and
``PYTHONPATH=/tmp/before``. A case that raises prints its error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
EXACT_ONLY = False


def row(loss_type: str, feature: str, procs: int, cases: list[dict], out: str) -> str:
    from tests.trainer_utils import max_grad_diff, step_reference

    case = cases[0]
    exact = "n/a" if case["grpo"] is None else f"{max_grad_diff(case['gfpo']['grads'], case['grpo']['grads']):.2e}"
    scale = max(float(g.abs().max()) for g in case["gfpo"]["grads"][0].values())
    if EXACT_ONLY:
        return f"| {loss_type} | {feature} | {procs} | {exact} | | {scale:.2e} |"
    micro, generated = [c["gfpo"]["micro_batches"] for c in cases], [c["generated"] for c in cases]
    ref = step_reference(out, loss_type, feature, micro, generated)
    step = max_grad_diff(case["gfpo"]["grads"], ref["grads"])
    return f"| {loss_type} | {feature} | {procs} | {exact} | {step:.2e} | {scale:.2e} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=1, choices=(1, 2))
    parser.add_argument("--cases", default="", help="loss:feature,... (default: all; two processes: TWO_PROCESS_CASES)")
    parser.add_argument("--saved", default="", help="two processes: read this finished run's files, do not launch")
    parser.add_argument("--exact-only", action="store_true", help="skip the per-step reference")
    parser.add_argument("--shapes", action="store_true", help="the batch shapes of issue 21 (SHAPES), every loss")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.trainer_utils import (
        LOSS_TYPES,
        SHAPES,
        TWO_PROCESS_CASES,
        TWO_PROCESS_SHAPE_CASES,
        TWO_PROCESS_SHAPES,
        exact_case,
        exact_features,
        run_two_processes,
    )

    features = exact_features()
    if args.shapes:
        shapes = [s for s in SHAPES if (s in TWO_PROCESS_SHAPES) == (args.procs == 2)]
        cases = [(loss, shape) for loss in LOSS_TYPES for shape in shapes] if args.procs == 1 else [
            (a, b) for a, b in TWO_PROCESS_SHAPE_CASES]  # fmt: skip
    else:
        cases = [c.split(":") for c in args.cases.split(",")] if args.cases else [
            (loss, feature) for loss in LOSS_TYPES for feature in features
        ] if args.procs == 1 else [(a, b) for a, b in TWO_PROCESS_CASES if b in features]  # fmt: skip
    global EXACT_ONLY
    EXACT_ONLY = args.exact_only
    print("| loss | feature | processes | exact reference | step reference | max |grad| |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        if args.saved:
            out = args.saved
        elif args.procs == 2:
            try:
                run_two_processes(Path(out), "exact", ",".join(f"{a}:{b}" for a, b in cases), timeout=3600)
            except AssertionError as e:
                print(str(e)[-3000:])
        for loss_type, feature in cases:
            try:
                if args.procs == 1:
                    print(row(loss_type, feature, 1, [exact_case(out, loss_type, feature)], out), flush=True)
                else:
                    ranks = [torch.load(Path(out, f"{loss_type}-{feature}-rank{r}.pt"), weights_only=False)
                             for r in range(2)]  # fmt: skip
                    if "error" in ranks[0]:
                        raise RuntimeError(ranks[0]["error"])
                    print(row(loss_type, feature, 2, ranks, out), flush=True)
            except Exception as e:  # noqa: BLE001 - a failing case is a result too
                error = f"{type(e).__name__}: {str(e)[:120]}"
                print(f"| {loss_type} | {feature} | {args.procs} | {error} | | |", flush=True)


if __name__ == "__main__":
    main()
