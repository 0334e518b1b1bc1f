"""Gymnasium environments; ``autoprune/Prune-v0`` is registered when ``autoprune`` is imported."""

from autoprune.envs.prune_env import BUDGET_AWARE_FEATURES, OBSERVATION_FEATURES, PruneEnv

__all__ = ["BUDGET_AWARE_FEATURES", "OBSERVATION_FEATURES", "PruneEnv"]
