"""Gymnasium environments; ``autoprune/Prune-v0`` is registered when ``autoprune`` is imported."""

from autoprune.envs.prune_env import OBSERVATION_FEATURES, PruneEnv

__all__ = ["OBSERVATION_FEATURES", "PruneEnv"]
