"""The Searcher contract every backend implements.

A searcher proposes policies, the shared budget projection makes them feasible (and, for a
single-objective search, spends the budget they leave unused), the evaluator
scores them and the ledger records each exactly once. Subclasses implement :meth:`_step` (one unit
of work: a batch of random policies, a generation, a batch of Optuna trials, a DDPG episode) and
their extra state; everything else is here, so every backend behaves the same: seeded, always
within budget, resumable from :meth:`state_dict`, and never evaluating a policy twice.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from autoprune.budget import project
from autoprune.progress import track_progress
from autoprune.result import Result
from autoprune.scoring import PolicyEvaluator
from autoprune.search.ledger import Ledger, LedgerSpec
from autoprune.search_spaces import Policy

__all__ = ["Searcher"]

log = logging.getLogger(__name__)
Callback = Callable[["Searcher", list[Result]], None]
LedgerLike = Ledger | LedgerSpec | str | os.PathLike[str] | None


class Searcher(ABC):
    """Base of every search backend.

    Args:
        evaluator: scores policies; its space and budget define the search.
        seed: seeds every random choice of the backend.
        fill_budget: override the backend's default (:attr:`fills_budget`) for filling policies
            that leave budget unused; backends that never repair (DDPG, uniform) ignore it.
        ledger: where evaluations are recorded: a :class:`Ledger`, a storage URL
            (``"sqlite:////abs/ledger.db"``, ``"postgresql://..."``) or a run directory (a SQLite file
            ``ledger.db`` in it); default a fresh in-memory ledger. A URL or directory gets a study
            with this backend's objective directions.
    """

    name: str = ""  # what the ledger, the progress bar and checkpoints call the backend
    aliases: ClassVar[tuple[str, ...]] = ()  # names its checkpoints were saved under before
    # Whether repaired policies also spend the budget they leave unused (``project(..., fill=True)``).
    # Random and evolution fill: their candidates are the policies evaluated, so filling only
    # removes waste. A model-based sampler (TPE) models its *proposals*; filled, many proposals
    # score the same edge policy and TPE's search got worse (best validation -0.75 / -1.10 points
    # on seeds 0 / 1, ResNet-20 at 50% FLOPs). A Pareto search needs its cheaper models.
    fills_budget: bool = False
    max_stale_steps: ClassVar[int] = 50  # steps proposing only already-evaluated policies before giving up

    def __init__(self, evaluator: PolicyEvaluator, *, seed: int = 0, ledger: LedgerLike = None,
                 fill_budget: bool | None = None) -> None:
        if fill_budget is not None:
            if fill_budget and len(self.directions) > 1:
                raise ValueError(f"backend {self.name!r} searches a Pareto front, which needs the policies "
                                 "that leave budget unused; leave fill_budget unset")
            self.fills_budget = fill_budget
        self.evaluator = evaluator
        self.space = evaluator.space
        self.budget = evaluator.budget
        self.seed = seed
        self.ledger = self._open_ledger(ledger)
        self.rng = np.random.default_rng(seed)

    def _open_ledger(self, ledger: LedgerLike) -> Ledger:
        directions = list(self.directions)
        if ledger is None:
            return Ledger(self.space, directions=directions)
        if isinstance(ledger, (LedgerSpec, str, os.PathLike)):
            return Ledger.open(ledger, self.space, directions=directions)
        have = [d.name.lower() for d in ledger.study.directions]
        if have != directions:
            raise ValueError(f"the ledger's study optimises {have} but backend {self.name!r} needs {directions}; "
                             f"pass a storage URL or run directory instead, or Ledger(..., directions={directions})")
        return ledger

    # ----------------------------------------------------------------------------------------
    @property
    def directions(self) -> Sequence[str]:
        """Objective directions of this backend's ledger study (single-objective: maximise reward)."""
        return ("maximize",)

    def objectives(self, result: Result) -> list[float] | None:
        """The values recorded for a result (default: its reward)."""
        return None

    @abstractmethod
    def _step(self, limit: int) -> list[Result]:
        """Run at most ``limit`` new evaluations (one unit of work) and return their results."""

    def repair(self, policy: Policy) -> Policy:
        """The shared projection of ``policy`` onto the budget that this backend's evaluations use."""
        return project(self.space, self.budget, policy, fill=self.fills_budget)

    @property
    def done(self) -> bool:
        """True when the backend has nothing left to propose (e.g. the uniform baseline)."""
        return False

    # ----------------------------------------------------------------------------------------
    def step(self, limit: int | None = None) -> list[Result]:
        """One unit of work (capped at ``limit`` evaluations); returns the results it produced."""
        return self._step(limit if limit is not None else 1 << 30)

    def run(self, n_evaluations: int, *, callback: Callback | None = None, show_progress: bool = True) -> Result | None:
        """Search until the ledger holds ``n_evaluations`` distinct evaluations; return the best.

        Calling it again with a larger number continues the same search (also after
        :meth:`load_state_dict`).
        """
        stale = 0
        with track_progress(f"{self.name} search", n_evaluations, enabled=show_progress) as bar:
            bar.advance(min(len(self.ledger), n_evaluations))
            while len(self.ledger) < n_evaluations and not self.done and stale < self.max_stale_steps:
                before = len(self.ledger)
                results = self.step(n_evaluations - before)
                new = len(self.ledger) - before
                stale = 0 if new else stale + 1
                best = self.best
                bar.advance(new, best_reward=best.reward if best and best.reward is not None else float("nan"),
                            best_acc=best.accuracy if best and best.accuracy is not None else float("nan"))
                if callback is not None:
                    callback(self, results)
        if stale >= self.max_stale_steps:
            log.warning("%s proposed only already-evaluated policies for %d steps; stopping at %d evaluations",
                        self.name, stale, len(self.ledger))
        return self.best

    @property
    def best(self) -> Result | None:
        return self.ledger.best()

    def evaluate(self, policy: Policy, *, trial: Any = None, repair: bool = True) -> Result:
        """Project ``policy`` into the budget, reuse a recorded equivalent or evaluate and record it."""
        return self.evaluate_many([policy], trials=[trial], repair=repair)[0]

    def evaluate_many(self, policies: Sequence[Policy], *, trials: Sequence[Any] | None = None,
                      repair: bool = True) -> list[Result]:
        """:meth:`evaluate` for a batch: the new policies are scored together (in parallel when the
        evaluator is a :class:`~autoprune.parallel_evaluation.RayEvaluator`) and recorded in batch order,
        so a seeded search records the same ledger whatever the number of workers."""
        trials = list(trials) if trials is not None else [None] * len(policies)
        if repair:
            policies = [self.repair(p) for p in policies]
        new: dict[tuple[int, ...], Policy] = {}
        for policy in policies:
            key = self.ledger.key(policy)
            if self.ledger.get(policy) is None and key not in new:
                new[key] = policy
        scored = dict(zip(new, self.evaluator.map(list(new.values())), strict=True)) if new else {}
        results = []
        for policy, trial in zip(policies, trials, strict=True):
            key = self.ledger.key(policy)
            cached = self.ledger.get(policy)
            if cached is not None:  # recorded before, or earlier in this batch
                if trial is not None:  # the asking sampler still needs an answer
                    self.ledger.record(cached, backend=self.name, seed=self.seed, trial=trial,
                                       values=self.objectives(cached), cached=True)
                results.append(cached)
                continue
            result = scored[key]
            self.ledger.record(result, backend=self.name, seed=self.seed, trial=trial, values=self.objectives(result))
            results.append(result)
        return results

    def rerun_interrupted(self) -> int:
        """Close the trials a killed process left RUNNING (failed) and evaluate each of their policies once
        now, so the interrupted evaluation is neither lost nor, when the backend proposes it again, repeated."""
        stale = self.ledger.fail_running()
        if stale:
            self.evaluate_many(stale)
            log.info("%d evaluation(s) interrupted by a process that died were closed (failed) and run again",
                     len(stale))
        return len(stale)

    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (the ledger lives in its own storage)."""
        return {"backend": self.name, "seed": self.seed, "rng": self.rng.bit_generator.state, **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("backend") not in (self.name, *self.aliases):
            raise ValueError(f"state of backend {state.get('backend')!r} cannot be loaded into {self.name!r}")
        self.seed = state["seed"]
        self.rng.bit_generator.state = state["rng"]
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` saved (nothing, for a stateless backend)."""
        del state
