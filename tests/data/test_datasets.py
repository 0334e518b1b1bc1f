import gzip
import os

import numpy as np
import pytest

from autoprune.data import DatasetMissingError, load_dataset
from autoprune.data import datasets as ds


def test_digits_splits_are_disjoint_and_seeded():
    a = load_dataset("digits", val_size=200, seed=0)
    b = load_dataset("digits", val_size=200, seed=1)
    assert len(a.val.tensors[0]) == 200 and a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train.tensors[0]) + 200 == len(b.train.tensors[0]) + 200
    assert not (a.val.tensors[0][:50] == b.val.tensors[0][:50]).all()  # the seed moves validation
    assert (a.test.tensors[0] == b.test.tensors[0]).all()  # ...but never the test split


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_from_a_user_folder(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(50) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    splits = load_dataset("fashion_mnist", root=tmp_path, val_size=10)
    assert splits.input_shape == (1, 28, 28)
    assert [len(s.tensors[0]) for s in (splits.train, splits.val, splits.test)] == [40, 10, 20]


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.delenv(ds.FASHION_MNIST_ENV, raising=False)
    with pytest.raises(DatasetMissingError, match="apt-get install -y dataset-fashion-mnist") as e:
        load_dataset("fashion_mnist")
    assert "\n" not in str(e.value)


def test_a_named_root_without_the_files_is_an_error_not_a_silent_fallback(tmp_path):
    # even where the Debian package is installed: the user asked for this folder
    with pytest.raises(DatasetMissingError, match=f"not found in data.root {tmp_path}") as e:
        load_dataset("fashion_mnist", root=tmp_path)
    assert "\n" not in str(e.value)


def test_env_variable_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path / "env-dir"))
    with pytest.raises(DatasetMissingError, match="env-dir"):
        load_dataset("fashion_mnist")


@pytest.mark.skipif(not ds.FASHION_MNIST_DEBIAN_DIR.exists() and not os.environ.get(ds.FASHION_MNIST_ENV),
                    reason="Fashion-MNIST not installed (make test installs it)")
def test_real_fashion_mnist_has_the_published_sizes():
    splits = load_dataset("fashion_mnist", val_size=5000, seed=0)
    assert [len(s.tensors[0]) for s in (splits.train, splits.val, splits.test)] == [55000, 5000, 10000]


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match="choose one of"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="must leave training data"):
        load_dataset("digits", val_size=100000)
