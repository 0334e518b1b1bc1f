"""Rewards: how a search scores an evaluated policy.

A reward is any callable ``reward(result, baseline) -> float`` (higher is better), where
``result`` is the :class:`~autoprune.result.Result` of the pruned model and ``baseline`` the
:class:`Baseline` of the dense one. Built-ins are registered by name; a config may also name
``"package.module:function"``. A reward that raises or returns NaN/inf marks that evaluation
failed (the evaluator records the error), so a search goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from autoprune.objects import load_object

if TYPE_CHECKING:  # for annotations only: configs check reward names without loading torch
    from autoprune.result import Result

__all__ = ["REWARDS", "Baseline", "Reward", "acc_flops", "acc_latency", "acc_params", "accuracy", "get_reward",
           "register_reward"]


@dataclass(frozen=True)
class Baseline:
    """The dense model's numbers a reward may compare against."""

    accuracy: float
    flops: int
    params: int
    latency: float | None = None
    target_latency: float | None = None  # the latency budget, absolute seconds, when there is one


class Reward(Protocol):
    def __call__(self, result: Result, baseline: Baseline) -> float: ...


def _accuracy(result: Result) -> float:
    if result.accuracy is None:
        raise ValueError("the result has no accuracy to reward")
    return float(result.accuracy)


def accuracy(result: Result, baseline: Baseline) -> float:
    """AMC's reward for budget-constrained search: the budget is enforced, so maximise accuracy."""
    return _accuracy(result)


def acc_flops(result: Result, baseline: Baseline) -> float:
    """AMC's resource-aware reward ``-error * log(FLOPs)``: trades accuracy against FLOPs."""
    return -(1.0 - _accuracy(result)) * math.log(result.flops)


def acc_params(result: Result, baseline: Baseline) -> float:
    """``-error * log(params)``: trades accuracy against model size."""
    return -(1.0 - _accuracy(result)) * math.log(result.params)


def acc_latency(result: Result, baseline: Baseline, w: float = -0.07) -> float:
    """MnasNet's ``accuracy * (latency / target) ** w`` (soft constraint, w = -0.07).

    The target is the latency budget when there is one, else the dense model's latency.
    """
    target = baseline.target_latency or baseline.latency
    if result.latency is None or not target:
        raise ValueError("acc_latency needs measured latencies: give the evaluator a latency model")
    return _accuracy(result) * (result.latency / target) ** w


REWARDS: dict[str, Reward] = {"accuracy": accuracy, "acc_flops": acc_flops, "acc_params": acc_params,
                              "acc_latency": acc_latency}


def register_reward(name: str, fn: Reward) -> None:
    """Make ``fn`` available by ``name`` (e.g. in configs)."""
    REWARDS[name] = fn


def get_reward(spec: str | Callable[..., float] | None) -> Reward:
    """Resolve a reward: a callable, a registered name, or ``"package.module:function"``."""
    if spec is None:
        return accuracy
    if callable(spec):
        return spec  # type: ignore[return-value]
    if ":" in spec:
        fn = load_object(spec, what="reward")
        if not callable(fn):
            raise ValueError(f"reward {spec!r} is not callable")
        return fn  # type: ignore[no-any-return]
    if spec not in REWARDS:
        raise ValueError(f"unknown reward {spec!r}; choose one of {', '.join(REWARDS)} or give 'module:function'")
    return REWARDS[spec]
