"""Budgets: hard limits on a pruned model's FLOPs (MACs) and parameters, checked exactly.

A limit below or equal to 1 is a fraction of the dense model; above 1 it is an absolute count
(e.g. ``Budget(flops=0.5)`` or ``Budget(params=150_000)``). Costs come from the analytic cost
model, which equals the counted costs of the physically pruned model, so "meets the budget" here
means the returned model meets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autoprune.costs import Costs
from autoprune.search_spaces import Policy, SearchSpace

__all__ = ["Budget", "InfeasibleBudgetError", "uniform_policy"]


class InfeasibleBudgetError(ValueError):
    """No policy within the search space's bounds can meet the budget."""


@dataclass(frozen=True)
class Budget:
    """Hard limits; ``None`` means unconstrained. Values <= 1 are fractions of the dense model."""

    flops: float | None = None
    params: float | None = None

    def __post_init__(self) -> None:
        for name in ("flops", "params"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"budget {name}={v} must be positive (a fraction <= 1 of dense, or an absolute count)")

    def limits(self, dense: Costs) -> dict[str, float]:
        """Absolute limits, e.g. ``{"flops": 20.4e6}``."""
        out = {}
        for name, dense_value in (("flops", dense.macs), ("params", dense.params)):
            v = getattr(self, name)
            if v is not None:
                out[name] = v * dense_value if v <= 1 else v
        return out

    def slack(self, costs: Costs, dense: Costs) -> dict[str, float]:
        """Limit minus cost for each constraint (>= 0 where it holds)."""
        values = {"flops": costs.macs, "params": costs.params}
        return {k: lim - values[k] for k, lim in self.limits(dense).items()}

    def holds(self, costs: Costs, dense: Costs) -> bool:
        return all(s >= 0 for s in self.slack(costs, dense).values())

    def __str__(self) -> str:
        parts = [f"{k} <= {v:g}" + (" x dense" if v <= 1 else "")
                 for k, v in (("flops", self.flops), ("params", self.params)) if v is not None]
        return ", ".join(parts) or "unconstrained"

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> Budget:
        unknown = set(values) - {"flops", "params"}
        if unknown:
            raise ValueError(f"unknown budget key(s) {sorted(unknown)}; use flops and/or params")
        return cls(**{k: float(v) for k, v in values.items()})


def uniform_policy(space: SearchSpace, budget: Budget, *, tol: float = 1e-4) -> Policy:
    """The smallest single ratio (clipped to each group's bounds) that meets ``budget``.

    Costs fall monotonically as the shared ratio grows, so a bisection finds it exactly.

    Raises:
        InfeasibleBudgetError: even every group at its upper bound does not meet the budget.
    """
    dense = space.dense_costs
    if budget.holds(space.costs(space.uniform(0.0)), dense):
        return space.uniform(0.0)
    top = max(g.high for g in space.groups)
    most = space.costs(space.uniform(top))
    if not budget.holds(most, dense):
        raise InfeasibleBudgetError(
            f"budget {budget} is infeasible: pruning every group to its upper bound leaves "
            f"{most.macs / dense.macs:.1%} of FLOPs and {most.params / dense.params:.1%} of parameters; "
            "raise the budget or the upper bounds")
    lo, hi = 0.0, top
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if budget.holds(space.costs(space.uniform(mid)), dense):
            hi = mid
        else:
            lo = mid
    return space.uniform(hi)
