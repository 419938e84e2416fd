"""Does TRL's weight sync reach vLLM's CPU backend? Plain GRPO (TRL's GRPOTrainer, no GFPO), vLLM colocate.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/vllm_weight_sync.py

Needs the vLLM environment (README: "vLLM"). Three runs of 3 optimizer steps (learning rate 1e-2) on the vLLM tests'
tiny model: TRL's sync as vLLM 0.31's CPU backend leaves it (it fails); the sync with
``tests/vllm_cpu/vllm_utils.keep_cpu_weights_loadable``; and the sync switched off (the engine keeps its start
weights). For each step it prints TRL's ``sampling/sampling_logp_difference/max``: the largest per-token gap
between vLLM's log-prob of what it sampled and the policy's. Small when vLLM samples from the policy's weights.
"""

from __future__ import annotations

import gc
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def run(model_dir: str, out: str, sync: bool) -> list[float]:
    from trl import GRPOTrainer

    from gfpo_filters.experiments.toy import build_dataset, build_tokenizer
    from tests.vllm_cpu.vllm_utils import reward, vllm_args

    gc.collect()
    args = vllm_args(out, num_remains_in_group=None, max_steps=3, learning_rate=1e-2)
    trainer = GRPOTrainer(
        model=model_dir, reward_funcs=[reward], args=args, train_dataset=build_dataset(16),
        processing_class=build_tokenizer(),
    )  # fmt: skip
    if not sync:
        trainer.vllm_generation.sync_weights = lambda: None
    trainer.train()
    return [h["sampling/sampling_logp_difference/max"] for h in trainer.state.log_history if "loss" in h]


def main() -> None:
    from tests.vllm_cpu.vllm_utils import keep_cpu_weights_loadable, save_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model")
        try:
            run(model_dir, tmp, sync=True)
            print("TRL's sync, vLLM's CPU backend as shipped: no error")
        except AttributeError as e:
            print(f"TRL's sync, vLLM's CPU backend as shipped: AttributeError: {e}")
        keep_cpu_weights_loadable()
        rows = {"sync with keep_cpu_weights_loadable": run(model_dir, tmp, sync=True)}
        rows["no sync (engine keeps its start weights)"] = run(model_dir, tmp, sync=False)
    print(f"{'largest log-prob gap, vLLM vs policy':42s} step 1   step 2   step 3")
    for name, gaps in rows.items():
        print(f"{name:42s} " + "  ".join(f"{g:7.4f}" for g in gaps))


if __name__ == "__main__":
    main()
