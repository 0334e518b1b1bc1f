"""DDPG as in AMC (He et al. 2018), on stable-baselines3.

The agent walks the coupled groups in forward order (:class:`~autoprune.envs.PruneEnv`, whose
action wall keeps every episode within budget) and is rewarded once, at the end. AMC's recipe,
every value an option:

* actor and critic 300-300, Adam with lr 1e-4 (actor) and 1e-3 (critic), tau 0.01, batch 64,
  discount 1, a replay buffer of 100 episodes;
* ``warmup`` episodes of uniform random actions, then a truncated normal around the actor's action
  with sigma 0.5 decaying by 0.95 per episode;
* the episode's final reward copied to every transition of the episode, and a moving average of
  sampled rewards (alpha 0.5) subtracted as a baseline when training.

One step = one episode, collected exactly: ``train_freq=(1, "episode")`` and one ``learn`` call per
episode (SB3's ``StopTrainingOnMaxEpisodes`` would drop the rewarded last transition).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from autoprune.envs import PruneEnv
from autoprune.evaluation import Evaluator, Result
from autoprune.search.base import LedgerLike, Searcher
from autoprune.search_spaces import Policy

__all__ = ["DDPGSearcher", "EpisodeRewardBuffer"]


class EpisodeRewardBuffer(ReplayBuffer):
    """Holds an episode's transitions until it ends, then stores them all with its final reward;
    subtracts a moving-average baseline from sampled rewards (AMC)."""

    moving_alpha = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[tuple[Any, ...]] = []
        self.moving_average: float | None = None

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,  # type: ignore[override]
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        self._pending.append((obs.copy(), next_obs.copy(), action.copy(), done.copy()))
        if not bool(done[0]):
            return
        final = np.asarray(reward, dtype=np.float32).copy()
        for o, n, a, d in self._pending:
            super().add(o, n, a, final, d, [{}])
        self._pending = []

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        batch = super().sample(batch_size, env)
        mean = float(batch.rewards.mean())
        if self.moving_average is None:
            self.moving_average = mean
        else:
            self.moving_average += self.moving_alpha * (mean - self.moving_average)
        return batch._replace(rewards=batch.rewards - self.moving_average)


class _AMCDDPG(DDPG):
    """SB3's DDPG with AMC's exploration and separate actor / critic learning rates."""

    actor_lr = 1e-4
    critic_lr = 1e-3
    sigma = 0.5
    noise_rng: np.random.Generator

    def _update_learning_rate(self, optimizers: Any) -> None:
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.actor_lr
        for group in self.critic.optimizer.param_groups:
            group["lr"] = self.critic_lr

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts:
            action = self.noise_rng.uniform(0.0, 1.0, size=(n_envs, 1)).astype(np.float32)
        else:
            mu, _ = self.predict(self._last_obs, deterministic=True)  # type: ignore[arg-type]
            mu = np.clip(mu, 0.0, 1.0)
            s = max(self.sigma, 1e-6)
            action = np.asarray(truncnorm.rvs((0.0 - mu) / s, (1.0 - mu) / s, loc=mu, scale=s, size=mu.shape,
                                              random_state=self.noise_rng), dtype=np.float32)
        return action, self.policy.scale_action(action)


class DDPGSearcher(Searcher):
    """AMC's DDPG agent; one :meth:`step` runs one episode (one policy evaluation)."""

    name = "ddpg"

    def __init__(self, evaluator: Evaluator, *, seed: int = 0, ledger: LedgerLike = None, warmup: int = 100,
                 actor_lr: float = 1e-4, critic_lr: float = 1e-3, tau: float = 0.01, batch_size: int = 64,
                 discount: float = 1.0, buffer_episodes: int = 100, hidden: int = 300, sigma: float = 0.5,
                 sigma_decay: float = 0.95, failed_reward: float = 0.0) -> None:
        super().__init__(evaluator, seed=seed, ledger=ledger)
        self.warmup, self.sigma0, self.sigma_decay = warmup, sigma, sigma_decay
        self.env = PruneEnv(evaluator, failed_reward=failed_reward, evaluate=self._episode_end)
        steps = len(self.space)
        outside = (np.random.get_state(), torch.get_rng_state())
        self.model = _AMCDDPG(
            "MlpPolicy", self.env, learning_rate=actor_lr, buffer_size=buffer_episodes * steps,
            learning_starts=warmup * steps, batch_size=batch_size, tau=tau, gamma=discount,
            train_freq=(1, "episode"), gradient_steps=-1, replay_buffer_class=EpisodeRewardBuffer,
            policy_kwargs={"net_arch": {"pi": [hidden, hidden], "qf": [hidden, hidden]}}, seed=seed, verbose=0,
            device="cpu")
        # SB3 seeds and then draws from the *global* NumPy and torch generators (replay sampling,
        # target noise). This searcher keeps its own copies and swaps them in around its SB3 calls,
        # so two searchers never share a stream and the caller's global state is left alone.
        self._streams = (np.random.get_state(), torch.get_rng_state())
        np.random.set_state(outside[0])
        torch.set_rng_state(outside[1])
        self.episodes = 0
        self._last: Result | None = None
        self._configure(actor_lr, critic_lr)

    def _configure(self, actor_lr: float, critic_lr: float) -> None:
        self.model.actor_lr, self.model.critic_lr = actor_lr, critic_lr
        self.model.noise_rng = self.rng  # one generator for every random choice of the search
        self.model.sigma = self._sigma()

    def _sigma(self) -> float:
        return self.sigma0 * self.sigma_decay ** max(0, self.episodes - self.warmup)

    def _episode_end(self, policy: Policy) -> Result:
        # The env's action wall already made the policy feasible: no repair, just ledger + cache.
        self._last = self.evaluate(policy, repair=False)
        return self._last

    def _step(self, limit: int) -> list[Result]:
        self.model.sigma = self._sigma()
        self._last = None
        with self._own_streams():
            self.model.learn(total_timesteps=1, reset_num_timesteps=False, progress_bar=False)
        self.episodes += 1
        return [self._last] if self._last is not None else []

    @contextmanager
    def _own_streams(self) -> Iterator[None]:
        outside = (np.random.get_state(), torch.get_rng_state())
        np.random.set_state(self._streams[0])
        torch.set_rng_state(self._streams[1])
        try:
            yield
        finally:
            self._streams = (np.random.get_state(), torch.get_rng_state())
            np.random.set_state(outside[0])
            torch.set_rng_state(outside[1])

    # ----------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        model, buffer = io.BytesIO(), io.BytesIO()
        self.model.save(model, exclude=["noise_rng"])
        self.model.save_replay_buffer(buffer)
        return {"episodes": self.episodes, "model": base64.b64encode(model.getvalue()).decode(),
                "replay_buffer": base64.b64encode(buffer.getvalue()).decode(),
                "numpy_stream": self._streams[0], "torch_stream": self._streams[1].numpy().tolist(),
                "actor_lr": self.model.actor_lr, "critic_lr": self.model.critic_lr}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.episodes = state["episodes"]
        self.model = _AMCDDPG.load(io.BytesIO(base64.b64decode(state["model"])), env=self.env, device="cpu")
        self.model.load_replay_buffer(io.BytesIO(base64.b64decode(state["replay_buffer"])))
        self._streams = (state["numpy_stream"], torch.tensor(state["torch_stream"], dtype=torch.uint8))
        self._configure(state["actor_lr"], state["critic_lr"])
