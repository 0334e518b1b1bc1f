"""The reference model zoo and its trained checkpoints."""

from autoprune.models.checkpoints import REFERENCE_DIR, load_checkpoint, reference_checkpoint, save_checkpoint
from autoprune.models.zoo import MODEL_NAMES, create_model, default_ignored_layers

__all__ = ["MODEL_NAMES", "REFERENCE_DIR", "create_model", "default_ignored_layers", "load_checkpoint",
           "reference_checkpoint", "save_checkpoint"]
