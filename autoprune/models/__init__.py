"""The reference model zoo (:mod:`autoprune.models.zoo`) and its trained checkpoints
(:mod:`autoprune.models.checkpoints`). The package itself imports nothing heavy: configs check model
names against :data:`MODEL_NAMES` without loading torch."""

from autoprune.models.names import MODEL_NAMES

__all__ = ["MODEL_NAMES"]
