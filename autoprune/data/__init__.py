"""Built-in datasets with train/val/test splits; the validation split is carved from TRAIN."""

from autoprune.data.datasets import DATASET_NAMES, DatasetMissingError, Splits, load_dataset

__all__ = ["DATASET_NAMES", "DatasetMissingError", "Splits", "load_dataset"]
