import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import autoprune  # noqa: F401  (registers autoprune/Prune-v0)
from autoprune.budget import Budget, InfeasibleBudgetError, min_ratio, spread_ratio, uniform_policy
from autoprune.costs import count_costs
from autoprune.envs import BUDGET_AWARE_FEATURES, OBSERVATION_FEATURES, PruneEnv
from autoprune.evaluation import Evaluator
from autoprune.models.zoo import create_model
from autoprune.search_spaces import Policy, SearchSpace
from tests.conftest import random_data, random_episodes


def _evaluator(name, flops, reward=None, n=16):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, image_size=28).eval()
    data = random_data(n)
    space = SearchSpace.from_model(model, data.tensors[0][:1])
    return Evaluator(model, space, train_data=data, val_data=data, budget=Budget(flops=flops), val_size=n,
                     bn_batches=1, batch_size=n, path="exact", reward=reward)


@pytest.fixture(scope="module")
def resnet_env():
    return PruneEnv(_evaluator("resnet20", 0.5))


def test_gymnasium_check_env(resnet_env):
    from gymnasium.utils.env_checker import check_env

    check_env(resnet_env, skip_render_check=True)


def test_sb3_check_env(resnet_env):
    from stable_baselines3.common.env_checker import check_env

    with pytest.warns(UserWarning, match="symmetric"):  # SB3 only prefers [-1, 1]
        check_env(resnet_env, warn=True)


def test_registered_and_made_by_id():
    env = gym.make("autoprune/Prune-v0", evaluator=_evaluator("cnn1d", 0.5))
    obs, info = env.reset(seed=0)
    assert obs.shape == (len(OBSERVATION_FEATURES),) and info["group"] == "features.0"


def test_one_step_per_group_and_reward_only_at_the_end(resnet_env):
    obs, _ = resnet_env.reset(seed=1)
    rewards, done, steps = [], False, 0
    while not done:
        obs, r, done, truncated, info = resnet_env.step(np.array([0.3], dtype=np.float32))
        assert resnet_env.observation_space.contains(obs) and not truncated
        rewards.append(r)
        steps += 1
    assert steps == len(resnet_env.space) and all(r == 0 for r in rewards[:-1])
    result = info["result"]
    assert rewards[-1] == result.reward == result.accuracy and result.feasible


def test_reset_is_deterministic(resnet_env):
    a, _ = resnet_env.reset(seed=3)
    resnet_env.step(np.array([0.9], dtype=np.float32))
    b, _ = resnet_env.reset(seed=3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16", "mobilenetv2"])
@pytest.mark.parametrize("flops", [0.5, 0.25])
@pytest.mark.parametrize("budget_aware", [False, pytest.param(True, marks=pytest.mark.slow)])  # make test-all
def test_random_episodes_always_end_within_budget(name, flops, budget_aware):
    env = PruneEnv(_evaluator(name, flops, n=4), budget_aware=budget_aware)
    pruner = env.evaluator.pruner
    x = torch.randn(1, 1, 28, 28)
    for episode, result in enumerate(random_episodes(env, 12)):
        assert result.feasible and result.flops_ratio <= flops
        if episode < 2:  # and the physically pruned, counted model agrees
            assert count_costs(pruner.prune(result.policy), x).macs <= flops * env.space.dense_costs.macs


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_budget_aware_random_episodes_end_within_budget(name):
    env = PruneEnv(_evaluator(name, 0.25, n=4), budget_aware=True)
    assert all(r.feasible and r.flops_ratio <= 0.25 for r in random_episodes(env, 12))


def test_budget_aware_midpoint_actions_are_the_uniform_policy_and_spend_the_budget():
    env = PruneEnv(_evaluator("resnet20", 0.3), budget_aware=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(BUDGET_AWARE_FEATURES),) and env.observation_space.contains(obs)
    uniform = uniform_policy(env.space, env.budget)
    while not env.policy_complete:  # whole channels: a group may land one channel (1/16) off the shared ratio
        info = env.decide(np.array([0.5], dtype=np.float32))
        assert info["ratio"] == pytest.approx(uniform[info["group"]], abs=1 / 16)
    assert 0.28 <= env.space.costs(env.policy).macs / env.space.dense_costs.macs <= 0.3


def test_budget_aware_random_episodes_spread_the_deficit_where_amc_pins_the_last_group():
    """At a tight budget AMC's reading of uniform actions leaves the last group at its upper bound
    (0.8, 0.78 in whole channels) in nearly every episode; the budget-aware reading spreads the deficit."""
    last_ratio = {}
    for budget_aware in (False, True):
        env = PruneEnv(_evaluator("resnet20", 0.2, n=4), budget_aware=budget_aware)
        rng, ratios = np.random.default_rng(0), []
        for _ in range(20):
            env.reset()
            while not env.policy_complete:
                env.decide(rng.random(1).astype(np.float32))
            ratios.append(env.policy[env.space.names[-1]])
        last_ratio[budget_aware] = float(np.mean(ratios))
    assert last_ratio[False] >= 0.75 > last_ratio[True] + 0.05, last_ratio


def test_spread_ratio_is_the_uniform_ratio_first_and_the_wall_last():
    env = PruneEnv(_evaluator("resnet20", 0.4))
    space, budget = env.space, env.budget
    assert spread_ratio(space, budget, {}, 0) == pytest.approx(uniform_policy(space, budget)[space.names[0]], abs=1e-4)
    decided = {g.name: 0.6 for g in space.groups[:-1]}
    last = len(space.groups) - 1
    wall = min_ratio(space, budget, decided, last)
    assert spread_ratio(space, budget, decided, last) == pytest.approx(wall, abs=1e-4)


def test_infeasible_budget_raises_at_construction():
    with pytest.raises(InfeasibleBudgetError, match="infeasible"):
        PruneEnv(_evaluator("resnet20", 0.02))


def test_custom_reward_from_module_function_string(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(textwrap.dedent("""
        def half_params(result, baseline):
            return 42.0 + result.params_ratio
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = PruneEnv(_evaluator("cnn1d", 0.5, reward="user_rewards:half_params"))
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert reward == pytest.approx(42.0 + info["result"].params_ratio)


@pytest.mark.parametrize("reward", [lambda r, b: float("nan"), lambda r, b: [][1]])
def test_raising_or_nan_reward_is_a_failed_evaluation_and_the_episode_ends(reward):
    env = PruneEnv(_evaluator("cnn1d", 0.5, reward=reward), failed_reward=-1.0)
    env.reset(seed=0)
    done = False
    while not done:
        _, r, done, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert r == -1.0 and info["result"].failed
    env.reset(seed=1)  # and the environment goes on


class _SlowWhenHalfPruned:
    """A latency "table" that is not monotone: the first group pruned part-way (not to its upper bound)
    makes the model slower than dense, as a noisy measured table can."""

    def __init__(self, space):
        self.units = space.cost_model.units.astype(float)
        self.first_high = space.keep_units(Policy({g.name: g.high for g in space.groups}))[0]

    def predict(self, space, keep):
        slow = self.first_high < keep[0] < self.units[0]
        return float(np.sum(keep / self.units)) + (100.0 if slow else 0.0)


def test_actions_above_the_wall_that_a_non_monotone_latency_makes_unreachable_fall_back_to_it():
    ev = _evaluator("resnet20", 0.9)
    ev.space.attach_latency(_SlowWhenHalfPruned(ev.space))
    ev.budget = Budget(latency=0.9)
    env = PruneEnv(ev)
    env.reset(seed=0)
    info = env.decide(np.array([0.5]))  # the first group half-pruned: slow, whatever the later groups do
    assert info["ratio"] == info["wall"] == 0.0
    for _ in range(len(ev.space.groups) - 1):
        env.decide(np.array([0.5]))
    assert ev.budget.holds(ev.space.costs(env.policy), ev.space.dense_costs)
