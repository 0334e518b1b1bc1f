"""MetaPruning-style evolutionary search (Liu et al. 2019).

Generation 0 is random. Every later generation takes the top-k policies evaluated so far as
parents and makes ``n_mutation`` children by resampling each gene with probability
``mutation_prob`` and ``n_crossover`` children by uniform crossover of two parents, then fills the
population with random policies. Every candidate is repaired into the budget by the shared
projection (which also spends the budget a candidate leaves unused), and one whose pruned network
was already evaluated (or is already queued) is redrawn before it costs an evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search.base import LedgerLike, Searcher
from autoprune.search_spaces import Policy

__all__ = ["EvolutionSearcher"]


class EvolutionSearcher(Searcher):
    """Evolutionary search; one :meth:`step` evaluates (up to) one generation."""

    name = "evolution"
    fills_budget = True

    def __init__(self, evaluator: PolicyEvaluator, *, seed: int = 0, ledger: LedgerLike = None, population: int = 50,
                 generations: int = 20, top_k: int = 10, mutation_prob: float = 0.1, n_mutation: int = 25,
                 n_crossover: int = 25, max_redraws: int = 20, fill_budget: bool | None = None) -> None:
        super().__init__(evaluator, seed=seed, ledger=ledger, fill_budget=fill_budget)
        if not 0 < top_k <= population or n_mutation + n_crossover > population:
            raise ValueError("evolution needs 0 < top_k <= population and n_mutation + n_crossover <= population")
        self.population, self.generations, self.top_k = population, generations, top_k
        self.mutation_prob, self.n_mutation, self.n_crossover = mutation_prob, n_mutation, n_crossover
        self.max_redraws = max_redraws
        self.generation = 0
        self._queue: list[Policy] = []

    @property
    def done(self) -> bool:
        return self.generation >= self.generations and not self._queue

    # ----------------------------------------------------------------------------------------
    def _random(self) -> Policy:
        return self.space.sample(self.rng)

    def _mutate(self, parent: Policy) -> Policy:
        ratios = {}
        for g in self.space.groups:
            resample = self.rng.random() < self.mutation_prob
            ratios[g.name] = float(self.rng.uniform(g.low, g.high)) if resample else parent[g.name]
        return Policy(ratios)

    def _crossover(self, a: Policy, b: Policy) -> Policy:
        return Policy({g.name: a[g.name] if self.rng.random() < 0.5 else b[g.name] for g in self.space.groups})

    def _next_generation(self) -> list[Policy]:
        parents = sorted((r for r in self.ledger.results if r.ok and r.reward is not None),
                         key=lambda r: r.reward, reverse=True)[: self.top_k]  # type: ignore[arg-type, return-value]
        parent_policies = [r.policy for r in parents]

        def pick() -> Policy:
            return parent_policies[int(self.rng.integers(len(parent_policies)))]

        makers: list[Callable[[], Policy]] = []
        if self.generation > 0 and parents:
            makers += [lambda: self._mutate(pick())] * self.n_mutation
            makers += [lambda: self._crossover(pick(), pick())] * self.n_crossover
        makers += [self._random] * (self.population - len(makers))
        queue: list[Policy] = []
        seen = set()
        for make in makers:
            for attempt in range(self.max_redraws):
                # the last try is a random policy: a crowded neighbourhood must not stall the generation
                proposal = make() if attempt < self.max_redraws - 1 else self._random()
                candidate = self.repair(proposal)
                key = self.ledger.key(candidate)
                if key not in seen and self.ledger.get(candidate) is None:
                    break
            seen.add(key)
            queue.append(candidate)
        self.generation += 1
        return queue

    def _step(self, limit: int) -> list[Result]:
        if not self._queue:
            if self.generation >= self.generations:
                return []
            self._queue = self._next_generation()
        batch, self._queue = self._queue[:limit], self._queue[limit:]
        return self.evaluate_many(batch, repair=False)  # already projected

    # ----------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"generation": self.generation, "queue": [p.to_dict() for p in self._queue]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self._queue = [Policy(p) for p in state["queue"]]
