"""GFPO's training step is TRL's GRPOTrainer step on the kept rows, for every loss type and feature (issue 16).

Each case (``trainer_utils.exact_case``) trains GFPOTrainer on a tiny model for whole optimizer steps (several
micro-batches, gradient accumulation, SGD, no clipping), with off-policy old log-probs and importance ratios so that
the loss is not 0, recording the gradient of every optimizer step. Then TRL's own GRPOTrainer, whose generation
only returns the rows GFPO kept (laid out by TRL's rules in ``trainer_utils.reference_batch``, not by the adapter)
and restores the RNG state GFPO's shuffle drew from, trains from the same initial model with the same processes,
``steps_per_generation`` and accumulation: TRL does the shuffle, the micro-batches, every loss normaliser, the entropy
bonus, the router loss, DDP and the optimizer. Gradients, losses and parameters must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from tests.trainer_utils import (  # noqa: E402
    EXACT_FEATURES,
    LOSS_TYPES,
    SHAPE_LOSSES,
    SHAPES,
    TWO_PROCESS_CASES,
    TWO_PROCESS_SHAPE_CASES,
    TWO_PROCESS_SHAPES,
    exact_case,
    exact_features,
    run_two_processes,
    step_reference,
)

pytestmark = pytest.mark.trainer

FEATURES = list(exact_features())


def assert_same_training(case, processes=1):
    gfpo, grpo = case["gfpo"], case["grpo"]
    assert grpo is not None, "the kept rows did not fill equal micro-batches"
    for kept, _ in case["decisions"]:
        assert kept.sum() % processes == 0
    assert len(gfpo["grads"]) == len(grpo["grads"]) >= 1
    assert len(gfpo["micro_batches"]) == len(grpo["micro_batches"])
    # The same micro-batches: the same rows (advantages and tokens) in the same order.
    for a, b in zip(gfpo["micro_batches"], grpo["micro_batches"]):
        torch.testing.assert_close(a["advantages"], b["advantages"], rtol=0, atol=0)
        assert a["completion_mask"].sum(1).tolist() == b["completion_mask"].sum(1).tolist()
    assert max(abs(x) for x in grpo["losses"]) > 1e-3  # off-policy: a loss that a wrong scale would change
    assert gfpo["losses"] == pytest.approx(grpo["losses"], rel=1e-5, abs=1e-8)
    for ga, gb in zip(gfpo["grads"], grpo["grads"]):
        assert ga.keys() == gb.keys() and ga
        for name in gb:
            torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
    for name, p in grpo["params"].items():
        torch.testing.assert_close(gfpo["params"][name], p, rtol=1e-5, atol=1e-7)


def assert_fields_as_trl_lays_them_out(case):
    """Every field GFPO trains on holds what TRL's own batch of the kept rows holds; past a row's end, where TRL's
    value is a model's output, any finite value (it is masked in every loss term)."""
    for trained, reference, free in zip(case["trained"], case["references"], case["free"]):
        assert trained.keys() == reference.keys()
        for key, want in reference.items():
            got = trained[key]
            if not torch.is_tensor(want):
                assert got == want, key
                continue
            assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, want.shape)
            if key in free:
                assert torch.isfinite(got).all(), key
                got, want = got.masked_fill(free[key], 0), want.masked_fill(free[key], 0)
            assert torch.equal(got, want), f"{key}: {got} != {want}"


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_step_is_grpo_on_the_kept_rows(tmp_path, loss_type, feature):
    case = exact_case(str(tmp_path), loss_type, feature)
    assert_same_training(case)
    assert_fields_as_trl_lays_them_out(case)
    # The base case keeps k = 2 of each group of 4: 6 rows, two micro-batches of 3, nothing added.
    if feature == "base":
        assert [int(k.sum()) for k, _ in case["decisions"]] == [6]


def assert_same_step(case, loss_type, feature, out_dir, processes=1):
    """GFPO's gradients in a shape GRPOTrainer cannot train (unequal micro-batches, placeholders) against
    ``step_reference``: per optimizer step, GRPOTrainer on one micro-batch of every kept row that step trained."""
    micro = [case["gfpo"]["micro_batches"]] if processes == 1 else case["micro_all"]
    generated = [case["generated"]] if processes == 1 else case["generated_all"]
    reference = step_reference(out_dir, loss_type, feature, micro, generated)
    assert case["grpo"] is None  # no equal micro-batches: the matrix's replay does not apply
    assert len(case["gfpo"]["grads"]) == len(reference["grads"]) >= 1
    assert max(abs(x) for x in case["gfpo"]["losses"]) > 1e-3
    for ga, gb in zip(case["gfpo"]["grads"], reference["grads"]):
        for name in gb:
            torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def kept_and_trained(case) -> list[tuple[int, int]]:
    """Per generation batch: rows the filter chose, and rows the micro-batches trained (completion mask > 0)."""
    trained = [int((b["completion_mask"].sum(1) > 0).sum()) for b in case["gfpo"]["micro_batches"]]
    per_generation = len(trained) // len(case["decisions"])
    return [
        (int(kept.sum()), sum(trained[i * per_generation : (i + 1) * per_generation]))
        for i, (kept, _) in enumerate(case["decisions"])
    ]


@pytest.mark.parametrize("shape", [s for s in SHAPES if s not in TWO_PROCESS_SHAPES])
@pytest.mark.parametrize("loss_type", SHAPE_LOSSES)
def test_every_batch_shape_trains_the_kept_rows_with_grpos_update(tmp_path, loss_type, shape):
    """Issue 21: b = 1 and 2 with accumulation, adaptive k, k not dividing the micro-batches. The rows trained are
    the rows the filter chose, k per group, and the update is GRPO's on them."""
    case = exact_case(str(tmp_path), loss_type, shape)
    # (with no iterations, each generation batch's micro-batches are trained once)
    assert all(chosen == trained for chosen, trained in kept_and_trained(case)), kept_and_trained(case)
    k = {"b1-ga4": 2, "b2-ga4": 3, "k3-of-4": 3}.get(shape)
    if k is not None:  # k per group, every group
        assert all((kept.sum(axis=1) == k).all() for kept, _ in case["decisions"])
    assert_same_step(case, loss_type, shape, str(tmp_path))


@pytest.mark.distributed
def test_step_is_grpo_on_the_kept_rows_on_two_processes(tmp_path):
    """TWO_PROCESS_CASES on two processes (gloo), in one torchrun launch: each process keeps 6 of its 12 rows (two
    micro-batches of 3, GRPOTrainer's shape: bit for bit), DDP averages. Then TWO_PROCESS_SHAPE_CASES: a group that
    straddles both processes (they keep different counts), batch size 1 with accumulation and adaptive k, each
    against ``step_reference``: every kept row trained once, on the process that generated it."""
    cases = [(loss, feature) for loss, feature in TWO_PROCESS_CASES if feature in FEATURES]
    shapes = list(TWO_PROCESS_SHAPE_CASES)
    run_two_processes(tmp_path, "exact", ",".join(f"{a}:{b}" for a, b in cases + shapes), timeout=2400)
    failures = []
    for loss_type, feature in cases + shapes:
        ranks = [torch.load(tmp_path / f"{loss_type}-{feature}-rank{r}.pt", weights_only=False) for r in range(2)]
        try:
            for case in ranks:
                if (loss_type, feature) in shapes:
                    chosen = [int(kept.sum()) for kept, _ in case["decisions"]]
                    trained = [0] * len(chosen)
                    for rank_batches in case["micro_all"]:
                        per = len(rank_batches) // len(chosen)
                        for i in range(len(chosen)):
                            trained[i] += sum(int((b["completion_mask"].sum(1) > 0).sum())
                                              for b in rank_batches[i * per : (i + 1) * per])  # fmt: skip
                    assert trained == chosen, (trained, chosen)
                    if case is ranks[0]:  # (both hold every process's batches)
                        assert_same_step(case, loss_type, feature, str(tmp_path / f"ref-{loss_type}-{feature}"), 2)
                    continue
                assert_same_training(case, processes=2)
                assert_fields_as_trl_lays_them_out(case)
            # Both processes trained from one decision.
            for (k0, a0), (k1, a1) in zip(ranks[0]["decisions"], ranks[1]["decisions"]):
                assert np.array_equal(k0, k1) and np.array_equal(a0, a1)
        except AssertionError as e:
            failures.append(f"{loss_type} x {feature}: {str(e)[:300]}")
    assert not failures, "\n".join(failures)


def test_the_matrix_skips_nothing_on_trl_116():
    import trl
    from packaging.version import Version

    if Version(trl.__version__) < Version("1.16"):
        pytest.skip(f"TRL {trl.__version__} lacks some features: {sorted(set(EXACT_FEATURES) - set(FEATURES))}")
    assert FEATURES == list(EXACT_FEATURES)
