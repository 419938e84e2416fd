"""GFPOTrainer with TRL's vLLM generation (colocate: the engine runs in the training process), on vLLM's CPU
backend: the step equals TRL's GRPOTrainer step on the kept rows, with importance-sampling correction on.

vLLM samples from the saved weights while the policy starts from slightly moved ones (TRL's weight sync is
switched off in these tests), so the importance-sampling ratios spread around 1 and the clip bounds act.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM tests run in their own environment (README)")
pytest.importorskip("trl")

from tests.vllm_cpu.vllm_utils import (  # noqa: E402
    CLIP_MAX,
    CLIP_MIN,
    IS_MODES,
    concat_rows,
    expected_ratio,
    gfpo_step,
    real_rows,
    reference_step,
)

pytestmark = pytest.mark.vllm

#: Every vLLM importance-sampling mode with TRL's default loss, and VESPO with the two modes it accepts.
CASES = [(mode, "grpo") for mode in IS_MODES] + [("token_truncate", "vespo"), ("token_mask", "vespo")]
#: One step, gradients as computed: no clipping, so the gradient the optimizer sees is the loss's.
STEP = dict(max_grad_norm=0.0, max_steps=1)


@pytest.mark.parametrize(("mode", "loss_type"), CASES)
def test_step_equals_grpo_on_kept_rows(tmp_path, model_dir, mode, loss_type):
    settings = dict(loss_type=loss_type, vllm_importance_sampling_mode=mode, **STEP)
    trainer, step = gfpo_step(model_dir, str(tmp_path / "gfpo"), **settings)
    rows = [real_rows(b) for b in step.micro_batches]
    batch = concat_rows(rows)
    assert len(batch["advantages"]) == 6  # 2 groups x k = 3

    # Each kept row carries the ratio TRL computed for it, 1 on the columns past its completion.
    for b in rows:
        torch.testing.assert_close(b["importance_sampling_ratio"], expected_ratio(b, mode), rtol=0, atol=0)
    ratio = batch["importance_sampling_ratio"]
    real = batch["completion_mask"].bool() if ratio.shape[1] > 1 else torch.ones_like(ratio, dtype=torch.bool)
    clipped = (ratio[real] == 0) | (ratio[real] == CLIP_MIN) | (ratio[real] == CLIP_MAX)
    assert clipped.any() and not clipped.all(), ratio  # a real gap: the bounds act on some rows or tokens

    ref_loss, ref_grads = reference_step(model_dir, str(tmp_path / "ref"), batch, **settings)
    assert step.grads.keys() == ref_grads.keys() and step.grads
    assert max(float(g.abs().max()) for g in ref_grads.values()) > 1e-4  # not a step the ratios switched off
    for name, grad in step.grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_weight_sync_reaches_vllm(tmp_path, model_dir):
    """With ``keep_cpu_weights_loadable`` TRL's weight sync works on vLLM's CPU backend: after a large update, vLLM's
    log-probs of what it sampled still match the policy's (0.72 with the engine left at its start weights:
    benchmarks/vllm_weight_sync.py)."""
    trainer, _ = gfpo_step(model_dir, str(tmp_path), shift=0.0, sync=True, max_steps=2, learning_rate=1e-2)
    gaps = [h["sampling/sampling_logp_difference/max"] for h in trainer.state.log_history if "loss" in h]
    assert len(gaps) == 2
    assert gaps[1] < 0.02, gaps  # step 2 sampled after the first update was pushed to vLLM


def _row_key(batch, i):
    """A row's identity across processes: its prompt and completion tokens and vLLM's log-probs of them."""
    mask = batch["completion_mask"][i].bool()
    prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
    return (
        tuple(prompt.tolist()),
        tuple(batch["completion_ids"][i][mask].tolist()),
        tuple(batch["sampling_per_token_logps"][i][mask].tolist()),
    )


def _row(batch, i):
    """Row ``i`` of a batch, as a batch of one row."""
    n = len(batch["advantages"])
    return {k: v[i : i + 1] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n else v for k, v in batch.items()}


@pytest.mark.distributed
def test_two_processes_step_equals_grpo_on_kept_rows(tmp_path, model_dir):
    """Two processes, each with its own vLLM engine, keeping different numbers of rows (2 and 4). Every kept row
    trains on the process that generated it, with TRL's importance ratio on every column (rows never move, so none
    gains columns: issue 16's finding 1 cannot happen), placeholder rows fill the shorter process's micro-batch, and
    the step equals TRL's on all kept rows."""
    from tests.trainer_utils import run_two_processes

    mode, loss_type = "token_truncate", "vespo"  # one case: two engines take about a minute on 2 cores
    worker = Path(__file__).with_name("worker.py")
    run_two_processes(tmp_path, model_dir, mode, loss_type, worker=worker)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    sources = {}  # row identity -> (process, the row as TRL built it there)
    for r, saved in enumerate(ranks):
        trl = saved["trl"]
        for i in range(len(trl["advantages"])):
            sources[_row_key(trl, i)] = (r, _row(trl, i))
    as_trained, as_built, kept = [], [], []
    for r, saved in enumerate(ranks):
        kept.append(0)
        for b in (real_rows(m) for m in saved["micro_batches"]):
            for i in range(len(b["advantages"])):
                source, row = sources[_row_key(b, i)]
                assert source == r, f"row {i} trained on process {r} was generated on process {source}"
                ratio, trl_ratio = b["importance_sampling_ratio"][i], row["importance_sampling_ratio"][0]
                assert len(ratio) <= len(trl_ratio) and torch.equal(ratio, trl_ratio[: len(ratio)])
                as_trained.append(_row(b, i))
                as_built.append({**row, "advantages": b["advantages"][i : i + 1]})  # GFPO's advantage
                kept[r] += 1
    assert sorted(kept) == [2, 4], kept  # the case: the processes keep different counts

    torch.testing.assert_close(ranks[0]["grads"], ranks[1]["grads"], rtol=0, atol=0)  # DDP averaged them
    # TRL's own step on the kept rows as TRL built them on their own processes, padded as TRL pads one batch.
    settings = dict(loss_type=loss_type, vllm_importance_sampling_mode=mode, **STEP)
    reference = concat_rows(as_built)
    reference["num_items_in_batch"] = reference["completion_mask"].sum()  # TRL's count, on a batch of these rows
    _, ref_grads = reference_step(model_dir, str(tmp_path / "ref"), reference, **settings)
    assert ranks[0]["grads"].keys() == ref_grads.keys()
    assert max(float(g.abs().max()) for g in ref_grads.values()) > 1e-4
    for name, grad in ranks[0]["grads"].items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
