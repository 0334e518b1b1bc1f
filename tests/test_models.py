import pytest
import torch

from autoprune.models import MODEL_NAMES
from autoprune.models.zoo import create_model, default_ignored_layers


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_runs_on_both_input_shapes(name, shape):
    model = create_model(name, in_channels=shape[0], num_classes=7, image_size=shape[-1]).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_every_listed_name_has_a_factory_and_no_factory_is_unlisted():
    from autoprune.models import zoo

    assert tuple(zoo._FACTORIES) == MODEL_NAMES


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: resnet20"):
        create_model("resnet18")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_layer_is_ignored_by_default(name):
    model = create_model(name, in_channels=1, image_size=28)
    ignored = default_ignored_layers(model)
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))][-1]
    assert any(m is last for m in ignored)
