import pytest
import torch

from autoprune.budget import Budget, InfeasibleBudgetError, uniform_policy
from autoprune.costs import Costs
from autoprune.models.zoo import create_model
from autoprune.search_spaces import Policy, SearchSpace


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_model(create_model("resnet56", in_channels=1, image_size=28), torch.randn(1, 1, 28, 28))


def test_budget_check_is_exact_at_the_boundary():
    dense = Costs(macs=1000, params=100)
    assert Budget(flops=500).holds(Costs(500, 100), dense)
    assert not Budget(flops=500).holds(Costs(501, 100), dense)
    assert Budget(flops=0.5).holds(Costs(500, 100), dense)
    assert not Budget(flops=0.5, params=0.5).holds(Costs(500, 51), dense)


@pytest.mark.parametrize("flops", [0.5, 0.25])
def test_uniform_policy_just_meets_the_budget(space, flops):
    budget = Budget(flops=flops)
    policy = uniform_policy(space, budget)
    assert budget.holds(space.costs(policy), space.dense_costs)
    ratio = next(iter(policy.values()))
    # a visibly smaller ratio would break the budget: the bisection found the boundary
    assert not budget.holds(space.costs(space.uniform(ratio - 0.02)), space.dense_costs)


def test_infeasible_budget_raises_with_what_is_reachable(space):
    with pytest.raises(InfeasibleBudgetError, match="infeasible.*leaves"):
        uniform_policy(space, Budget(flops=0.01))


def test_bad_budget_values():
    with pytest.raises(ValueError, match="must be positive"):
        Budget(flops=0)
    with pytest.raises(ValueError, match="unknown budget key"):
        Budget.from_mapping({"latency_us": 3})


def test_a_latency_margin_lowers_only_the_latency_limit():
    assert Budget(flops=0.5, latency=0.8).with_latency_margin(0.5) == Budget(flops=0.5, latency=0.4)
    assert Budget(latency_ms=2.0).with_latency_margin(0.25) == Budget(latency_ms=1.5)
    assert Budget(params=0.5).with_latency_margin(0.3) == Budget(params=0.5)
    with pytest.raises(ValueError, match="margin"):
        Budget(latency=0.8).with_latency_margin(1.0)


def test_projection_makes_policies_feasible_and_keeps_feasible_ones(space):
    import numpy as np

    from autoprune.budget import project

    budget = Budget(flops=0.4)
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(30):
        policy = space.sample(rng)
        projected = project(space, budget, policy)
        assert budget.holds(space.costs(projected), space.dense_costs)
        if budget.holds(space.costs(policy), space.dense_costs):
            assert projected == policy
        else:
            moved += 1
            # only moved toward the upper bounds, never below the proposal
            assert all(projected[k] >= policy[k] - 1e-12 for k in policy)
    assert moved > 0


def test_action_wall_is_tight(space):
    from autoprune.budget import min_ratio

    budget = Budget(flops=0.3)
    decided = {g.name: 0.0 for g in space.groups[:5]}
    wall = min_ratio(space, budget, decided, 5)
    rest = {g.name: g.high for g in space.groups[6:]}
    name = space.groups[5].name
    assert budget.holds(space.costs({**decided, name: wall, **rest}), space.dense_costs)
    if wall > 0.01:
        assert not budget.holds(space.costs({**decided, name: wall - 0.01, **rest}), space.dense_costs)


def test_filling_spends_the_budget_a_policy_leaves_unused(space):
    import numpy as np

    from autoprune.budget import project

    budget = Budget(flops=0.5)
    limit = 0.5 * space.dense_costs.macs
    rng = np.random.default_rng(0)
    filled_any = 0
    for _ in range(30):
        policy = space.sample(rng)
        filled = project(space, budget, policy, fill=True)
        assert budget.holds(space.costs(filled), space.dense_costs)
        if budget.holds(space.costs(policy), space.dense_costs):
            filled_any += 1
            # only moved toward the lower bounds, and the bigger model it makes is on the budget's edge
            assert all(filled[k] <= policy[k] + 1e-12 for k in policy)
            assert space.costs(filled).macs >= space.costs(policy).macs
            assert space.costs(filled).macs > 0.97 * limit
        else:
            assert filled == project(space, budget, policy)  # over budget: the plain repair, already on the edge
    assert filled_any > 0
    everything = {g.name: 0.0 for g in space.groups}  # a budget the dense model meets keeps every channel
    assert project(space, Budget(flops=1.0), space.sample(rng), fill=True) == Policy(everything)
