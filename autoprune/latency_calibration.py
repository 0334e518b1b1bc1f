"""The search's latency limit, calibrated on whole models measured before the search.

The latency table (:mod:`autoprune.latency`) sums per-layer timings and a fitted remainder; on
MobileNetV2 in onnxruntime at batch 1 it predicted whole-model ratios 8-10 points low, so a search
that filled policies to a predicted 60% of dense latency proposed models that measured 64%, and the
measured check at the end (:mod:`autoprune.finishing`) had to ship a smaller one, at 49.6%: ten points
of the user's latency budget thrown away (``benchmarks/results/latency_search.md``, before this module).

So the search is not given the user's limit but one corrected by measurement: policies filled to the
current limit (the uniform policy and random filled policies, the shapes a search proposes) are
pruned to shape and timed against the dense model, interleaved, and the limit is scaled by
``aim / measured`` (then along the secant of the last two rounds) until their median measures within
``tolerance`` of the aim. The aim sits a little
under the user's limit (``latency.margin``), so that most of what the search proposes also measures
under it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.budget import Budget, InfeasibleBudgetError, check_feasible, project, uniform_policy
from autoprune.latency import make_runner, measure
from autoprune.search_spaces import SearchSpace

__all__ = ["LatencyCalibration", "TimeModels", "calibrate_latency_limit", "time_in"]


@dataclass
class LatencyCalibration:
    """How the search's latency limit was chosen: aim and limit as fractions of dense latency."""

    aim: float  # the measured ratio the search aims at (the user's limit less the margin)
    limit: float  # the predicted ratio the search is given (the table's units)
    runtime: str
    batch: int
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: limit, measured ratios, median

    def budget(self, requested: Budget) -> Budget:
        """``requested`` with its latency limit replaced by the calibrated one."""
        return replace(requested, latency=self.limit, latency_ms=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyCalibration:
        return cls(**data)


def _probe_policies(space: SearchSpace, budget: Budget, n: int, seed: int) -> list[dict[str, float]]:
    """The uniform policy and ``n - 1`` random policies, all filled to ``budget``."""
    rng = np.random.default_rng(seed)
    policies = [dict(uniform_policy(space, budget))]
    for _ in range(n - 1):
        policies.append(dict(project(space, budget, space.sample(rng), fill=True)))
    return policies


TimeModels = Callable[[dict[str, nn.Module]], dict[str, float]]


def time_in(runtime: str, x: torch.Tensor) -> TimeModels:
    """Seconds per inference of each model on ``x`` in ``runtime``, measured interleaved."""
    def time_models(models: dict[str, nn.Module]) -> dict[str, float]:
        return measure({name: make_runner(m, x, runtime) for name, m in models.items()}, repeats=30)
    return time_models


def _next_limit(rounds: list[dict[str, Any]], aim: float) -> float:
    """The secant through the last two rounds' (limit, measured) points, solved for the aim; the limit scaled
    by aim / measured after one round, or where the secant's slope is off the proportional one by more than 2x
    (two close rounds measured a few tenths of a point apart: noise, and the secant would leap)."""
    last = rounds[-1]
    proportional = last["median"] / last["limit"]
    if len(rounds) >= 2 and rounds[-2]["limit"] != last["limit"]:
        before = rounds[-2]
        slope = (last["median"] - before["median"]) / (last["limit"] - before["limit"])
        if proportional / 2 <= slope <= 2 * proportional:
            return float(last["limit"] + (aim - last["median"]) / slope)
    return float(last["limit"] * aim / last["median"])


def calibrate_latency_limit(model: nn.Module, space: SearchSpace, requested: Budget, time_models: TimeModels, *,
                            runtime: str, batch: int, margin: float, probes: int = 4, max_rounds: int = 4,
                            tolerance: float = 0.005, seed: int = 0,
                            on_round: Callable[[dict[str, Any]], None] | None = None) -> LatencyCalibration:
    """The predicted latency limit at which filled policies *measure* ``margin`` under ``requested``'s limit.

    Args:
        model: the dense model; ``space`` has its latency table attached.
        requested: the user's budget (a latency fraction or milliseconds; FLOPs and parameter limits
            are kept as they are).
        time_models: seconds per inference of named models, timed together (:func:`time_in`).
        margin: how far under the user's limit to aim, as a fraction of it.

    Raises:
        InfeasibleBudgetError: no policy within the bounds reaches the aim (the message names the
            smallest ratio reachable).
    """
    if requested.latency is not None:
        aim = requested.latency * (1 - margin)
    else:  # an absolute limit, as a ratio of the dense model measured here
        aim = requested.latency_ms / 1e3 * (1 - margin) / time_models({"dense": model})["dense"]  # type: ignore[operator]
    limit = aim
    calibration = LatencyCalibration(aim=aim, limit=aim, runtime=runtime, batch=batch)
    dense_seconds: list[float] = []
    for _ in range(max_rounds):
        try:
            if limit <= 0:
                raise InfeasibleBudgetError("no policy is predicted that fast")
            budget = replace(requested, latency=limit, latency_ms=None)
            check_feasible(space, budget)
        except InfeasibleBudgetError as e:
            # odd channel counts can run several times slower than dense in torch on CPU (13 of 16 channels:
            # 2.5x on a small ResNet-20); multiples of 8 keep the fast kernels
            hint = "" if (space.round_to or 1) > 1 else " or keep channel counts to multiples of 8 (pruner.round_to: 8)"
            raise InfeasibleBudgetError(
                f"latency calibration: to measure {aim:.1%} of dense latency the search would need a predicted "
                f"limit of {limit:.1%}, and {e}; raise the latency budget{hint}") from None
        policies = _probe_policies(space, budget, probes, seed)
        models = {"dense": model, **{f"probe{i}": space.shaped_copy(model, p) for i, p in enumerate(policies)}}
        seconds = time_models(models)
        if dense_seconds and abs(seconds["dense"] / statistics.median(dense_seconds) - 1) > 0.25:
            seconds = time_models(models)  # the dense model itself read 25% off: a burst of load; time again
        dense_seconds.append(seconds["dense"])
        ratios = [seconds[f"probe{i}"] / seconds["dense"] for i in range(len(policies))]
        median = statistics.median(ratios)
        entry: dict[str, Any] = {"limit": limit, "measured": ratios, "median": median}
        calibration.rounds.append(entry)
        if on_round is not None:
            on_round(entry)
        if abs(median - aim) <= tolerance or (limit >= 1.0 and median < aim):
            break  # on target, or latency is not what binds
        limit = min(1.0, _next_limit(calibration.rounds, aim))
    # the measured limit whose models landed closest to the aim without passing it; else the last correction,
    # once the most pruned model shows that the aim can be reached at all
    under = [r for r in calibration.rounds if r["median"] <= aim + tolerance]
    if not under:
        most = space.shaped_copy(model, {g.name: g.high for g in space.groups})
        seconds = time_models({"dense": model, "most pruned": most})
        if seconds["most pruned"] / seconds["dense"] > aim:
            raise InfeasibleBudgetError(
                f"latency calibration: every group pruned to its upper bound measures "
                f"{seconds['most pruned'] / seconds['dense']:.1%} of dense latency, over the aim of {aim:.1%}; "
                "raise the latency budget or the upper bounds")
    calibration.limit = min(under, key=lambda r: aim - r["median"])["limit"] if under else limit
    return calibration
