import numpy as np
import pytest
import torch

from autoprune.models.zoo import create_model
from autoprune.search_spaces import Policy, PolicyError, SearchSpace


@pytest.fixture(scope="module")
def resnet_space():
    model = create_model("resnet20", in_channels=1, image_size=28).eval()
    return model, SearchSpace.from_model(model, torch.randn(1, 1, 28, 28))


def _execution_order(model, x):
    order = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: order.append(n) and None)
             for n, m in model.named_modules() if not list(m.children())]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16", "vit"])
def test_groups_are_in_forward_order(name):
    model = create_model(name, in_channels=1, image_size=28).eval()
    x = torch.randn(1, 1, 28, 28)
    space = SearchSpace.from_model(model, x)
    order = _execution_order(model, x)
    positions = [order.index(g.name) for g in space.groups]
    assert positions == sorted(positions)
    assert len(set(space.names)) == len(space.names)


def test_residual_stage_is_one_group(resnet_space):
    _, space = resnet_space
    stage1 = space.group("conv1")  # stem + every block output of stage 1 share channels
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2", "layer2.0.conv1"} <= set(stage1.layers)
    assert len(space) == 12  # 9 block-internal groups + 3 stage groups


def test_vit_heads_are_units():
    model = create_model("vit", in_channels=1, image_size=28)
    space = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28))
    heads = [g for g in space.groups if g.kind == "heads"]
    assert len(heads) == 4 and all(g.units == 4 and g.unit_size == 24 for g in heads)


def test_depthwise_chain_is_one_group():
    model = create_model("mobilenetv2", in_channels=1, image_size=28)
    space = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28))
    g = space.group("features.4.conv.0")
    assert {"features.4.conv.0", "features.4.conv.3", "features.4.conv.6"} <= set(g.layers)


def test_policy_round_trips_through_json(resnet_space, rng):
    _, space = resnet_space
    policy = space.sample(rng)
    again = Policy.from_json(policy.to_json())
    assert again == policy and hash(again) == hash(policy)
    assert list(again) == space.names


def test_bad_policies_are_clear_errors(resnet_space):
    _, space = resnet_space
    with pytest.raises(PolicyError, match="unknown group.*'nope'"):
        space.validate({"nope": 0.1})
    with pytest.raises(PolicyError, match="outside its bounds"):
        space.validate({"conv1": 0.95})
    with pytest.raises(PolicyError, match="must be a number"):
        Policy({"conv1": "half"})
    with pytest.raises(PolicyError, match="must be finite"):
        Policy({"conv1": float("nan")})
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.from_json("{")


def test_missing_groups_take_their_lower_bound(resnet_space):
    _, space = resnet_space
    full = space.validate({"conv1": 0.5})
    assert full["conv1"] == 0.5 and all(full[n] == 0.0 for n in space.names[1:])


def test_at_least_one_unit_is_kept():
    model = create_model("resnet20", in_channels=1, image_size=28)
    space = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28), bounds=(0.0, 0.999))
    assert (space.keep_units(space.uniform(0.999)) >= 1).all()


def test_round_to_keeps_multiples(resnet_space):
    model, _ = resnet_space
    space = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28), round_to=8)
    keep = space.keep_units(space.sample(np.random.default_rng(1)))
    assert all(k % 8 == 0 and k >= 8 for k in keep)


def test_ignored_and_unprunable_layers_are_listed(resnet_space):
    _, space = resnet_space
    assert space.ignored == ("fc",)
    assert space.unprunable == {}


def test_bad_bounds_and_unknown_ignored_layer_raise():
    model = create_model("resnet20", in_channels=1, image_size=28)
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match="0 <= low <= high < 1"):
        SearchSpace.from_model(model, x, bounds=(0.5, 1.0))
    with pytest.raises(ValueError, match="not a module"):
        SearchSpace.from_model(model, x, ignored_layers=["layer9"])
    with pytest.raises(ValueError, match="unknown groups"):
        SearchSpace.from_model(model, x, group_bounds={"zzz": (0.0, 0.5)})


def test_flops_shares_are_fractions(resnet_space):
    _, space = resnet_space
    shares = [g.flops_share for g in space.groups]
    assert all(0 < s < 1 for s in shares)
