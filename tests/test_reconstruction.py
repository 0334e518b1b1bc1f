import copy

import pytest
import torch
from torch import nn

from autoprune.pruning import Pruner
from autoprune.reconstruction import reconstruct, reconstruct_in_one_pass
from autoprune.search_spaces import SearchSpace
from autoprune.surgery import apply_plan


def _duplicate_unit(layer: nn.Module, copy_of: int, into: int) -> None:
    with torch.no_grad():
        layer.weight[into] = layer.weight[copy_of]
        if layer.bias is not None:
            layer.bias[into] = layer.bias[copy_of]


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("kind", ["conv2d", "conv1d", "linear", "tokens"])
def test_a_pruned_duplicate_channel_is_recovered_exactly(kind, one_pass):
    """Unit 3 of the first layer copies unit 0: pruning it loses nothing the next layer cannot get
    back (its weights on unit 0 absorb those on unit 3), and least squares must find that."""
    torch.manual_seed(0)
    first, second, x = {
        "conv2d": (nn.Conv2d(2, 5, 3, padding=1), nn.Conv2d(5, 3, 3, padding=1, bias=False), torch.randn(64, 2, 6, 6)),
        "conv1d": (nn.Conv1d(2, 5, 3, padding=1), nn.Conv1d(5, 3, 3, stride=2), torch.randn(64, 2, 12)),
        "linear": (nn.Linear(4, 5), nn.Linear(5, 3), torch.randn(256, 4)),
        "tokens": (nn.Linear(4, 5), nn.Linear(5, 3), torch.randn(64, 7, 4)),  # features last, as in a ViT
    }[kind]
    _duplicate_unit(first, copy_of=0, into=3)
    dense = nn.Sequential(first, nn.ReLU(), second).eval()
    plan = {("0", True): [3], ("2", False): [3]}
    pruned = apply_plan(copy.deepcopy(dense), plan)
    assert not torch.allclose(pruned(x), dense(x), atol=1e-3)  # pruning alone loses unit 3's contribution
    refit = reconstruct_in_one_pass(dense, pruned, plan, x, ridge=1e-10) if one_pass else \
        reconstruct(dense, pruned, plan, x, batch_size=32, ridge=1e-10)
    assert refit == ["2"]
    torch.testing.assert_close(pruned(x), dense(x), atol=1e-4, rtol=1e-4)


def test_reconstruction_brings_a_pruned_resnet_closer_to_the_dense_one(trained_resnet, digits):
    space = SearchSpace.from_model(trained_resnet, digits.example_inputs())
    pruner = Pruner(trained_resnet, space, example_inputs=digits.example_inputs())
    policy = space.uniform(0.5)
    x_train, x_val = digits.train.tensors[0][:256], digits.val.tensors[0]
    with torch.no_grad():
        target = trained_resnet(x_val)
        before = nn.functional.mse_loss(pruner.prune(policy)(x_val), target)
        refitted_model = pruner.prune(policy)
        refitted = reconstruct(trained_resnet, refitted_model, pruner.plan(policy), x_train)
        after = nn.functional.mse_loss(refitted_model(x_val), target)
    assert "fc" in refitted and len(refitted) > 10  # every block's convs and the classifier
    assert after < 0.5 * before
    in_one_pass = pruner.prune(policy)  # the same layers, each fed by the ones refitted before it
    assert reconstruct_in_one_pass(trained_resnet, in_one_pass, pruner.plan(policy), x_train) == refitted
    with torch.no_grad():
        assert nn.functional.mse_loss(in_one_pass(x_val), target) < 1.2 * after


def test_nothing_pruned_nothing_refitted(trained_resnet, digits):
    pruned = copy.deepcopy(trained_resnet)
    assert reconstruct(trained_resnet, pruned, {}, digits.train.tensors[0][:32]) == []
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(),
                                                  trained_resnet.state_dict().values(), strict=True))
