"""The README's "your own model" example: a user's nn.Module, DataLoaders and reward, end to end."""

from torch import nn
from torch.utils.data import DataLoader

from autoprune.budget import Budget
from autoprune.data import Splits
from autoprune.evaluation import Evaluator
from autoprune.search import create_searcher
from autoprune.search_spaces import SearchSpace


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_own_model_loaders_and_reward(digits, tmp_path):
    train_loader = DataLoader(digits.train, batch_size=64, shuffle=True)
    val_loader = DataLoader(digits.val, batch_size=256)
    splits = Splits.from_loaders(train_loader, val_loader, max_train=512)
    assert len(splits.train) == 512 and splits.num_classes == 10 and splits.input_shape == (1, 8, 8)

    calls = []

    def reward(result, baseline):  # accuracy, minus a little for every remaining parameter
        calls.append(result.policy)
        return result.accuracy - 0.1 * result.params / baseline.params

    model = small_cnn().eval()
    space = SearchSpace.from_model(model, splits.example_inputs(), bounds=(0.0, 0.9))
    evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val,
                          budget=Budget(flops=0.4), reward=reward, val_size=200, bn_batches=2)
    searcher = create_searcher("random", evaluator=evaluator, seed=0, ledger=tmp_path / "run")
    best = searcher.run(6, show_progress=False)
    assert best is not None and best.flops_ratio <= 0.4 and len(calls) == 6
    assert best.reward == max(r.reward for r in searcher.ledger.results if r.ok)
    assert (tmp_path / "run" / "ledger.db").exists()
    assert [g.name for g in space.groups] == ["0", "3"]
