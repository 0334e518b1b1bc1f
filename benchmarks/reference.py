"""The reference Fashion-MNIST models that the search benchmarks start from (ResNet-20 unless a benchmark
asks for another committed checkpoint): the trained model, its own data splits (the validation images it
was not trained on) and its search space."""

from __future__ import annotations

from torch import nn

from autoprune.data import Splits, load_dataset
from autoprune.models.checkpoints import load_checkpoint, reference_checkpoint
from autoprune.search_spaces import SearchSpace


def reference_setup(max_ratio: float = 0.8, checkpoint: str | None = None,
                    model_name: str = "resnet20") -> tuple[nn.Module, Splits, SearchSpace]:
    """``max_ratio``: the most of any group a policy may prune (AMC's 0.8 unless a benchmark asks);
    ``checkpoint``: another Fashion-MNIST checkpoint to start from instead of ``model_name``'s committed one."""
    model, meta = load_checkpoint(checkpoint or reference_checkpoint(model_name, "fashion_mnist"))
    splits = load_dataset("fashion_mnist", val_size=meta["val_size"], seed=meta["split_seed"])
    return model, splits, SearchSpace.from_model(model, splits.example_inputs(), bounds=(0.0, max_ratio))
