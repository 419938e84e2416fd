"""Without verl, importing the adapter says what to install."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.mark.skipif(importlib.util.find_spec("verl") is not None, reason="verl is installed")
def test_import_without_verl_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'gfpo-filters\[verl\]'"):
        import gfpo_filters.integrations.verl  # noqa: F401
