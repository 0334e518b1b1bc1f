import numpy as np
import pytest
import torch

from autoprune.budget import Budget, uniform_policy
from autoprune.costs import count_costs
from autoprune.evaluation import Evaluator, recalibrate_batchnorm
from autoprune.search_spaces import PolicyError, SearchSpace
from autoprune.training import accuracy


@pytest.fixture(scope="module")
def setup(trained_resnet, digits):
    space = SearchSpace.from_model(trained_resnet, digits.example_inputs())
    return trained_resnet, space, digits


def _evaluator(setup, **kw):
    model, space, data = setup
    kw.setdefault("val_size", 300)
    kw.setdefault("bn_batches", 4)
    return Evaluator(model, space, train_data=data.train, val_data=data.val, budget=Budget(flops=0.5), **kw)


def test_result_has_costs_accuracy_timings_and_budget_flag(setup):
    ev = _evaluator(setup, path="exact")
    model, space, _ = setup
    policy = uniform_policy(space, Budget(flops=0.5))
    r = ev(policy)
    assert r.failed is None and r.feasible and 0.0 <= r.accuracy <= 1.0
    assert r.flops == count_costs(ev.pruner.prune(policy), setup[2].example_inputs()).macs
    assert r.flops_ratio <= 0.5
    assert {"costs", "prune", "recalibrate", "validate", "total"} <= set(r.seconds)
    assert not ev(space.uniform(0.0)).feasible


def test_evaluation_is_deterministic(setup):
    policy = setup[1].sample(np.random.default_rng(0))
    a, b = _evaluator(setup, path="exact")(policy), _evaluator(setup, path="exact")(policy)
    assert a.accuracy == b.accuracy and a.flops == b.flops


def test_exact_and_mask_paths_agree_and_leave_the_model_intact(setup):
    model = setup[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = setup[1].sample(np.random.default_rng(1))
    exact = _evaluator(setup, path="exact")(policy)
    mask = _evaluator(setup, path="mask")(policy)
    assert abs(exact.accuracy - mask.accuracy) < 1e-9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auto_path_measures_both(setup):
    ev = _evaluator(setup, path="auto")
    r = ev(setup[1].uniform(0.3))
    assert r.path in ("exact", "mask") and set(ev.path_timing) == {"exact_estimated_s", "mask_estimated_s"}


def test_adaptive_bn_recovers_accuracy(setup):
    policy = setup[1].uniform(0.5)
    with_bn = _evaluator(setup, path="exact", bn_batches=8)(policy).accuracy
    without = _evaluator(setup, path="exact", bn_batches=0)(policy).accuracy
    assert with_bn >= without


def test_finetune_steps_run_on_a_copy(setup):
    model = setup[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = _evaluator(setup, path="mask", finetune_steps=5)(setup[1].uniform(0.5))
    assert r.path == "exact" and r.seconds["finetune"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_release_recalibrates_batchnorm_on_more_images_than_the_search(setup):
    ev = _evaluator(setup, path="exact", bn_batches=2)
    policy = setup[1].uniform(0.5)
    searched = ev.pruner.prune(policy)
    recalibrate_batchnorm(searched, ev.bn_inputs, ev.batch_size)

    def bn_means(model):
        return [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # the search's images are the first of the release's: with as many, the same statistics
    same = ev.release(policy, bn_images=len(ev.bn_inputs), reconstruct=False)
    assert all(torch.allclose(a, b) for a, b in zip(bn_means(same), bn_means(searched), strict=True))
    released = ev.release(policy)
    assert count_costs(released, setup[2].example_inputs()).macs == ev(policy).flops
    assert not all(torch.allclose(a, b) for a, b in zip(bn_means(released), bn_means(searched), strict=True))
    ev.train_data = None  # what a Ray worker's copy holds
    with pytest.raises(RuntimeError, match="driver"):
        ev.release(policy)


def test_bad_policy_raises_and_bad_options_are_rejected(setup):
    with pytest.raises(PolicyError):
        _evaluator(setup, path="exact")({"conv1": 0.99})
    with pytest.raises(ValueError, match="path must be"):
        _evaluator(setup, path="fast")


@pytest.mark.parametrize("reward, message", [
    (lambda r, b: 1 / 0, "ZeroDivisionError"),
    (lambda r, b: float("nan"), "reward returned nan"),
    (lambda r, b: float("inf"), "reward returned inf"),
])
def test_a_failing_reward_is_recorded_not_raised(setup, reward, message):
    r = _evaluator(setup, path="exact", reward=reward)(setup[1].uniform(0.2))
    assert r.failed and message in r.failed and r.reward is None and r.accuracy is None


def test_a_custom_reward_is_used(setup):
    r = _evaluator(setup, path="exact", reward=lambda res, base: res.accuracy - res.flops_ratio)(setup[1].uniform(0.2))
    assert r.reward == pytest.approx(r.accuracy - r.flops_ratio)


def test_dense_accuracy_matches_plain_accuracy(setup):
    model, _, data = setup
    assert _evaluator(setup).dense_accuracy() == accuracy(model, torch.utils.data.TensorDataset(
        data.val.tensors[0][:300], data.val.tensors[1][:300]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_scoring_on_a_gpu_matches_the_cpu(setup):
    policy = setup[1].sample(np.random.default_rng(1))
    on_gpu = _evaluator(setup, device="cuda", finetune_steps=5)
    a, b = on_gpu(policy), _evaluator(setup, path="exact", finetune_steps=5)(policy)
    assert on_gpu.path == "exact" and next(setup[0].parameters()).device.type == "cpu"
    assert a.failed is None and abs(a.accuracy - b.accuracy) <= 0.02
