"""DDPG as in AMC (He et al. 2018), on stable-baselines3, and a budget-aware variant (the default).

The agent walks the coupled groups in forward order (:class:`~autoprune.envs.PruneEnv`, whose
action wall keeps every episode within budget) and is rewarded once, at the end. AMC's recipe,
every value an option:

* actor and critic 300-300, Adam with lr 1e-4 (actor) and 1e-3 (critic), tau 0.01, batch 64,
  discount 1, a replay buffer of 100 episodes;
* ``warmup`` episodes of uniform random actions, then a truncated normal around the actor's action
  with sigma 0.5 decaying by 0.95 per episode;
* the episode's final reward copied to every transition of the episode, and a moving average of
  sampled rewards (alpha 0.5) subtracted as a baseline when training.

``variant="amc"`` is that recipe, unchanged. On tight budgets it loses to random search: the
warm-up's uniform actions pin the last groups at their maximum, and the noise has all but vanished
within 100 agent episodes, after which the agent re-proposes a handful of policies. The default,
``variant="budget_aware"``, changes two things (each measured in ``benchmarks/results/ddpg.md``):
the environment reads actions relative to the evenly spread deficit and observes it
(:class:`~autoprune.envs.PruneEnv`'s ``budget_aware``), and the exploration sigma never falls below
``sigma_floor``.

One step = ``parallel_episodes`` episodes (default 1) collected with the current actor, exactly: one
``learn`` call per step, and since every episode has one step per group, ``train_freq`` of that many
steps is exactly one episode per env (SB3's ``StopTrainingOnMaxEpisodes`` would drop the rewarded
last transition, and SB3 allows episodic ``train_freq`` only with one env). The episodes run in
lockstep (:class:`LockstepPruneEnvs`) and their final policies are scored in one batch, on N Ray
workers when the evaluator is a :class:`~autoprune.parallel_evaluation.RayEvaluator`. The agent then trains
``groups`` gradient steps per episode collected, as AMC does after each episode.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from autoprune.envs import PruneEnv
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search.base import LedgerLike, Searcher
from autoprune.search_spaces import Policy

__all__ = ["DDPG_VARIANTS", "DDPGSearcher", "EpisodeRewardBuffer", "LockstepPruneEnvs"]

# name -> the options it sets (explicit options win)
DDPG_VARIANTS: dict[str, dict[str, Any]] = {
    "amc": {"budget_aware": False, "sigma_floor": 0.0},
    "budget_aware": {"budget_aware": True, "sigma_floor": 0.1},
}


class LockstepPruneEnvs(DummyVecEnv):
    """N :class:`PruneEnv` episodes stepped together; their N final policies are scored by one
    ``evaluate_many`` call (in parallel on Ray workers) instead of one after the other."""

    envs: list[PruneEnv]  # type: ignore[assignment]

    def __init__(self, envs: Sequence[PruneEnv], evaluate_many: Callable[[list[Policy]], list[Result]]) -> None:
        super().__init__([(lambda e=e: e) for e in envs])  # type: ignore[misc]
        self._evaluate_many = evaluate_many

    def step_wait(self) -> VecEnvStepReturn:
        infos = [env.decide(a) for env, a in zip(self.envs, self.actions, strict=True)]
        if not self.envs[0].policy_complete:  # all episodes have the same length: all or none are complete
            for i, env in enumerate(self.envs):
                self._save_obs(i, env.observation())
            return self._obs_from_buf(), np.zeros(self.num_envs, np.float32), np.zeros(self.num_envs, bool), infos
        results = self._evaluate_many([env.policy for env in self.envs])
        for i, (env, result) in enumerate(zip(self.envs, results, strict=True)):
            obs, self.buf_rews[i], _, _, info = env.conclude(result, infos[i])
            self.buf_infos[i] = {**info, "terminal_observation": obs, "TimeLimit.truncated": False}
            obs, self.reset_infos[i] = env.reset()
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.ones(self.num_envs, bool), list(self.buf_infos)


class EpisodeRewardBuffer(ReplayBuffer):
    """Holds the episodes' transitions until they end, then stores each episode's transitions, one
    episode after the other, with its final reward; subtracts a moving-average baseline from sampled
    rewards (AMC).

    It stores one transition per row whatever the number of envs (``n_envs`` is always 1 here), so
    its size counts transitions and the number of lockstep envs may change from step to step.
    """

    moving_alpha = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "n_envs": 1})
        self._pending: list[tuple[Any, ...]] = []
        self.moving_average: float | None = None

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,  # type: ignore[override]
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        self._pending.append((obs.copy(), next_obs.copy(), action.copy(), done.copy()))
        if not done.any():
            return
        if not done.all():
            raise RuntimeError("episodes must end together (lockstep envs)")
        final = np.asarray(reward, dtype=np.float32).copy()
        for env in range(len(done)):
            row = slice(env, env + 1)
            for o, n, a, d in self._pending:
                super().add(o[row], n[row], a[row], final[row], d[row], [{}])
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
    """SB3's DDPG with AMC's exploration (per episode) and separate actor / critic learning rates."""

    actor_lr = 1e-4
    critic_lr = 1e-3
    noise_rng: np.random.Generator
    sigmas: np.ndarray  # exploration sigma of each lockstep episode; NaN: a warm-up episode (uniform actions)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's TD3 update specialised to DDPG (one critic, no target-policy noise, no policy delay),
        with the same maths, and cheaper: an episode that re-proposes an evaluated policy costs its
        training and nothing else, so the update is most of a DDPG search's overhead. The actor's loss
        needs dQ/d(action), not the critic's weight gradients; one foreach lerp updates all targets."""
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        online: list[torch.Tensor] = [*self.critic.parameters(), *self.actor.parameters()]
        targets: list[torch.Tensor] = [*self.critic_target.parameters(), *self.actor_target.parameters()]
        for _ in range(gradient_steps):
            self._n_updates += 1
            batch = self.replay_buffer.sample(batch_size)  # type: ignore[union-attr]
            with torch.no_grad():
                next_actions = self.actor_target(batch.next_observations).clamp(-1, 1)
                next_q = self.critic_target.q1_forward(batch.next_observations, next_actions)
                target_q = batch.rewards + (1 - batch.dones) * self.gamma * next_q
            critic_loss = F.mse_loss(self.critic.q1_forward(batch.observations, batch.actions), target_q)
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            self.critic.requires_grad_(False)
            actor_loss = -self.critic.q1_forward(batch.observations, self.actor(batch.observations)).mean()
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            self.critic.requires_grad_(True)
            with torch.no_grad():
                torch._foreach_lerp_(targets, online, self.tau)  # Polyak: target += tau * (online - target)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _update_learning_rate(self, optimizers: Any) -> None:
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.actor_lr
        for group in self.critic.optimizer.param_groups:
            group["lr"] = self.critic_lr

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
        warm = np.isnan(self.sigmas)
        action = np.empty((n_envs, 1), dtype=np.float32)
        if warm.any():
            action[warm] = self.noise_rng.uniform(0.0, 1.0, size=(int(warm.sum()), 1))
        if not warm.all():
            mu, _ = self.predict(self._last_obs[~warm], deterministic=True)  # type: ignore[index]
            mu = np.clip(mu, 0.0, 1.0)
            s = np.maximum(self.sigmas[~warm, None], 1e-6)
            s32 = s.astype(mu.dtype)  # float32 bounds, float64 scale: the draws one-episode searches always made
            action[~warm] = truncnorm.rvs((0.0 - mu) / s32, (1.0 - mu) / s32, loc=mu, scale=s, size=mu.shape,
                                          random_state=self.noise_rng)
        return action, self.policy.scale_action(action)

    def use_envs(self, envs: LockstepPruneEnvs) -> None:
        """Collect the next episodes on ``envs``, whatever their number (``set_env`` insists on the
        number the model was built with; the replay buffer here does not care)."""
        if envs is not self.env:
            self.env, self.n_envs, self._last_obs = envs, envs.num_envs, None  # type: ignore[assignment]


class DDPGSearcher(Searcher):
    """AMC's DDPG agent; one :meth:`step` runs ``parallel_episodes`` episodes with the current actor
    and scores their policies together (in parallel on Ray workers)."""

    name = "ddpg"

    def __init__(self, evaluator: PolicyEvaluator, *, seed: int = 0, ledger: LedgerLike = None, warmup: int = 100,
                 actor_lr: float = 1e-4, critic_lr: float = 1e-3, tau: float = 0.01, batch_size: int = 64,
                 discount: float = 1.0, buffer_episodes: int = 100, hidden: int = 300, sigma: float = 0.5,
                 sigma_decay: float = 0.95, failed_reward: float = 0.0, parallel_episodes: int = 1,
                 variant: str = "budget_aware", budget_aware: bool | None = None,
                 sigma_floor: float | None = None) -> None:
        super().__init__(evaluator, seed=seed, ledger=ledger)
        if parallel_episodes < 1:
            raise ValueError(f"parallel_episodes must be >= 1, got {parallel_episodes}")
        if variant not in DDPG_VARIANTS:
            raise ValueError(f"unknown DDPG variant {variant!r}; choose one of: {', '.join(DDPG_VARIANTS)}")
        preset = DDPG_VARIANTS[variant]
        self.variant = variant
        self.budget_aware = preset["budget_aware"] if budget_aware is None else budget_aware
        self.sigma_floor = preset["sigma_floor"] if sigma_floor is None else sigma_floor
        self.warmup, self.sigma0, self.sigma_decay = warmup, sigma, sigma_decay
        self.parallel_episodes, self.failed_reward = parallel_episodes, failed_reward
        self._envs: dict[int, LockstepPruneEnvs] = {}
        steps = len(self.space)
        outside = (np.random.get_state(), torch.get_rng_state())
        self.model = _AMCDDPG(
            "MlpPolicy", self._lockstep(parallel_episodes), learning_rate=actor_lr,
            buffer_size=buffer_episodes * steps, learning_starts=warmup * steps, batch_size=batch_size, tau=tau,
            gamma=discount, train_freq=(steps, "step"), gradient_steps=-1, replay_buffer_class=EpisodeRewardBuffer,
            policy_kwargs={"net_arch": {"pi": [hidden, hidden], "qf": [hidden, hidden]},
                           "optimizer_kwargs": {"fused": True}},  # one kernel per Adam step, not one per tensor
            seed=seed, verbose=0,
            device="cpu")
        # SB3 seeds and then draws from the *global* NumPy and torch generators (replay sampling,
        # target noise). This searcher keeps its own copies and swaps them in around its SB3 calls,
        # so two searchers never share a stream and the caller's global state is left alone.
        self._streams = (np.random.get_state(), torch.get_rng_state())
        np.random.set_state(outside[0])
        torch.set_rng_state(outside[1])
        self.episodes = 0
        self._last: list[Result] = []
        self._configure(actor_lr, critic_lr)

    def _lockstep(self, n: int) -> LockstepPruneEnvs:
        if n not in self._envs:
            envs = [PruneEnv(self.evaluator, failed_reward=self.failed_reward, budget_aware=self.budget_aware)
                    for _ in range(n)]
            self._envs[n] = LockstepPruneEnvs(envs, self._score_episodes)
        return self._envs[n]

    def _configure(self, actor_lr: float, critic_lr: float) -> None:
        self.model.actor_lr, self.model.critic_lr = actor_lr, critic_lr
        self.model.noise_rng = self.rng  # one generator for every random choice of the search

    def _sigma(self, episode: int) -> float:
        """AMC's schedule: NaN (uniform random actions) during warm-up, then sigma0 * decay^k, here
        never below ``sigma_floor``."""
        if episode < self.warmup:
            return math.nan
        return max(self.sigma_floor, self.sigma0 * self.sigma_decay ** (episode - self.warmup))

    def _score_episodes(self, policies: list[Policy]) -> list[Result]:
        # The env's action wall already made the policies feasible: no repair, just ledger + cache.
        self._last = self.evaluate_many(policies, repair=False)
        return self._last

    def _step(self, limit: int) -> list[Result]:
        n = min(self.parallel_episodes, limit)
        self.model.use_envs(self._lockstep(n))
        self.model.sigmas = np.array([self._sigma(self.episodes + i) for i in range(n)])
        self._last = []
        with self._own_streams():
            self.model.learn(total_timesteps=1, reset_num_timesteps=False, progress_bar=False)
        self.episodes += n
        return self._last

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
        self.model.save(model, exclude=["noise_rng", "sigmas"])
        self.model.save_replay_buffer(buffer)
        return {"variant": self.variant, "episodes": self.episodes,
                "model": base64.b64encode(model.getvalue()).decode(),
                "replay_buffer": base64.b64encode(buffer.getvalue()).decode(),
                "numpy_stream": self._streams[0], "torch_stream": self._streams[1].numpy().tolist(),
                "actor_lr": self.model.actor_lr, "critic_lr": self.model.critic_lr}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("variant", "amc")  # checkpoints from before the variants ran AMC's agent
        if saved != self.variant:
            raise ValueError(f"this search's checkpoint was written by the DDPG variant {saved!r}, not "
                             f"{self.variant!r} (the default since the budget-aware agent); continue it with "
                             f"search.options: {{variant: {saved}}}")
        self.episodes = state["episodes"]
        self.model = _AMCDDPG.load(io.BytesIO(base64.b64decode(state["model"])),
                                   env=self._lockstep(self.parallel_episodes), device="cpu")
        self.model.load_replay_buffer(io.BytesIO(base64.b64decode(state["replay_buffer"])))
        self._streams = (state["numpy_stream"], torch.tensor(state["torch_stream"], dtype=torch.uint8))
        self._configure(state["actor_lr"], state["critic_lr"])
