from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: small, always available, real data."""
    from autoprune.data import load_dataset

    return load_dataset("digits", val_size=300, seed=0)


@pytest.fixture(scope="session")
def trained_resnet(digits):
    """A ResNet-20 trained for a few epochs on digits (a real, non-random network to prune)."""
    from autoprune.models.zoo import create_model
    from autoprune.training import TrainConfig, train

    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=10, image_size=8)
    train(model, digits.train, TrainConfig(epochs=3, batch_size=64, max_lr=0.05, hflip=False), show_progress=False)
    return model.eval()


def random_data(n: int = 64, shape=(1, 28, 28), classes: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))


def random_episodes(env, n: int, seed: int = 0):
    """Yield the final ``Result`` of ``n`` episodes of uniformly random actions."""
    rng = np.random.default_rng(seed)
    for episode in range(n):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, done, _, info = env.step(rng.random(1).astype(np.float32))
        yield info["result"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
