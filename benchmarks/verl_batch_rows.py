"""Rows and tokens that reach verl's actor update, GRPO against GFPO, through verl's own code (issue 12).

    OMP_NUM_THREADS=1 python benchmarks/verl_batch_rows.py [--data DIR]

Needs the ``verl`` extra (``pip install -e ".[verl]"``); runs on CPU in about a minute. For each
configuration it writes real rollout groups (8 completions per prompt, with their rewards) into a
real TransferQueue as verl's agent loop writes trajectories, samples them with verl's
``ReplayBuffer`` (GRPO) or ``GFPOReplayBuffer`` (GFPO, ``token_efficiency``), both built by verl's
``PPOTrainer._build_replay_buffer`` from ``ppo_trainer.yaml``, and pads the batch as
``PPOTrainer._balance_batch`` does (``upsample_batch_to_divisible_size`` to
``_get_required_batch_multiple``, here with 2 data-parallel ranks). It reports, per training step,
the rows that reach the update (real + synthetic) and their tokens (prompt + response; a synthetic
row is 128 tokens). The rollout files have no token ids, so a character counts as one token.

Then it times what the selection adds to verl's ``sample`` at a larger scale (64 prompts x 16
sessions of 1,000 to 3,000 random tokens, reading every row's ``responses``, ``response_mask`` and
``rm_scores`` from TransferQueue onto the driver): the best of ``--repeats`` runs of each buffer's ``sample``.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# (label, prompts per step, k or None for GRPO, actor.ppo_mini_batch_size, adaptive_k[, fill_batch_multiple])
CASES = [
    ("GRPO", 4, None, 4, None),
    ("GFPO k=3, GRPO's batch sizes (the issue's case)", 4, 3, 4, None),
    ("GFPO k=4, ppo_mini_batch_size = 4*4/8 = 2", 4, 4, 2, None),
    ("GRPO", 8, None, 8, None),
    ("GFPO k=3, ppo_mini_batch_size = 8*3/8 = 3", 8, 3, 3, None),
    ("GFPO k=4, ppo_mini_batch_size = 8*4/8 = 4", 8, 4, 4, None),
    ("GFPO adaptive k 6/4/4/2, ppo_mini_batch_size = 4", 8, 4, 4, [6, 4, 4, 2]),
    ("GFPO adaptive k 6/4/4/2, ppo_mini_batch_size = 1", 8, 4, 1, [6, 4, 4, 2]),
    ("GFPO adaptive k 6/4/4/2, ppo_mini_batch_size = 4, fill_batch_multiple", 8, 4, 4, [6, 4, 4, 2], True),
    ("GFPO adaptive k 6/4/4/2, ppo_mini_batch_size = 1, fill_batch_multiple", 8, 4, 1, [6, 4, 4, 2], True),
]


def compose(n: int, prompts: int, mini: int, k: int | None, adaptive: list[int] | None, fill: bool = False):
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [
        f"algorithm.adv_estimator={'grpo' if k is None else 'gfpo'}",
        f"actor_rollout_ref.rollout.n={n}",
        f"data.train_batch_size={prompts}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
    ]
    if k is not None:
        overrides += [
            "trainer.v1.sampler.custom_sampler.path=pkg://gfpo_filters.integrations.verl",
            "trainer.v1.sampler.custom_sampler.name=GFPOReplayBuffer",
            "+trainer.v1.sampler.sampler_kwargs.filter=token_efficiency",
            f"+trainer.v1.sampler.sampler_kwargs.num_remains_in_group={k}",
        ]
        if adaptive:
            overrides.append(f"+trainer.v1.sampler.sampler_kwargs.adaptive_k=[{','.join(map(str, adaptive))}]")
        if fill:
            overrides.append("+trainer.v1.sampler.sampler_kwargs.fill_batch_multiple=true")
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def write_group(tq, partition: str, group) -> None:
    """One prompt's completions as verl's ``agent_loop_tq`` stores them; then the prompt's status."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    uid = uuid.uuid4().hex
    prompt = torch.full((max(1, len(group.prompt or "")),), 5, dtype=torch.int64)
    keys, fields, tags = [], [], []
    for s, (text, reward) in enumerate(zip(group.texts, group.rewards)):
        response = torch.full((max(1, len(text)),), 7, dtype=torch.int64)
        rm_scores = torch.zeros(len(response))
        rm_scores[-1] = reward
        keys.append(f"{uid}_{s}_0")
        fields.append(
            {
                "prompts": prompt,
                "responses": response,
                "response_mask": torch.ones_like(response),
                "input_ids": torch.cat([prompt, response]),
                "attention_mask": torch.ones(len(prompt) + len(response), dtype=torch.int64),
                "rm_scores": rm_scores,
                "uid": uid,
            }
        )
        tags.append({"prompt_len": len(prompt), "response_len": len(response), "seq_len": len(prompt) + len(response)})
    tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(fields), tags=tags)
    tq.kv_put(key=uid, partition_id=partition, tag={"is_prompt": True, "status": "finished", "global_steps": 0})


def run_case(tq, groups, steps: int, prompts: int, k, mini: int, adaptive, dp: int, fill=False) -> dict[str, float]:
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1 import get_trainer_cls

    n = len(groups[0].texts)
    config = compose(n, prompts, mini, k, adaptive, fill)
    trainer = object.__new__(get_trainer_cls("sync"))
    trainer.config, trainer.trainer_mode, trainer.use_critic, trainer.global_steps = config, "sync", False, 0
    buffer = trainer._build_replay_buffer()
    partition = f"bench{uuid.uuid4().hex[:8]}"
    totals = {"sampled": 0, "kept": 0, "rows": 0, "synthetic": 0, "tokens": 0}
    for step in range(steps):
        for group in groups[step * prompts : (step + 1) * prompts]:
            write_group(tq, partition, group)
        batch, _ = buffer.sample(global_steps=step, partition_id=partition, batch_size=prompts)
        padded = upsample_batch_to_divisible_size(batch, trainer._get_required_batch_multiple(dp), eos_token_id=2)
        totals["sampled"] += prompts * n
        totals["kept"] += len(batch)
        totals["rows"] += len(padded)
        totals["synthetic"] += sum(bool(tag.get("is_padding")) for tag in padded.tags)
        totals["tokens"] += sum(tag["seq_len"] for tag in padded.tags)
        tq.kv_clear(keys=padded.keys, partition_id=partition)
    return {key: value / steps for key, value in totals.items()}


def time_sample(tq, repeats: int, prompts: int = 64, n: int = 16) -> dict[str, float]:
    """Best-of-``repeats`` seconds of ``sample`` for verl's ReplayBuffer and GFPOReplayBuffer (k = n / 2)."""
    import numpy as np
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rng = np.random.default_rng(0)
    best: dict[str, float] = {}
    for label, k in (("ReplayBuffer (GRPO)", None), ("GFPOReplayBuffer, token_efficiency", n // 2)):
        trainer = object.__new__(get_trainer_cls("sync"))
        trainer.config, trainer.trainer_mode = compose(n, prompts, prompts * (k or n) // n, k, None), "sync"
        buffer = trainer._build_replay_buffer()
        for _ in range(repeats):
            partition = f"time{uuid.uuid4().hex[:8]}"
            for _ in range(prompts):
                uid = uuid.uuid4().hex
                lengths = rng.integers(1000, 3000, n)
                fields = [
                    {
                        "responses": torch.randint(2, 30000, (int(ln),)),
                        "response_mask": torch.ones(int(ln), dtype=torch.int64),
                        "rm_scores": torch.zeros(int(ln)),
                    }
                    for ln in lengths
                ]
                for f in fields:
                    f["rm_scores"][-1] = float(rng.integers(0, 2))
                tags = [{"response_len": int(ln), "seq_len": int(ln) + 200} for ln in lengths]
                keys = [f"{uid}_{s}_0" for s in range(n)]
                tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(fields), tags=tags)
                tq.kv_put(
                    key=uid, partition_id=partition, tag={"is_prompt": True, "status": "finished", "global_steps": 0}
                )
            start = time.perf_counter()
            batch, _ = buffer.sample(global_steps=0, partition_id=partition, batch_size=prompts)
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - start)
            keys = list(tq.kv_list(partition_id=partition).get(partition, {}))
            tq.kv_clear(keys=keys, partition_id=partition)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="directory of the real rollout files")
    parser.add_argument("--rollouts", default="math100_qwen25_g8.jsonl", help="file in --data (equal group sizes)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per configuration")
    parser.add_argument("--dp", type=int, default=2, help="data-parallel ranks of the actor")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of sample (best is reported)")
    args = parser.parse_args()

    import ray
    import transfer_queue as tq

    from gfpo_filters.rollouts import read_rollouts

    path = args.data / args.rollouts
    groups = read_rollouts(path)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tq.init()
    try:
        print(f"{path.name}: G={len(groups[0].texts)}, {args.dp} data-parallel ranks, {args.steps} steps")
        print()
        columns = ["configuration", "prompts/step", "sampled rows", "kept rows", "rows in update", "synthetic"]
        print("| " + " | ".join([*columns, "tokens in update"]) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for label, prompts, k, mini, adaptive, *fill in CASES:
            r = run_case(tq, groups, args.steps, prompts, k, mini, adaptive, args.dp, *fill)
            print(
                f"| {label} | {prompts} | {r['sampled']:.0f} | {r['kept']:.1f} | {r['rows']:.1f} | "
                f"{r['synthetic']:.1f} | {r['tokens']:,.0f} |"
            )
        print()
        print("sample() of 64 prompts x 16 sessions (1,000-3,000 tokens each), best of", args.repeats)
        for label, seconds in time_sample(tq, args.repeats).items():
            print(f"- {label}: {seconds:.3f} s")
    finally:
        tq.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
