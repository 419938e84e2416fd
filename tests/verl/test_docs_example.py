"""The GRPO and GFPO commands of docs/verl.md compose against verl's ppo_trainer.yaml, and the GFPO one
builds GFPOReplayBuffer with no padding warning (it follows the batch sizing rule)."""

from __future__ import annotations

import os
import re
import shlex
import warnings
from pathlib import Path

import pytest

pytest.importorskip("verl")

from gfpo_filters.errors import GFPOFilterWarning  # noqa: E402
from gfpo_filters.integrations.verl import GFPOReplayBuffer  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "verl.md"


def doc_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(python3 -m verl\.trainer\.main_ppo .*?)```", DOC.read_text(), re.S)
    return [shlex.split(block.replace("\\\n", " "))[3:] for block in blocks]


def compose(overrides: list[str]):
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def test_the_grpo_and_gfpo_commands_build_their_buffers():
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    grpo, gfpo = doc_commands()
    # GFPO changes the estimator, n and ppo_mini_batch_size and adds the sampler lines; the rest is GRPO's.
    assert [a for a in grpo if a not in gfpo] == [
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.ppo_mini_batch_size=64",
        "actor_rollout_ref.rollout.n=8",
    ]
    assert "algorithm.adv_estimator=gfpo" in gfpo
    assert len(gfpo) == len(grpo) + 4

    buffers = []
    for overrides in (grpo, gfpo):
        config = compose(overrides)
        trainer = object.__new__(get_trainer_cls("sync"))
        trainer.config, trainer.trainer_mode, trainer.use_critic, trainer.global_steps = config, "sync", False, 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", GFPOFilterWarning)
            buffers.append(trainer._build_replay_buffer())
        # 64 prompts x 8 rows (GRPO) or x k=8 kept rows (GFPO) = 512 = the multiple verl pads to on 4 GPUs.
        assert trainer._get_required_batch_multiple(dp_size=4) == 512
    assert type(buffers[0]) is ReplayBuffer
    assert type(buffers[1]) is GFPOReplayBuffer
    assert buffers[1].group_filter.name == "token_efficiency" and buffers[1].num_remains_in_group == 8


def test_the_documented_sampler_kwargs_compose(tmp_path):
    """The filter_params, adaptive_k, keep_signal, advantage_std, fill_batch_multiple and tokenizer lines of the
    sampler_kwargs table."""
    table = DOC.read_text().split("### `trainer.v1.sampler.sampler_kwargs`")[1].split("\n## ")[0]
    lines = [shlex.split(x)[0] for x in re.findall(r"`('\+trainer[^`]*'|\+trainer[^`]*)`", table)]
    assert len(lines) == 6
    _, gfpo = doc_commands()
    overrides = [a for a in gfpo if not a.startswith("+trainer.v1.sampler.sampler_kwargs.filter=")]
    config = compose([*overrides, "+trainer.v1.sampler.sampler_kwargs.filter=weighted", *lines[:5]])
    from verl.trainer.ppo.v1 import get_trainer_cls

    trainer = object.__new__(get_trainer_cls("sync"))
    trainer.config, trainer.trainer_mode = config, "sync"
    buffer = trainer._build_replay_buffer()
    assert buffer.group_filter.name == "weighted" and buffer.group_filter.weights == [1.0, 0.5]
    assert buffer._adaptive.k_map.tolist() == [8, 8, 6, 4] and buffer._adaptive.warmup_k == 8
    assert buffer.keep_signal == "typical"
    assert buffer.advantage_std == "sample"
    assert buffer.row_multiple == 32 * 16  # ppo_mini_batch_size x rollout.n of the GFPO command
    # The tokenizer line is an interpolation of the model path (loading Qwen's tokenizer needs the network).
    assert lines[5] == "+trainer.v1.sampler.sampler_kwargs.tokenizer=${actor_rollout_ref.model.path}"
