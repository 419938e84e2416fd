"""Fixtures for the verl adapter tests: one real Ray + TransferQueue for the session, trajectories
written as verl's ``agent_loop_tq`` writes them, and verl's own ``ppo_trainer.yaml`` composed by Hydra.

Every module here starts with ``pytest.importorskip("verl")``: without verl they are skipped.
"""

from __future__ import annotations

import copy
import os
import uuid
from typing import Any

import pytest

N = 4  # rollout.n of the trajectories these tests write


@pytest.fixture(scope="session")
def transfer_queue():
    """A real TransferQueue on a local Ray. Ray starts first with 4 logical CPUs: with fewer
    (a 2-core machine) ``tq.init()`` waits forever for its storage actors."""
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tq.init()
    yield tq
    tq.close()
    ray.shutdown()


@pytest.fixture
def partition(transfer_queue) -> str:
    """A fresh partition per test; ReplayBuffer lists all partitions but tracks each separately."""
    name = f"test{uuid.uuid4().hex[:8]}"
    yield name
    keys = list(transfer_queue.kv_list(partition_id=name).get(name, {}))
    if keys:
        transfer_queue.kv_clear(keys=keys, partition_id=name)


def write_group(
    tq: Any,
    partition: str,
    uid: str,
    sessions: list[list[tuple[int, float]]],
    *,
    status: str = "finished",
    prompt_len: int = 3,
    missing: tuple[int, ...] = (),
    reward: bool = True,
) -> list[str]:
    """Write one prompt's trajectories and then its terminal status, as verl's agent loop does.

    ``sessions[s]`` lists the outputs of session ``s`` as ``(response length, reward)`` or
    ``(response length, reward, tool tokens)``; the reward sits on the last response token
    (``rm_scores``). Tool tokens sit in the middle of the response with ``response_mask`` 0, as
    verl's tool agent loop writes a tool's output (the policy wrote the other tokens). Token ``t`` of
    output ``i`` of session ``s`` has id ``2 + (10 * s + 3 * i + t) % 26``: a letter of the toy
    tokenizer (``gfpo_filters.experiments.toy``). Sessions in ``missing`` are not written (a failed session).
    Returns the written keys.
    """
    import torch
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys, fields, tags = [], [], []
    for s, outputs in enumerate(sessions):
        if s in missing:
            continue
        for i, (length, r, *tool) in enumerate(outputs):
            response_mask = torch.ones(length, dtype=torch.int64)
            if tool:
                start = (length - tool[0]) // 2
                response_mask[start : start + tool[0]] = 0
            responses = 2 + (torch.arange(length, dtype=torch.int64) + 10 * s + 3 * i) % 26
            prompts = torch.ones(prompt_len, dtype=torch.int64)
            field = {
                "prompts": prompts,
                "responses": responses,
                "response_mask": response_mask,
                "input_ids": torch.cat([prompts, responses]),
                "attention_mask": torch.ones(prompt_len + length, dtype=torch.int64),
                "uid": uid,
                "raw_prompt": [{"role": "user", "content": f"prompt {uid}"}],
            }
            if reward:
                rm = torch.zeros(length, dtype=torch.float32)
                rm[-1] = r
                field["rm_scores"] = rm
            keys.append(f"{uid}_{s}_{i}")
            fields.append(field)
            tags.append(
                {
                    "status": "success",
                    "prompt_len": prompt_len,
                    "response_len": length,
                    "seq_len": prompt_len + length,
                    "global_steps": 0,
                }
            )
    if keys:
        tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(fields), tags=tags)
    tq.kv_put(key=uid, partition_id=partition, tag={"is_prompt": True, "status": status, "global_steps": 0})
    return keys


def new_uid() -> str:
    return uuid.uuid4().hex  # no "_": verl derives the uid as key.split("_")[0]


@pytest.fixture(scope="session")
def base_config():
    """verl's ``ppo_trainer.yaml``, composed by Hydra as ``verl.trainer.main_ppo`` composes it."""
    pytest.importorskip("verl")
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=["algorithm.adv_estimator=grpo"])


@pytest.fixture
def make_config(base_config):
    """A copy of the composed config with Hydra-style ``key=value`` overrides applied."""
    from omegaconf import OmegaConf

    def make(**overrides: Any):
        config = copy.deepcopy(base_config)
        for key, value in overrides.items():
            OmegaConf.update(config, key, value, force_add=True)
        return config

    return make


def gfpo_overrides(**sampler_kwargs: Any) -> dict[str, Any]:
    """The config lines of docs/verl.md, as a dict of overrides."""
    out = {
        "trainer.v1.sampler.custom_sampler.path": "pkg://gfpo_filters.integrations.verl",
        "trainer.v1.sampler.custom_sampler.name": "GFPOReplayBuffer",
    }
    out.update({f"trainer.v1.sampler.sampler_kwargs.{k}": v for k, v in sampler_kwargs.items()})
    return out


def build_buffer(config):
    """The replay buffer exactly as verl's trainer builds it (``PPOTrainer._build_replay_buffer``)."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    trainer = object.__new__(get_trainer_cls(config.trainer.v1.trainer_mode))
    trainer.config = config
    trainer.trainer_mode = config.trainer.v1.trainer_mode
    return trainer._build_replay_buffer()


def gfpo_config(make_config, mode="sync", adv_estimator="gfpo", **sampler_kwargs):
    """verl's config with the GFPO lines of docs/verl.md: the length filter, k = 3 of rollout.n = N."""
    sampler_kwargs.setdefault("filter", "length")
    sampler_kwargs.setdefault("num_remains_in_group", 3)
    return make_config(
        **{
            "actor_rollout_ref.rollout.n": N,
            "trainer.v1.trainer_mode": mode,
            "algorithm.adv_estimator": adv_estimator,
        },
        **gfpo_overrides(**sampler_kwargs),
    )


def present_keys(tq, partition):
    """The trajectory keys (not the prompt keys) left in a TransferQueue partition."""
    return {k for k, tag in tq.kv_list(partition_id=partition).get(partition, {}).items() if not tag.get("is_prompt")}
