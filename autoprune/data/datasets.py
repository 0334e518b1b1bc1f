"""Dataset loading: Fashion-MNIST from its IDX files and scikit-learn's 8x8 digits.

Nothing is downloaded at run time. Fashion-MNIST is read from the ``root`` argument when one is given
(and only there: a named folder without the files is an error, not a silent fallback), else from
``$AUTOPRUNE_FASHION_MNIST``, then the Debian package's directory. Splits are tensors held in
memory (Fashion-MNIST is 188 MB as float32), which keeps evaluation loops free of loader overhead.

The validation split is carved from TRAIN with a seeded permutation: a search ranks policies on
it, and the TEST split is only for reporting, never touched during a search.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from autoprune.forward import Inputs, clone, dataset, examples, take

__all__ = ["DATASET_NAMES", "DatasetMissingError", "Splits", "load_dataset"]

DATASET_NAMES = ("fashion_mnist", "digits")
FASHION_MNIST_ENV = "AUTOPRUNE_FASHION_MNIST"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Per-channel statistics of the TRAIN split, so inputs are roughly zero-mean, unit-variance.
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says how to get them."""


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one dataset plus its shape facts."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 28, 28)`` (of the first input tensor for token inputs)."""
        return tuple(self.train.tensors[0].shape[1:])

    def example_inputs(self, batch: int = 1) -> Inputs:
        """The first ``batch`` training inputs: a tensor, or a dict of named tensors for token inputs."""
        return clone(take(examples(self.train)[0], slice(0, batch)))

    def tensor_inputs(self, batch: int = 1) -> torch.Tensor:
        """The first ``batch`` training inputs as one tensor, for latency timing and export.

        Raises:
            ValueError: the inputs are named tensors (token ids and masks), which those do not take yet.
        """
        x = self.example_inputs(batch)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"latency timing and export take one input tensor; this data passes {sorted(x)} by name "
                             "(search and fine-tune with the Python API, and export the model yourself)")
        return x

    @classmethod
    def from_loaders(cls, train: Iterable[Any], val: Iterable[Any], test: Iterable[Any] | None = None, *,
                     num_classes: int | None = None, max_train: int | None = 10_000,
                     name: str = "custom") -> Splits:
        """Splits from a user's DataLoaders (or any iterables of ``(inputs, labels)`` batches).

        The batches are gathered into memory once: a search forwards the same few thousand
        images for every policy, and tensors in memory keep that loop free of loader overhead.
        ``inputs`` may be a dict of tensors passed to the model by name (a tokenizer's ``input_ids`` and
        ``attention_mask``, padded to one length); a batch may also be a dict holding ``labels`` (the
        Hugging Face convention).

        Args:
            train: training batches; adaptive BN and fine-tuning draw from them.
            val: validation batches the search ranks policies on (hold them out of training).
            test: batches for the final report only; defaults to ``val``.
            num_classes: defaults to the largest label + 1.
            max_train: gather at most this many training examples (``None``: all of them).
        """
        def gather(loader: Iterable[Any], limit: int | None, which: str) -> TensorDataset:
            xs: list[Any] = []
            ys, n = [], 0
            for batch in loader:
                if isinstance(batch, Mapping) and "labels" in batch:
                    batch = ({k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError(f"{which} loader must yield (inputs, labels) batches, got {type(batch).__name__}")
                if isinstance(batch[0], Mapping):  # token ids and masks: kept as integers, by name
                    xs.append({k: torch.as_tensor(v) for k, v in batch[0].items()})
                else:
                    xs.append(torch.as_tensor(batch[0]).float())
                y = torch.as_tensor(batch[1])
                ys.append(y.long())
                n += len(y)
                if limit is not None and n >= limit:
                    break
            if not xs:
                raise ValueError(f"{which} loader yielded no batches")
            labels = torch.cat(ys)[:limit]
            if isinstance(xs[0], Mapping):
                try:
                    named = {k: torch.cat([x[k] for x in xs])[:limit].clone() for k in xs[0]}
                except RuntimeError as e:
                    raise ValueError(f"{which} loader's token batches differ in length ({e}); pad every batch to "
                                     "one length (tokenizer(..., padding='max_length', max_length=N))") from None
                return dataset(named, labels)
            # a fresh row-major copy: loaders may hand out channels-last or strided views
            return TensorDataset(torch.cat(xs)[:limit].clone(memory_format=torch.contiguous_format), labels)

        tr, va = gather(train, max_train, "train"), gather(val, None, "val")
        te = gather(test, None, "test") if test is not None else va
        classes = num_classes or int(max(int(d.tensors[-1].max()) for d in (tr, va, te))) + 1
        return cls(name=name, train=tr, val=va, test=te, num_classes=classes)


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic, dims, then raw uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_fashion_dir(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        candidates = [Path(root)]
    else:
        candidates = [Path(os.environ[FASHION_MNIST_ENV])] if os.environ.get(FASHION_MNIST_ENV) else []
        candidates.append(FASHION_MNIST_DEBIAN_DIR)
    for d in candidates:
        if all((d / f).exists() or (d / (f + ".gz")).exists() for f in _FASHION_FILES.values()):
            return d
    looked = ", ".join(str(d) for d in candidates)
    if root is not None:
        raise DatasetMissingError(f"Fashion-MNIST IDX files not found in data.root {root}; point it at a folder "
                                  f"holding {_FASHION_FILES['train_images']}[.gz] and the three other IDX files, or "
                                  "leave it unset to use $AUTOPRUNE_FASHION_MNIST or the Debian package")
    raise DatasetMissingError(
        f"Fashion-MNIST IDX files not found (looked in {looked}); install them with "
        f"'apt-get install -y dataset-fashion-mnist' or set ${FASHION_MNIST_ENV} to a folder holding "
        f"{_FASHION_FILES['train_images']}[.gz] and the three other IDX files"
    )


def _idx_file(d: Path, stem: str) -> Path:
    plain = d / stem
    return plain if plain.exists() else d / (stem + ".gz")


def _fashion_mnist(root: str | os.PathLike[str] | None) -> tuple[np.ndarray, ...]:
    d = _find_fashion_dir(root)
    arrays = {k: _read_idx(_idx_file(d, v)) for k, v in _FASHION_FILES.items()}
    def to_x(a: np.ndarray) -> np.ndarray:
        return ((a.astype(np.float32) / 255.0 - _FASHION_MEAN) / _FASHION_STD)[:, None]
    return (to_x(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
            to_x(arrays["test_images"]), arrays["test_labels"].astype(np.int64))


def _digits(seed: int) -> tuple[np.ndarray, ...]:
    """scikit-learn's 1,797 8x8 digits, split 80/20 into train/test with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0 - 0.5)[:, None] / 0.5
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def load_dataset(name: str, *, root: str | os.PathLike[str] | None = None, val_size: int | float = 5000,
                 seed: int = 0) -> Splits:
    """Load a built-in dataset as in-memory train / val / test splits.

    Args:
        name: ``"fashion_mnist"`` or ``"digits"``.
        root: folder with the dataset's files (Fashion-MNIST only); see the module docstring.
        val_size: images carved from TRAIN for validation, as a count or a fraction of TRAIN.
        seed: seeds the carve-out, so the same seed always gives the same validation images.

    Raises:
        DatasetMissingError: the files are missing; the message says how to install them.
        ValueError: unknown name or a validation size that leaves no training data.
    """
    if name == "fashion_mnist":
        x_tr, y_tr, x_te, y_te = _fashion_mnist(root)
    elif name == "digits":
        x_tr, y_tr, x_te, y_te = _digits(seed=1234)  # the test split must not move with the search seed
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    n_val = int(round(val_size * len(y_tr))) if isinstance(val_size, float) else int(val_size)
    if not 0 <= n_val < len(y_tr):
        raise ValueError(f"val_size={val_size} must leave training data: {name} has {len(y_tr)} train images")
    perm = np.random.default_rng(seed).permutation(len(y_tr))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    def ds(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        # numpy gives the size-1 channel axis a stride of 1, which makes (N, 1, H, W) images look
        # channels-last to oneDNN; an explicit row-major copy keeps them in the standard layout.
        return TensorDataset(torch.from_numpy(x).clone(memory_format=torch.contiguous_format),
                             torch.from_numpy(np.ascontiguousarray(y)))

    return Splits(name=name, train=ds(x_tr[train_idx], y_tr[train_idx]), val=ds(x_tr[val_idx], y_tr[val_idx]),
                  test=ds(x_te, y_te), num_classes=int(y_tr.max()) + 1)
