"""Engine adapters: each applies the engine-neutral GFPO step (:mod:`gfpo_filters.step`) where an
RL engine trains, and only translates that engine's batches in and out.

* :mod:`gfpo_filters.integrations.trl`: ``GFPOConfig`` and ``GFPOTrainer`` over TRL's GRPOTrainer.
* :mod:`gfpo_filters.integrations.verl`: ``GFPOReplayBuffer`` for verl's v1 trainer (the ``verl`` extra).
"""
