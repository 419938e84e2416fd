"""Shared test fixtures.

Real rollout data is read from ``../shared/data`` beside the checkout (or ``$GFPO_FILTERS_DATA``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gfpo_filters.registry import reset_registry

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GFPO_FILTERS_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real rollout data not found at {DATA_DIR} (set GFPO_FILTERS_DATA)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def fresh_registry():
    """Every test starts and ends with an unloaded registry, so monkeypatched plugins never leak."""
    reset_registry()
    yield
    reset_registry()
