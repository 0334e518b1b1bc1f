"""The DDPG agent's own update: the leaner ``train`` must be SB3's TD3 update for DDPG, same maths."""

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.logger import configure

from autoprune.search.ddpg import _AMCDDPG, EpisodeRewardBuffer


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
