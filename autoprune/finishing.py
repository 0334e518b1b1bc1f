"""Finishing a run: the best policy pruned, refitted and counted, its budget checked, saved with ``result.json``."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoprune.assembly import requested_budget
from autoprune.config import Config
from autoprune.data import Splits
from autoprune.latency_check import LatencyCheck
from autoprune.result import Result
from autoprune.run_directory import LATENCY_CALIBRATION
from autoprune.search import Searcher

__all__ = ["finish"]

log = logging.getLogger("autoprune.run")


def finish(searcher: Searcher, config: Config, splits: Splits, spec: dict[str, Any], run_dir: Path,
           seconds: float, *, show_progress: bool = False) -> dict[str, Any]:
    """Prune the best policy, check the budget on the counted model, save it and ``result.json``."""
    from autoprune.costs import count_costs
    from autoprune.model_io import save_pruned
    from autoprune.progress import track_progress
    from autoprune.training import accuracy

    best = searcher.best
    if best is None:
        raise RuntimeError(_why_nothing_completed(searcher.ledger.results))
    evaluator, budget = searcher.evaluator, requested_budget(config)
    measured = None
    with track_progress("finishing", 3, enabled=show_progress, log_every_s=0.0) as phase:
        if budget.needs_latency:  # the table predicts; the shipped model must meet it when measured
            phase.advance(0, phase="measuring latency")
            best, measured = _measured_within_latency(searcher, config, splits)
        phase.advance(0, phase="prune + refit" if config.pruner.reconstruct else "prune")
        pruned = evaluator.release(best.policy, reconstruct=config.pruner.reconstruct)
        phase.advance(1, phase="count + test")
        counted = count_costs(pruned, splits.example_inputs())
        dense = evaluator.space.dense_costs
        (run_dir / "best_policy.json").write_text(best.policy.to_json(indent=2))
        save_pruned(run_dir / "pruned.pt", pruned, evaluator.plan(best.policy), spec)
        dense_test, pruned_test = accuracy(evaluator.model, splits.test), accuracy(pruned, splits.test)
        phase.advance(1, phase="saved")
        phase.advance(1, phase="done")
    summary = {"backend": config.search.backend, "evaluations": len(searcher.ledger),
               "search_seconds": seconds, "budget": str(budget), "search_budget": str(evaluator.budget),
               "dense": {"flops": dense.macs, "params": dense.params, "val_accuracy": evaluator.dense_accuracy(),
                         "test_accuracy": dense_test},
               "pruned": {"flops": counted.macs, "params": counted.params, "val_accuracy": best.accuracy,
                          "test_accuracy": pruned_test, "latency": best.latency},
               # counted FLOPs/params of the physically pruned model; latency as measured (a calibrated search's
               # limit is in the table's units, which may read over the user's limit for a model measured under it)
               "meets_budget": (measured["within_budget"] and replace(budget, latency=None, latency_ms=None).holds(
                   counted, dense)) if measured else budget.holds(replace(counted, latency=best.latency), dense),
               "measured_latency": measured, "latency_calibration": _calibration(run_dir),
               "reconstructed": config.pruner.reconstruct,
               # e.g. the PruningNet's generated network vs the trained model pruned: both validation scores
               "release_choice": evaluator.release_choice(best.policy), "best": best.to_dict(), "done": True}
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def _calibration(run_dir: Path) -> dict[str, Any] | None:
    """The measured latency limit the search worked under (``latency.calibrate``), if it had one."""
    path = run_dir / LATENCY_CALIBRATION
    return json.loads(path.read_text()) if path.exists() else None


def _why_nothing_completed(results: list[Result]) -> str:
    """The message for a search with no usable result: the most common failure, not only the budget."""
    failures = Counter(r.failed[:160] for r in results if r.failed)
    if failures:
        cause, n = failures.most_common(1)[0]
        return (f"no evaluation completed: {n} of {len(results)} failed with '{cause}' (the most common "
                "failure; every failure is in the ledger); fix that, e.g. the reward, and start again")
    return (f"no evaluation met the budget ({len(results)} evaluated, all over it); loosen the budget or lower "
            "pruner.bounds' minimum")


def _measured_within_latency(searcher: Searcher, config: Config, splits: Splits) -> tuple[Result, dict[str, Any]]:
    """The policy that ships under a latency budget, chosen by measuring (:mod:`autoprune.latency_check`), and
    the check: ``within_budget`` is False when neither a candidate nor a resized policy measured within it."""
    latency = config.latency
    check = LatencyCheck(searcher.evaluator, requested_budget(config),  # the limit itself, not the search's margin
                         splits.tensor_inputs(latency.batch), runtime=latency.runtime, window=latency.window,
                         margin=latency.margin, val_size=min(config.evaluation.val_size, len(splits.val)))
    candidates = sorted((r for r in searcher.ledger.results if r.ok), key=lambda r: -(r.reward or -math.inf))
    shipped, verdict = check.choose(candidates)
    return shipped, {**verdict, "within_budget": verdict["fits"], "runtime": latency.runtime, "checked": check.checks}
