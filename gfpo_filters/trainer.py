"""The documented short path to the TRL adapter: ``from gfpo_filters.trainer import GFPOConfig, GFPOTrainer``.

The adapter lives in :mod:`gfpo_filters.integrations.trl`.
"""

from gfpo_filters.integrations.trl import GFPOConfig, GFPOTrainer, resolve_filter

__all__ = ["GFPOConfig", "GFPOTrainer", "resolve_filter"]
