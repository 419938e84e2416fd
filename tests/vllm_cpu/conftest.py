"""Fixtures for the vLLM tests: a tiny model saved once per session, which each test's vLLM engine loads.

Every module here starts with ``pytest.importorskip("vllm")``: without vLLM they are skipped.
"""

from __future__ import annotations

import pytest

from tests.vllm_cpu.vllm_utils import save_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    return save_model(tmp_path_factory.mktemp("model"))
