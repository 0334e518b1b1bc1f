import numpy as np
import pytest
import torch
from torch import nn

from autoprune.costs import count_costs
from autoprune.groups import UnsupportedModelError
from autoprune.importance import IMPORTANCE_NAMES
from autoprune.model_io import export_onnx, load_pruned, save_pruned
from autoprune.models import MODEL_NAMES
from autoprune.models.zoo import create_model
from autoprune.pruning import Pruner
from autoprune.search_spaces import SearchSpace

# ResNet-56 is ResNet-20 with three times the blocks per stage: the same groups and couplings, three times
# the test time (the environment and budget tests still build it)
ARCHITECTURES = [name for name in MODEL_NAMES if name != "resnet56"]


def _setup(name, shape=(1, 28, 28)):
    torch.manual_seed(0)
    model = create_model(name, in_channels=shape[0], image_size=shape[-1]).eval()
    x = torch.randn(4, *shape)
    space = SearchSpace.from_model(model, x[:1])
    return model, x, space


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_analytic_costs_equal_counted_costs_after_physical_pruning(name):
    model, x, space = _setup(name)
    pruner = Pruner(model, space, example_inputs=x[:1])
    rng = np.random.default_rng(0)
    for _ in range(20):
        policy = space.sample(rng)
        assert count_costs(pruner.prune(policy), x) == space.costs(policy)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit"])
def test_costs_also_exact_on_3x32x32(name):
    model, x, space = _setup(name, (3, 32, 32))
    pruner = Pruner(model, space, example_inputs=x[:1])
    policy = space.sample(np.random.default_rng(3))
    assert count_costs(pruner.prune(policy), x) == space.costs(policy)
    assert count_costs(model, x) == space.dense_costs


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_masked_outputs_equal_physically_pruned_outputs(name):
    model, x, space = _setup(name)
    model.train(False)
    pruner = Pruner(model, space, example_inputs=x[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in range(3):
        policy = space.sample(np.random.default_rng(seed))
        with torch.no_grad():
            physical = pruner.prune(policy)(x)
            with pruner.masked(policy) as masked_model:
                masked = masked_model(x)
        torch.testing.assert_close(masked, physical, atol=1e-5, rtol=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "masks must be undone"


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit", "mlp"])
def test_replayed_plan_equals_torch_pruning_on_a_retraced_graph(name):
    model, x, space = _setup(name)
    pruner = Pruner(model, space, example_inputs=x[:1])
    policy = space.sample(np.random.default_rng(7))
    replayed, retraced = pruner.prune(policy), pruner.prune_retraced(policy)
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (replayed, retraced)]
    assert shapes[0] == shapes[1]
    with torch.no_grad():
        torch.testing.assert_close(replayed(x), retraced(x))


@pytest.mark.parametrize("importance", IMPORTANCE_NAMES)
def test_every_importance_gives_matching_paths(importance):
    model, x, space = _setup("resnet20")
    calibration = (x, torch.tensor([0, 1, 2, 3]))
    pruner = Pruner(model, space, importance=importance, example_inputs=x[:1], calibration=calibration)
    policy = space.uniform(0.5)
    with torch.no_grad():
        physical = pruner.prune(policy)(x)
        with pruner.masked(policy) as m:
            torch.testing.assert_close(m(x), physical, atol=1e-5, rtol=0)


def test_l1_prunes_the_smallest_channels():
    model, x, space = _setup("vgg11")
    with torch.no_grad():
        model.features[0].weight[5].mul_(1e-3)  # make channel 5 of the first conv clearly the weakest
    pruner = Pruner(model, space, importance="l1", example_inputs=x[:1])
    plan = pruner.plan({"features.0": 1 / 64})
    assert plan[("features.0", True)] == [5]


def test_energy_prunes_a_heavy_channel_that_is_never_active():
    model, x, space = _setup("vgg11")
    with torch.no_grad():
        model.features[1].bias[5] = -1e3  # channel 5 is negative before its ReLU on every input: always 0 after
        model.features[0].weight[5].mul_(10)  # ... yet it has the largest weights on both sides
        model.features[4].weight[:, 5].mul_(10)
    calibration = (torch.randn(256, 1, 28, 28), torch.zeros(256, dtype=torch.long))
    policy = {"features.0": 1 / 64}
    assert Pruner(model, space, importance="l2", example_inputs=x[:1]).plan(policy)[("features.0", True)] != [5]
    energy = Pruner(model, space, importance="energy", example_inputs=x[:1], calibration=calibration)
    assert energy.plan(policy)[("features.0", True)] == [5]


def test_a_torch_pruning_importance_object_is_a_criterion():
    import torch_pruning as tp

    class Strongest(tp.importance.Importance):  # a criterion of one's own: remove the LARGEST channels first
        def __call__(self, group):
            return -tp.importance.MagnitudeImportance(p=2)(group)

    model, x, space = _setup("vgg11")
    by_name = Pruner(model, space, importance="l2", example_inputs=x[:1]).plan(space.uniform(0.25))
    same = Pruner(model, space, importance=tp.importance.MagnitudeImportance(p=2), example_inputs=x[:1])
    assert same.plan(space.uniform(0.25)) == by_name
    with torch.no_grad():
        model.features[0].weight[5].mul_(1e3)  # channel 5 of the first conv clearly the strongest
    strongest = Pruner(model, space, importance=Strongest(), example_inputs=x[:1])
    assert strongest.plan({"features.0": 1 / 64})[("features.0", True)] == [5]


def test_a_criterion_object_gets_gradients_and_its_failure_names_the_group():
    import torch_pruning as tp

    model, x, space = _setup("resnet20")
    calibration = (x, torch.tensor([0, 1, 2, 3]))
    by_name = Pruner(model, space, importance="taylor", example_inputs=x[:1], calibration=calibration)
    by_object = Pruner(model, space, importance=tp.importance.TaylorImportance(), example_inputs=x[:1],
                       calibration=calibration)
    assert by_object.plan(space.uniform(0.5)) == by_name.plan(space.uniform(0.5))
    with pytest.raises(ValueError, match="failed on group 'conv1'"):  # no calibration batch: no gradients
        Pruner(model, space, importance=tp.importance.TaylorImportance(), example_inputs=x[:1])


def test_masks_are_restored_when_the_block_raises():
    model, x, space = _setup("resnet20")
    pruner = Pruner(model, space, example_inputs=x[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        with pruner.masked(space.uniform(0.5)):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_save_and_load_portable_pruned_model(tmp_path):
    model, x, space = _setup("mobilenetv2")
    pruner = Pruner(model, space, example_inputs=x[:1])
    policy = space.sample(np.random.default_rng(0))
    pruned = pruner.prune(policy)
    spec = {"model": "mobilenetv2", "in_channels": 1, "num_classes": 10, "image_size": 28}
    save_pruned(tmp_path / "m.pt", pruned, pruner.plan(policy), spec)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)  # nothing pickled but tensors and plain data
    assert blob["format"] == "autoprune.pruned/1"
    loaded, loaded_spec = load_pruned(tmp_path / "m.pt")
    assert loaded_spec == spec
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned.eval()(x))


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_onnx_export_matches_torch(tmp_path, name):
    model, x, space = _setup(name)
    pruned = Pruner(model, space, example_inputs=x[:1]).prune(space.uniform(0.5))
    assert export_onnx(pruned, x, tmp_path / "m.onnx") <= 1e-4


class _OnlyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x)


class _FunctionalOnPrunedChannels(nn.Module):
    """Uses conv1's channels through a raw parameter the cost model cannot see."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.scale = nn.Parameter(torch.ones(8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = self.conv1(x).mean((2, 3))
        return self.fc(h @ self.scale)


def test_model_without_prunable_groups_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="no prunable channel group"):
        SearchSpace.from_model(_OnlyClassifier(), torch.randn(1, 8))


def test_cost_model_mismatch_is_caught():
    with pytest.raises(UnsupportedModelError):
        SearchSpace.from_model(_FunctionalOnPrunedChannels(), torch.randn(1, 1, 8, 8))


def test_untraceable_inputs_are_a_clear_error():
    model = create_model("resnet20", in_channels=1, image_size=28)
    with pytest.raises(UnsupportedModelError, match="example_inputs"):
        SearchSpace.from_model(model, torch.randn(1, 3, 28, 28))


def test_config_offers_every_built_in_criterion():  # config.py keeps its own list so as not to import torch
    import typing

    from autoprune.config import PrunerConfig

    assert typing.get_args(PrunerConfig.model_fields["importance"].annotation) == IMPORTANCE_NAMES


def test_unknown_importance_lists_choices():
    model, x, space = _setup("cnn1d")
    with pytest.raises(ValueError, match="choose one of: l1"):
        Pruner(model, space, importance="l3", example_inputs=x[:1])
