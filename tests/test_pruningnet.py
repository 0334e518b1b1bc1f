"""MetaPruning's PruningNet: generated weights have the pruned shapes, start from the dense model, train,
and a killed training resumes from its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.groups import UnsupportedModelError
from autoprune.models.zoo import create_model
from autoprune.pruningnet import PruningNet, train_pruningnet
from autoprune.search_spaces import SearchSpace

from .conftest import random_data

ZOO_MODELS = ["resnet20", "vgg11", "mobilenetv2", "vit"]  # ResNet-56: ResNet-20 with more blocks


def _net(name: str, size: int = 16) -> tuple[torch.nn.Module, SearchSpace, PruningNet]:
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10, image_size=size).eval()
    space = SearchSpace.from_model(model, torch.randn(1, 1, size, size))
    return model, space, PruningNet(model, space, hidden=4)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_generated_networks_have_the_pruned_shapes_for_random_encodings(name):
    _, space, net = _net(name)
    rng = np.random.default_rng(0)
    x = torch.randn(2, 1, 16, 16)
    for _ in range(2):
        policy = space.sample(rng)
        generated = net.generate(policy)
        expected = space.shaped_copy(net.base, policy)  # the pruner's shapes for the same policy
        assert [p.shape for p in generated.parameters()] == [p.shape for p in expected.parameters()]
        with torch.no_grad():
            assert generated(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit"])
def test_at_initialisation_the_full_width_encoding_is_the_dense_model(name):
    model, space, net = _net(name)
    x = torch.randn(4, 1, 16, 16)
    full = {g.name: 0.0 for g in space.groups}
    with torch.no_grad():
        dense = model(x)
        assert torch.allclose(net.generate(full)(x), dense, atol=1e-5)
        net.base.eval()
        assert torch.allclose(net(x, net.plan(full)), dense, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit"])
def test_the_masked_training_forward_is_the_generated_pruned_network(name):
    _, space, net = _net(name)
    policy = space.sample(np.random.default_rng(1))
    x = torch.randn(4, 1, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x, net.plan(policy)), net.generate(policy)(x), atol=1e-4)


def test_a_model_with_group_norm_groups_is_refused_naming_the_layer():
    from autoprune.models.gallery import build

    model, x = build("groupnorm_cnn1d")
    space = SearchSpace.from_model(model.eval(), x)
    with pytest.raises(UnsupportedModelError, match="PruningNet cannot serve layer '"):
        PruningNet(model, space)


@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_a_training_stopped_after_a_checkpoint_resumes_identically(tmp_path, distill):
    data = random_data(64, (1, 16, 16), seed=1)
    _, _, straight = _net("resnet20")
    losses = train_pruningnet(straight, data, steps=6, batch_size=16, seed=0, distill=distill, show_progress=False)
    assert len(losses) == 6 and all(np.isfinite(losses))

    _, _, first = _net("resnet20")
    ckpt = tmp_path / "pruningnet.pt"
    train_pruningnet(first, data, steps=4, batch_size=16, seed=0, checkpoint=ckpt, checkpoint_every=2,
                     distill=distill, show_progress=False)  # as a run killed after step 4's checkpoint
    _, _, second = _net("resnet20")  # a new process: fresh weights, the checkpoint on disk
    rest = train_pruningnet(second, data, steps=6, batch_size=16, seed=0, checkpoint=ckpt, checkpoint_every=2,
                            distill=distill, show_progress=False)
    assert rest == pytest.approx(losses[4:], rel=1e-4)
    for a, b in zip(straight.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_pruningnet_training_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "resnet20", "train_epochs": 0.3},
                                      "data": {"name": "digits", "val_size": 200}, "budget": {"flops": 0.5}}))
    run_dir = tmp_path / "meta"
    command = [sys.executable, "-m", "autoprune.cli", "pruningnet", "train", str(config), "--epochs", "4",
               "--run-dir", str(run_dir), "--quiet"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "pruningnet.pt").exists():  # its first checkpoint (step 50 of about 80)
        assert child.poll() is None, child.stderr.read()[-1500:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    import re

    resumed = re.search(r"continuing PruningNet training from its checkpoint at step 50 of (\d+)",
                        (run_dir / "log.txt").read_text())
    assert resumed is not None
    assert torch.load(run_dir / "pruningnet.pt", weights_only=False)["step"] == int(resumed.group(1))
    assert "autoprune search" in done.stdout  # says how to search with it


@pytest.mark.parametrize("damage", ["truncated", "other model"])
def test_a_damaged_or_foreign_checkpoint_is_one_line_saying_to_delete_it(tmp_path, damage):
    from autoprune.pruningnet import save_pruningnet

    data = random_data(32, (1, 16, 16))
    ckpt = tmp_path / "pruningnet.pt"
    if damage == "truncated":
        _, _, net = _net("resnet20")
        save_pruningnet(net, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    else:
        _, _, other = _net("vgg11")
        save_pruningnet(other, ckpt)
    _, _, net = _net("resnet20")
    with pytest.raises(ValueError, match="delete it to train the PruningNet again") as e:
        train_pruningnet(net, data, steps=2, batch_size=8, checkpoint=ckpt, show_progress=False)
    assert "\n" not in str(e.value)
