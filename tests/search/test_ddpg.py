"""The DDPG agent: its leaner ``train`` must be SB3's TD3 update for DDPG, same maths; its variants."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.logger import configure

from autoprune.budget import Budget
from autoprune.envs import BUDGET_AWARE_FEATURES, OBSERVATION_FEATURES
from autoprune.evaluation import Evaluator
from autoprune.models.zoo import create_model
from autoprune.search import create_searcher
from autoprune.search.ddpg import _AMCDDPG, EpisodeRewardBuffer
from autoprune.search_spaces import SearchSpace


class _Constant(gym.Env):
    observation_space = gym.spaces.Box(0, 1, (5,), np.float32)
    action_space = gym.spaces.Box(0, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        return np.zeros(5, np.float32), {}

    def step(self, action):
        return np.zeros(5, np.float32), 0.0, True, False, {}


def _agent_with_full_buffer() -> _AMCDDPG:
    agent = _AMCDDPG("MlpPolicy", _Constant(), buffer_size=240, batch_size=32, tau=0.01, gamma=1.0,
                     replay_buffer_class=EpisodeRewardBuffer, seed=0, device="cpu",
                     policy_kwargs={"net_arch": {"pi": [16, 16], "qf": [16, 16]}})
    rng = np.random.default_rng(0)
    for _ in range(240):
        obs = rng.random((1, 5), dtype=np.float32)
        agent.replay_buffer.add(obs, rng.random((1, 5), dtype=np.float32), rng.random((1, 1), dtype=np.float32),
                                rng.random(1).astype(np.float32), np.array([True]), [{}])
    agent.set_logger(configure(None, [""]))
    return agent


def _weights(agent: _AMCDDPG) -> torch.Tensor:
    nets = (agent.actor, agent.critic, agent.actor_target, agent.critic_target)
    return torch.cat([p.detach().flatten() for net in nets for p in net.parameters()])


def test_the_lean_update_is_sb3s_ddpg_update():
    trained = []
    for update in (DDPG.train, _AMCDDPG.train):
        agent = _agent_with_full_buffer()
        before = _weights(agent)
        np.random.seed(0)  # SB3 samples the replay buffer from the global generator
        for _ in range(5):
            update(agent, 12, 32)
        trained.append(_weights(agent))
    assert not torch.allclose(trained[0], before)
    torch.testing.assert_close(trained[1], trained[0], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def evaluator(digits):
    torch.manual_seed(0)
    model = create_model("cnn1d", in_channels=1, num_classes=10, image_size=8).eval()
    space = SearchSpace.from_model(model, digits.example_inputs())
    return Evaluator(model, space, train_data=digits.train, val_data=digits.val, budget=Budget(flops=0.3),
                     val_size=32, bn_batches=1, batch_size=32, path="exact")


def test_the_default_agent_is_budget_aware_with_a_sigma_floor_and_amc_is_kept_unchanged(evaluator):
    default = create_searcher("ddpg", evaluator=evaluator, warmup=2)
    amc = create_searcher("ddpg", evaluator=evaluator, warmup=2, variant="amc")
    assert default.model.observation_space.shape == (len(BUDGET_AWARE_FEATURES),)
    assert amc.model.observation_space.shape == (len(OBSERVATION_FEATURES),)
    late = 2 + 200  # 200 agent episodes after the warm-up: AMC's 0.5 * 0.95^200 is about 2e-5
    assert np.isnan(default._sigma(0)) and default._sigma(late) == 0.1
    assert amc._sigma(late) == pytest.approx(0.5 * 0.95**200)
    assert create_searcher("ddpg", evaluator=evaluator, variant="amc", sigma_floor=0.2)._sigma(late) == 0.2


def test_an_unknown_variant_is_refused_with_the_choices(evaluator):
    with pytest.raises(ValueError, match="unknown DDPG variant 'amcc'.*amc, budget_aware"):
        create_searcher("ddpg", evaluator=evaluator, variant="amcc")


def test_a_checkpoint_of_the_other_variant_is_refused_with_the_option_that_continues_it(evaluator):
    amc = create_searcher("ddpg", evaluator=evaluator, warmup=2, variant="amc")
    amc.run(3, show_progress=False)
    with pytest.raises(ValueError, match="variant 'amc', not 'budget_aware'.*search.options: {variant: amc}"):
        create_searcher("ddpg", evaluator=evaluator, warmup=2).load_state_dict(amc.state_dict())
