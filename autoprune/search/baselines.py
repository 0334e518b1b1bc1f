"""Baselines through the same machinery: random search and the uniform policy."""

from __future__ import annotations

from typing import Any

from autoprune.budget import uniform_policy
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search.base import LedgerLike, Searcher

__all__ = ["RandomSearcher", "UniformSearcher"]


class RandomSearcher(Searcher):
    """Policies drawn uniformly within the bounds, projected onto the budget by the shared projection
    (repaired when over it, filled when under it)."""

    name = "random"
    fills_budget = True

    def __init__(self, evaluator: PolicyEvaluator, *, seed: int = 0, ledger: LedgerLike = None,
                 batch_size: int = 1, fill_budget: bool | None = None) -> None:
        super().__init__(evaluator, seed=seed, ledger=ledger, fill_budget=fill_budget)
        self.batch_size = batch_size

    def _step(self, limit: int) -> list[Result]:
        return self.evaluate_many([self.space.sample(self.rng) for _ in range(min(self.batch_size, limit))])


class UniformSearcher(Searcher):
    """One ratio for every group, the smallest that meets the budget: a single evaluation."""

    name = "uniform"

    def __init__(self, evaluator: PolicyEvaluator, *, seed: int = 0, ledger: LedgerLike = None) -> None:
        super().__init__(evaluator, seed=seed, ledger=ledger)
        self._policy = uniform_policy(self.space, self.budget)

    @property
    def done(self) -> bool:
        return self.ledger.get(self._policy) is not None

    def _step(self, limit: int) -> list[Result]:
        return [self.evaluate(self._policy, repair=False)]

    def _extra_state(self) -> dict[str, Any]:
        return {}
