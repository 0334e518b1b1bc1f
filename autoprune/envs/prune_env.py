"""PruneEnv: AMC's layer-by-layer pruning environment over coupled channel groups.

One episode walks the search space's groups in forward order; each step sets one group's prune
ratio. The action ``a`` in [0, 1] maps to ``low + a * (high - low)`` and is then raised to AMC's
*action wall* (:func:`autoprune.budget.min_ratio`) so that the budget stays reachable whatever the
later steps do: the final policy always meets the budget under the exact cost model. The last step
evaluates the whole policy and returns its reward; every other step returns 0.

With ``budget_aware`` (the default DDPG's environment), the action is read relative to the deficit
spread evenly (:func:`autoprune.budget.spread_ratio`): 0.5 is the ratio that, taken by this group
and every later one, meets the budget exactly; 0 and 1 are the group's bounds. AMC's mapping reads the
action over the bounds alone, so random actions prune the first groups at the middle of their
range whatever the budget, and the last groups absorb the whole deficit, pinned at their maximum
(tight budgets) or left with budget unused (loose ones). The spread ratio is also observed, so the
agent sees how much the rest must still absorb.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from torch import nn

from autoprune.budget import Budget, check_feasible, min_ratio, reachable, spread_ratio
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search_spaces import Policy

__all__ = ["BUDGET_AWARE_FEATURES", "OBSERVATION_FEATURES", "PruneEnv"]

OBSERVATION_FEATURES = ("index", "kind", "in_channels", "out_channels", "stride", "kernel", "params",
                        "flops", "flops_reduced", "flops_rest", "previous_action")
BUDGET_AWARE_FEATURES = (*OBSERVATION_FEATURES, "spread_ratio")
_KIND = {nn.Conv1d: 0.0, nn.Conv2d: 0.0, nn.Linear: 0.5}


class PruneEnv(gym.Env[np.ndarray, np.ndarray]):
    """AMC-style environment (He et al. 2018) over one evaluator.

    Args:
        evaluator: scores the final policy of each episode.
        budget: hard limits; defaults to the evaluator's budget. Checked at construction.
        failed_reward: reward of an episode whose evaluation failed (the error is in ``info``).
        budget_aware: read actions relative to the evenly spread deficit and observe it (see above);
            False is AMC's environment.

    Observation (all in [0, 1], static features divided by the model's own maximum):
    ``OBSERVATION_FEATURES`` — the group's index, kind (conv 0, linear 0.5, attention heads 1),
    input / output channels, stride, kernel size, parameter and FLOPs share, FLOPs already removed
    by earlier steps, FLOPs share of the groups still to come, and the previous action; with
    ``budget_aware``, ``BUDGET_AWARE_FEATURES``: also the spread ratio.
    """

    metadata = {"render_modes": []}

    def __init__(self, evaluator: PolicyEvaluator, budget: Budget | None = None, *, failed_reward: float = 0.0,
                 budget_aware: bool = False) -> None:
        self.evaluator = evaluator
        self.space = evaluator.space
        self.budget = budget if budget is not None else evaluator.budget
        check_feasible(self.space, self.budget)
        self.failed_reward, self.budget_aware = failed_reward, budget_aware
        features = BUDGET_AWARE_FEATURES if budget_aware else OBSERVATION_FEATURES
        self.action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(features),), dtype=np.float32)
        modules = dict(evaluator.model.named_modules())
        groups = self.space.groups
        n = len(groups)
        static = np.array([[i / max(1, n - 1),
                            1.0 if g.kind == "heads" else _KIND.get(type(modules[g.name]), 0.0),
                            g.in_channels, g.channels, g.stride, g.kernel, g.params_share, g.flops_share]
                           for i, g in enumerate(groups)], dtype=np.float64)
        top = static.max(axis=0)
        static[:, 2:] /= np.where(top[2:] > 0, top[2:], 1.0)
        self._static = static
        shares = np.array([g.flops_share for g in groups])
        self._rest = np.array([min(1.0, shares[i + 1:].sum()) for i in range(n)])
        self._t = 0
        self._ratios: dict[str, float] = {}
        self._previous = 0.0
        self._spread_at: tuple[int, float] | None = None

    def observation(self) -> np.ndarray:
        t = self._t
        dense = self.space.dense_costs.macs
        reduced = 1.0 - self.space.costs(self._ratios).macs / dense if self._ratios else 0.0
        spread = [self._spread()] if self.budget_aware else []
        obs = np.concatenate([self._static[t], [reduced, self._rest[t], self._previous], spread])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t, self._ratios, self._previous, self._spread_at = 0, {}, 0.0, None
        return self.observation(), {"group": self.space.groups[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        info = self.decide(action)
        if not self.policy_complete:
            return self.observation(), 0.0, False, False, info
        return self.conclude(self.evaluator(self.policy), info)

    # step() in two halves, so that a vector of envs can score its episodes' policies in one batch
    def decide(self, action: np.ndarray) -> dict[str, Any]:
        """Set the current group's ratio from ``action`` (raised to the wall); return the step's info."""
        if self._t >= len(self.space.groups):
            raise RuntimeError("episode is over; call reset()")
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        g = self.space.groups[self._t]
        wall = min_ratio(self.space, self.budget, self._ratios, self._t)
        if self.budget_aware:  # piecewise linear: 0 -> low, 0.5 -> the spread ratio, 1 -> high
            centre = min(max(self._spread(), g.low), g.high)
            ratio = g.low + 2 * a * (centre - g.low) if a <= 0.5 else centre + (2 * a - 1) * (g.high - centre)
        else:
            ratio = g.low + a * (g.high - g.low)
        ratio = max(ratio, wall)
        if ratio > wall and not reachable(self.space, self.budget, self._ratios, self._t, ratio):
            ratio = wall  # a non-monotone latency table: pruning this group more made the rest unreachable
        self._ratios[g.name] = ratio
        # AMC feeds back the action actually taken (after the wall), as a fraction of the range.
        self._previous = (ratio - g.low) / (g.high - g.low) if g.high > g.low else 0.0
        self._t += 1
        return {"group": g.name, "ratio": ratio, "wall": wall}

    def _spread(self) -> float:
        # Asked twice per step (the observation, then decide); a bisection over the cost model each time,
        # so kept per group: the ratios it depends on (earlier groups') change only when the step advances.
        t = min(self._t, len(self.space.groups) - 1)
        if self._spread_at is None or self._spread_at[0] != t:
            self._spread_at = (t, spread_ratio(self.space, self.budget, {k: r for k, r in self._ratios.items()
                                                                         if k != self.space.groups[t].name}, t))
        return self._spread_at[1]

    @property
    def policy_complete(self) -> bool:
        """True once every group has its ratio: the policy is ready to be scored."""
        return self._t >= len(self.space.groups)

    def conclude(self, result: Result, info: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """The final step's return, given the score of :attr:`policy`."""
        info["result"] = result
        reward = self.failed_reward if result.failed else float(result.reward)  # type: ignore[arg-type]
        self._t -= 1  # the terminal observation repeats the last group's features
        obs = self.observation()
        self._t += 1
        return obs, reward, True, False, info

    @property
    def policy(self) -> Policy:
        """The ratios decided so far in this episode."""
        return Policy(self._ratios)
