"""The measured latency check after a search: which policy ships under a latency budget.

The latency table prices policies during the search, and it is off by a few percent for a single
policy, more for the ones a search prefers (benchmarks/results/latency_search.md: the calibrated limit
let through candidates measured anywhere from 56% to 69% of dense against a 60% budget). So the
search's best candidates are measured against the dense model (interleaved, on this machine) in
order of reward. A candidate *fits* when the median of its rounds meets the limit (one round's ratio
can move by several points; requiring the slowest round to fit passed over all ten candidates of a
search whose medians fitted, benchmarks/README.md), and *lands* when it also measures within
``window`` of the limit: a faster one leaves the user's budget unused.

The first candidate that lands ships. Failing that, the check resizes a policy by measurement: the
best candidate, when none fits, or the first that fits, when none lands, is moved (the budget
projection that every search uses: the same shape, all groups pruned more or less) to the predicted
latency at which it should measure where the search aimed (by default the middle of the window),
scored like any candidate and measured again, a few times. A resized policy that lands ships, unless
it scored clearly worse (more than one standard error of the validation score) than the fitting
candidate it would replace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from autoprune.budget import Budget, InfeasibleBudgetError, project
from autoprune.latency import Timing, make_runner, time_against_dense
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search_spaces import Policy

__all__ = ["ROUNDS", "LatencyCheck", "choose_measured"]

log = logging.getLogger("autoprune.run")

Check = dict[str, Any]

# measurements of each policy, each of 30 interleaved samples; the median counts. With another process on the
# machine one round can read 5-8 points off (a shipped model's 3 rounds read 60.5, 57.4, 52.6% of dense; 7 rounds
# afterwards, 50-52%: benchmarks/README.md), and a 3-point window needs the median of more than three.
ROUNDS = 7


def _noise_floor(accuracy: float | None, val_size: int) -> float:
    """One standard error (binomial, ``val_size`` examples) under ``accuracy``: scores above it are as good."""
    a = accuracy or 0.0
    return a - math.sqrt(a * (1 - a) / max(val_size, 1))


def choose_measured(candidates: Sequence[Result], check: Callable[[Result], Check],
                    val_size: int) -> tuple[Result, Check]:
    """The candidate to ship and its check, from ``candidates`` in order of reward, each measured by ``check``
    (a dict with ``fits`` and ``lands``): the first that lands; else the first that fits; else the first.
    After one fits, those clearly less accurate (more than one standard error on ``val_size`` examples) are
    not measured: the latency they would use is not worth their accuracy."""
    first_fit: tuple[Result, Check] | None = None
    first: tuple[Result, Check] | None = None
    for result in candidates:
        if first_fit is not None and (result.accuracy or 0.0) < _noise_floor(first_fit[0].accuracy, val_size):
            continue
        verdict = check(result)
        first = first or (result, verdict)
        if verdict["lands"]:
            return result, verdict
        if verdict["fits"] and first_fit is None:
            first_fit = result, verdict
    if first is None:
        raise ValueError("no candidate to check")
    return first_fit or first


class LatencyCheck:
    """Measures policies of one evaluator's model against the dense model and decides which ships.

    Args:
        budget: the user's limits (the search may have worked under a calibrated one in the table's units).
        inputs: the batch the latency is measured on.
        window: how far under the limit (a fraction of dense latency) a shipped model should measure.
        margin: how far under the limit the search aimed (a fraction of it): a resized policy aims there too,
            or at the middle of the window if that is closer.
        val_size: validation examples behind each candidate's accuracy (its noise: one standard error).
        rounds: measurements per policy (:data:`ROUNDS`).
    """

    def __init__(self, evaluator: PolicyEvaluator, budget: Budget, inputs: torch.Tensor, *, runtime: str,
                 window: float, margin: float, val_size: int, rounds: int = ROUNDS) -> None:
        self.evaluator, self.budget, self.inputs, self.runtime = evaluator, budget, inputs, runtime
        self.window, self.margin, self.val_size, self.rounds = window, margin, val_size, rounds
        self.checks: list[Check] = []  # every measurement, in order (result.json's ``checked``)
        self._dense: Callable[[], Any] | None = None

    def time(self, policy: Policy) -> Timing:
        """The dense model and ``policy``'s timed interleaved, ``rounds`` times."""
        # latency depends on the pruned shapes only, whichever channels go
        shaped = self.evaluator.space.shaped_copy(self.evaluator.model, policy)
        self._dense = self._dense or make_runner(self.evaluator.model, self.inputs, self.runtime)
        return time_against_dense(self._dense, make_runner(shaped, self.inputs, self.runtime), self.rounds)

    def measure(self, result: Result, *, resized: bool = False) -> Check:
        """Time ``result``'s policy against the dense model; whether it fits the budget and lands in the window."""
        space = self.evaluator.space
        timing = self.time(result.policy)
        ratio, dense_ms = timing.ratio, timing.ms("dense")
        limit = self._limit(dense_ms)
        fits = ratio <= limit
        lands = fits and limit - ratio <= self.window
        log.info("measured latency of %s %d: %.1f%% of dense, slowest of %d rounds %.1f%% (%s)",
                 "resized policy" if resized else "candidate", len(self.checks) + 1, 100 * ratio, self.rounds,
                 100 * max(timing.ratios),
                 ("within budget" if lands else "within budget, under the window") if fits else "over budget")
        self.checks.append({"dense_ms": dense_ms, "pruned_ms": timing.ms("pruned"), "ratio": ratio,
                            "round_ratios": timing.ratios,
                            "predicted_ratio": (result.latency or math.nan) / (space.dense_costs.latency or 1),
                            "reward": result.reward, "fits": fits, "lands": lands, "resized": resized})
        return self.checks[-1]

    def _limit(self, dense_ms: float) -> float:
        """The tightest latency limit as a fraction of dense latency (an absolute one through ``dense_ms``)."""
        limits = [] if self.budget.latency is None else [self.budget.latency]
        limits += [] if self.budget.latency_ms is None else [self.budget.latency_ms / dense_ms]
        return min(limits)

    def choose(self, candidates: Sequence[Result], *, max_checks: int = 10, resize_tries: int = 3
               ) -> tuple[Result, Check]:
        """The policy to ship and its check: see the module docstring."""
        shipped, verdict = choose_measured(candidates[:max_checks], self.measure, self.val_size)
        if verdict["lands"]:
            return shipped, verdict
        resized = self.resize(shipped, verdict, tries=resize_tries)  # one that fits, or None
        if resized is None:
            return shipped, verdict
        if verdict["fits"] and not (resized[1]["lands"] and
                                    (resized[0].accuracy or 0.0) >= _noise_floor(shipped.accuracy, self.val_size)):
            return shipped, verdict  # the fitting candidate stays: the resized one is no closer, or worse
        return resized

    def resize(self, start: Result, verdict: Check, *, tries: int) -> tuple[Result, Check] | None:
        """``start``'s policy moved to the predicted latency that should measure within the window,
        scored and measured, up to ``tries`` times (each aim corrected by the last measurement): the first
        that lands, else the last that fits, else None."""
        space, fitting = self.evaluator.space, None
        limit = self._limit(verdict["dense_ms"])
        aim = limit - min(self.window / 2, limit * self.margin)  # inside the window, as far under as the search aimed
        for _ in range(tries):
            predicted = min(1.0, verdict["predicted_ratio"] * aim / verdict["ratio"])  # at most the dense model
            try:
                policy = project(space, replace(self.evaluator.budget, latency=predicted, latency_ms=None),
                                 start.policy, fill=True)
            except InfeasibleBudgetError:
                return fitting  # no policy within the bounds is predicted that fast
            result = self.evaluator.map([policy])[0]
            if result.failed:
                return fitting
            verdict = self.measure(result, resized=True)
            if verdict["lands"]:
                return result, verdict
            fitting = (result, verdict) if verdict["fits"] else fitting
        return fitting
