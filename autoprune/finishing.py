"""Finishing a run: the best policy pruned, refitted and counted, its budget checked, saved with ``result.json``."""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoprune.assembly import requested_budget
from autoprune.config import Config
from autoprune.data import Splits
from autoprune.result import Result
from autoprune.run_directory import LATENCY_CALIBRATION
from autoprune.search import Searcher

__all__ = ["choose_measured", "finish"]

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


def _measured_within_latency(searcher: Searcher, config: Config, splits: Splits,
                             max_checks: int = 10, rounds: int = 3) -> tuple[Result, dict[str, Any]]:
    """The best-rewarded evaluation whose *measured* latency meets the budget, and uses it.

    The latency table's predictions are off by a few percent (benchmarks/results/latency.md), so
    the candidates are measured against the dense model (interleaved, on this machine) in order
    of reward; a candidate fits when the median of ``rounds`` measurements meets the limit (one
    round's ratio can move by several points; requiring the slowest round to fit passed over all ten
    candidates of a MobileNetV2 search whose medians fitted, benchmarks/README.md). The first that fits
    ships if it also *lands*: measures within ``latency.window`` of the limit. One that measures faster
    leaves the user's budget unused, so the check looks on down the ranking, among candidates as accurate
    as it within the validation noise (one standard error), for one that lands; if none does, the first
    that fits ships. ``within_budget`` is False when none of the ``max_checks`` best fits, and the best is
    returned as searched.
    """
    from autoprune.latency import make_runner, measure

    evaluator, budget = searcher.evaluator, requested_budget(config)  # the limit itself, not the search's margin
    x = splits.tensor_inputs(config.latency.batch)
    runtime = config.latency.runtime
    dense_runner = make_runner(evaluator.model, x, runtime)

    def check(result: Result) -> dict[str, Any]:
        # latency depends on the pruned shapes only, whichever channels go
        shaped = evaluator.space.shaped_copy(evaluator.model, result.policy)
        runners = {"dense": dense_runner, "pruned": make_runner(shaped, x, runtime)}
        times = [measure(runners, repeats=30) for _ in range(rounds)]
        ratios = [t["pruned"] / t["dense"] for t in times]
        dense_ms = statistics.median(t["dense"] for t in times) * 1e3
        ratio, pruned_ms = statistics.median(ratios), statistics.median(t["pruned"] for t in times) * 1e3
        # how far under each limit it measures, as a fraction of dense latency
        headroom = [] if budget.latency is None else [budget.latency - ratio]
        headroom += [] if budget.latency_ms is None else [(budget.latency_ms - pruned_ms) / dense_ms]
        fits = min(headroom) >= 0
        lands = fits and min(headroom) <= config.latency.window
        log.info("measured latency of candidate %d: %.1f%% of dense, slowest of %d rounds %.1f%% (%s)",
                 len(checks) + 1, 100 * ratio, rounds, 100 * max(ratios),
                 ("within budget" if lands else "within budget, under the window") if fits else "over budget")
        return {"dense_ms": dense_ms, "pruned_ms": pruned_ms, "ratio": ratio, "round_ratios": ratios,
                "predicted_ratio": (result.latency or math.nan) / (evaluator.space.dense_costs.latency or 1),
                "reward": result.reward, "fits": fits, "lands": lands}

    candidates = sorted((r for r in searcher.ledger.results if r.ok), key=lambda r: -(r.reward or -math.inf))
    checks: list[dict[str, Any]] = []
    shipped, measured = choose_measured(candidates[:max_checks], check, min(config.evaluation.val_size,
                                                                           len(splits.val)), checks)
    return shipped, {**measured, "within_budget": measured["fits"], "runtime": runtime, "checked": checks}


def choose_measured(candidates: Sequence[Result], check: Callable[[Result], dict[str, Any]], val_size: int,
                    checks: list[dict[str, Any]]) -> tuple[Result, dict[str, Any]]:
    """The candidate to ship and its check, from ``candidates`` in order of reward, each measured by ``check``
    (a dict with ``fits`` and ``lands``) and appended to ``checks``: the first that lands; else the first that
    fits; else the first. After one fits, those clearly less accurate (more than one standard error on
    ``val_size`` examples) are not measured: the latency they would use is not worth their accuracy."""
    first_fit: tuple[Result, dict[str, Any]] | None = None
    noise_floor = 0.0
    for result in candidates:
        if first_fit is not None and (result.accuracy or 0.0) < noise_floor:
            continue
        checks.append(check(result))
        if checks[-1]["lands"]:
            return result, checks[-1]
        if checks[-1]["fits"] and first_fit is None:
            first_fit = result, checks[-1]
            accuracy = result.accuracy or 0.0
            noise_floor = accuracy - math.sqrt(accuracy * (1 - accuracy) / max(val_size, 1))
    return first_fit or (candidates[0], checks[0])
