"""The evaluator contract: every implementation of ``PolicyEvaluator`` behaves as a search expects."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoprune.budget import Budget
from autoprune.costs import count_costs
from autoprune.evaluation import Evaluator
from autoprune.models.zoo import create_model
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search_spaces import PolicyError, SearchSpace
from autoprune.surgery import apply_plan

from .conftest import random_data


def _adaptive_bn():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, image_size=8).eval()
    data = random_data(96, (1, 8, 8))
    space = SearchSpace.from_model(model, data.tensors[0][:1])
    return Evaluator(model, space, train_data=data, val_data=data, budget=Budget(flops=0.6), val_size=48,
                     bn_batches=1, batch_size=16), lambda: None


def _on_ray():
    pytest.importorskip("ray")
    from autoprune.parallel_evaluation import RayEvaluator

    local, _ = _adaptive_bn()
    ray_ev = RayEvaluator(local, workers=2)
    return ray_ev, ray_ev.shutdown


def _pruningnet():
    from autoprune.pruningnet import PruningNet, train_pruningnet
    from autoprune.pruningnet_evaluator import PruningNetEvaluator

    local, _ = _adaptive_bn()
    net = PruningNet(local.model, local.space, hidden=4)
    train_pruningnet(net, local.train_data, steps=3, batch_size=16, show_progress=False)
    return PruningNetEvaluator(net, local.model, local.space, train_data=local.train_data, val_data=local.val,
                               budget=local.budget, val_size=48, bn_batches=1, batch_size=16), lambda: None


def _refit():
    from autoprune.refit_evaluator import RefitEvaluator

    local, _ = _adaptive_bn()
    return RefitEvaluator(local.model, local.space, train_data=local.train_data, val_data=local.val,
                          budget=local.budget, val_size=48, bn_batches=1, batch_size=16, refit_images=32), lambda: None


IMPLEMENTATIONS = {"adaptive_bn": _adaptive_bn, "ray_workers": _on_ray, "pruningnet": _pruningnet, "refit": _refit}


@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.ray) if name == "ray_workers" else name
                                        for name in IMPLEMENTATIONS])
def evaluator(request):
    ev, close = IMPLEMENTATIONS[request.param]()
    yield ev
    close()


def test_is_a_policy_evaluator(evaluator):
    assert isinstance(evaluator, PolicyEvaluator)
    assert isinstance(evaluator.space, SearchSpace) and isinstance(evaluator.budget, Budget)


def test_scores_a_policy_into_a_result_with_exact_costs(evaluator):
    policy = evaluator.space.sample(np.random.default_rng(0))
    result = evaluator(policy)
    assert isinstance(result, Result) and result.failed is None
    assert result.policy == evaluator.space.validate(policy)
    costs = evaluator.space.costs(policy)
    assert (result.flops, result.params) == (costs.macs, costs.params)
    assert result.feasible == evaluator.budget.holds(costs, evaluator.space.dense_costs)
    assert 0.0 <= result.accuracy <= 1.0 and result.reward is not None


def test_a_batch_keeps_its_order_and_matches_single_scores(evaluator):
    policies = [evaluator.space.sample(np.random.default_rng(i)) for i in range(4)]
    batch = evaluator.map(policies)
    assert [r.policy for r in batch] == [evaluator.space.validate(p) for p in policies]
    assert [r.accuracy for r in batch] == [evaluator(p).accuracy for p in policies]  # deterministic


def test_an_invalid_policy_raises_a_policy_error(evaluator):
    with pytest.raises(PolicyError):
        evaluator({"no_such_group": 0.5})


def test_baseline_is_the_dense_model(evaluator):
    base = evaluator.baseline
    assert base.accuracy == evaluator.dense_accuracy()
    assert (base.flops, base.params) == (evaluator.space.dense_costs.macs, evaluator.space.dense_costs.params)


def test_release_ships_a_pruned_model_its_plan_rebuilds(evaluator):
    policy = evaluator.space.uniform(0.4)
    shipped = evaluator.release(policy, reconstruct=False)
    x = torch.randn(2, 1, 8, 8)
    costs = evaluator.space.costs(policy)
    assert count_costs(shipped, x) == costs
    rebuilt = apply_plan(copy.deepcopy(evaluator.model), evaluator.plan(policy))
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in shipped.parameters()]
    choice = evaluator.release_choice(policy)  # empty, or the candidates' scores and the best one shipped
    assert choice == {} or choice[choice["shipped"]] == max(v for k, v in choice.items() if k != "shipped")
