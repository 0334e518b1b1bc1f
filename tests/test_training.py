"""Training and fine-tuning of pruned models."""

import subprocess
import sys

import torch

from autoprune.models.zoo import create_model
from autoprune.training import onednn_safe

# A ResNet-20 pruned to channel counts that made oneDNN's convolution backward corrupt the heap on
# torch 2.13 when fed channels-last images (the process aborted); it runs in a child process so
# that a crash fails one test.
CRASHING_POLICY = """
import torch
from autoprune.models.zoo import create_model
from autoprune.pruning import Pruner
from autoprune.search_spaces import SearchSpace
from autoprune.training import TrainConfig, train
torch.manual_seed(0)
torch.set_num_threads(1)
model = create_model("resnet20", in_channels=1, num_classes=10, image_size=28)
x = torch.randn(1, 1, 28, 28)
space = SearchSpace.from_model(model, x, bounds=(0.0, 0.8))
ratios = [0.686, 0.027, 0.584, 0.141, 0.691, 0.433, 0.240, 0.338, 0.023, 0.099, 0.536, 0.518]
pruned = Pruner(model, space, example_inputs=x).prune(space.validate(dict(zip(space.names, ratios))))
images = torch.randn(256, 28, 28, 1).permute(0, 3, 1, 2)  # channels-last strides
data = torch.utils.data.TensorDataset(images, torch.randint(0, 10, (256,)))
train(pruned, data, TrainConfig(epochs=2, batch_size=32), show_progress=False)
print("trained")
"""


def test_fine_tuning_a_pruned_model_with_odd_channel_counts_does_not_crash():
    done = subprocess.run([sys.executable, "-c", CRASHING_POLICY], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout


def test_onednn_is_avoided_only_for_odd_channel_counts_on_channels_last_inputs():
    row_major, channels_last = torch.randn(2, 3, 8, 8), torch.randn(2, 8, 8, 3).permute(0, 3, 1, 2)
    dense = create_model("resnet20", in_channels=3, num_classes=10)
    odd = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3))
    assert onednn_safe(dense, channels_last) and onednn_safe(odd, row_major)
    assert not onednn_safe(odd, channels_last)


def test_loaded_images_are_row_major(digits):
    for split in (digits.train, digits.val, digits.test):
        assert split.tensors[0].stride() == (64, 64, 8, 1)
