"""A search run in a directory: everything needed to resume, report or export lives there.

``run_dir/`` holds ``config.yaml`` (resolved), ``ledger.db`` (every evaluation), ``searcher.ckpt``
(the backend's state after its last step, written atomically), ``best_policy.json``,
``pruned.pt`` (portable pruned model), ``result.json`` and ``log.txt``. :func:`resume` continues
from the last checkpoint; evaluations already in the ledger are not run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.budget import Budget, InfeasibleBudgetError, check_feasible
from autoprune.config import Config, ConfigError, import_object, load_config
from autoprune.data import Splits, load_dataset
from autoprune.distributed import RayEvaluator, WorkersLostError
from autoprune.evaluation import Evaluator, Result
from autoprune.run_directory import FROZEN, backup_ledger, check_ledger, check_unchanged, freeze, hold
from autoprune.search import LedgerSpec, Searcher, count_recorded, create_searcher
from autoprune.search_spaces import SearchSpace

__all__ = ["RunContents", "RunOutcome", "open_run", "resume", "start"]

log = logging.getLogger("autoprune.run")
CHECKPOINT = "searcher.ckpt"
BACKUP_SECONDS = 30.0  # the ledger is backed up at most this often (SQLite's online backup: milliseconds)


@dataclass
class RunOutcome:
    run_dir: Path
    summary: dict[str, Any]
    already_finished: bool = False


def _load_data(config: Config) -> Splits:
    if ":" in config.data.name:
        splits = import_object(config.data.name)()
        if not isinstance(splits, Splits):
            raise ConfigError(f"data.name: {config.data.name} must return autoprune.data.Splits")
        return splits
    return load_dataset(config.data.name, root=config.data.root, val_size=config.data.val_size,
                        seed=config.data.split_seed)


def _budget(config: Config) -> Budget:
    """The budget the user asked for (the search may aim under its latency limit: ``latency.margin``)."""
    return Budget(**config.budget.model_dump())


def _space(config: Config, model: nn.Module, splits: Splits) -> SearchSpace:
    """The config's search space, priced in latency when its budget needs it (the table is cached on disk)."""
    space = SearchSpace.from_model(model, splits.example_inputs(), ignored_layers=config.pruner.ignored_layers,
                                   bounds=config.pruner.bounds, round_to=config.pruner.round_to)
    if _budget(config).needs_latency:
        from autoprune.latency import LatencyTable

        space.attach_latency(LatencyTable.build(model, space, runtime=config.latency.runtime,
                                                batch=config.latency.batch))
    return space


def _existing_run(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """``run_dir`` resolved and its ``result.json`` (empty until the run finishes); a usage error if no run is there."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); start one with 'autoprune search CONFIG'")
    result = run_dir / "result.json"
    return run_dir, json.loads(result.read_text()) if result.exists() else {}


def _load_model(config: Config, splits: Splits, run_dir: Path, show_progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    from autoprune.models import REFERENCE_DIR, create_model, load_checkpoint, save_checkpoint
    from autoprune.training import TrainConfig, accuracy, train

    c, size = splits.input_shape[0], splits.input_shape[-1]
    spec = {"model": config.model.name, "in_channels": c, "num_classes": splits.num_classes, "image_size": size}
    if ":" in config.model.name:
        model = import_object(config.model.name)()
        if config.model.checkpoint:
            model.load_state_dict(torch.load(config.model.checkpoint, map_location="cpu", weights_only=True))
        return model.eval(), spec
    candidates = [config.model.checkpoint] if config.model.checkpoint else [
        str(run_dir / "dense.pt"), str(REFERENCE_DIR / f"{config.model.name}_{config.data.name}.pt")]
    for path in candidates:
        if path and Path(path).exists():
            model, _ = load_checkpoint(path)
            return model, spec
    if config.model.checkpoint:
        raise ConfigError(f"model.checkpoint: {config.model.checkpoint} does not exist")
    if config.model.train_epochs is None:
        raise ConfigError(f"model: no checkpoint for {config.model.name} on {config.data.name}; "
                          "set model.checkpoint, or model.train_epochs to train one first")
    torch.manual_seed(config.seed)
    model = create_model(config.model.name, in_channels=c, num_classes=splits.num_classes, image_size=size)
    budget = _budget(config)
    if not budget.needs_latency:  # costs do not depend on weights: refuse an impossible budget before training
        check_feasible(_space(config, model, splits), budget)
    train(model, splits.train, TrainConfig(epochs=config.model.train_epochs, seed=config.seed,
                                           hflip=splits.input_shape[-1] > 8), show_progress=show_progress)
    save_checkpoint(model, run_dir / "dense.pt", {**spec, "test_accuracy": accuracy(model, splits.test)})
    return model.eval(), spec


def _build(config: Config, run_dir: Path, show_progress: bool) -> tuple[Searcher, Splits, dict[str, Any]]:
    torch.set_num_threads(config.threads)
    splits = _load_data(config)
    model, spec = _load_model(config, splits, run_dir, show_progress)
    space = _space(config, model, splits)
    budget = _budget(config).with_latency_margin(config.latency.margin)
    try:
        check_feasible(space, budget)
    except InfeasibleBudgetError as e:
        if budget == _budget(config):
            raise
        raise InfeasibleBudgetError(f"{e} or lower latency.margin ({config.latency.margin:g}), which lowers the "
                                    "search's latency limit") from None
    ev = config.evaluation
    if ev.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"evaluation.device: {ev.device} asked for, but torch sees no CUDA device; use cpu")
    evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val, budget=budget,
                          importance=config.pruner.importance, val_size=ev.val_size, bn_batches=ev.bn_batches,
                          batch_size=ev.batch_size, finetune_steps=ev.finetune_steps, path=ev.path,
                          reward=config.reward, seed=config.seed, device=ev.device)
    options = dict(config.search.options)
    if config.search.workers > 1 or config.search.address:
        evaluator = RayEvaluator(evaluator, workers=config.search.workers, address=config.search.address)  # type: ignore[assignment]
        # keep every worker busy: that many evaluations per step (evolution scores whole generations)
        if config.search.backend in ("tpe", "gp", "cmaes", "qmc", "nsga2", "random"):
            options.setdefault("batch_size", config.search.workers)
        elif config.search.backend == "ddpg":
            options.setdefault("parallel_episodes", config.search.workers)
    searcher = create_searcher(config.search.backend, evaluator=evaluator, seed=config.seed,
                               ledger=_ledger_location(config, run_dir), **options)
    return searcher, splits, spec


def _ledger_location(config: Config, run_dir: Path) -> Path | LedgerSpec:
    """The run directory's SQLite file, or this run's own study in a shared database."""
    if config.search.storage:
        return LedgerSpec(config.search.storage, study_name=f"autoprune/{run_dir.name}")
    return run_dir


def save_checkpoint(searcher: Searcher, run_dir: Path) -> None:
    """Write the searcher's state into ``run_dir`` atomically."""
    tmp = run_dir / (CHECKPOINT + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(searcher.state_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / CHECKPOINT)  # atomic: a kill mid-write leaves the previous checkpoint


def prepare(config: Config, run_dir: Path, *, show_progress: bool = False) -> tuple[Searcher, Splits, dict[str, Any]]:
    """The run's searcher, restored from ``run_dir``'s checkpoint when there is one."""
    if not config.search.storage:
        check_ledger(run_dir)  # before any slow set-up: a damaged ledger is a one-line error naming its backup
    searcher, splits, spec = _build(config, run_dir, show_progress)
    if not config.search.storage:  # our own SQLite ledger, and we hold the run: a RUNNING trial is a dead one's
        stale = searcher.ledger.fail_running()
        if stale:
            log.info("closed %d trial(s) left running by a process that died (marked failed)", stale)
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        try:
            with ckpt.open("rb") as f:
                state = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
            raise ConfigError(f"{ckpt} is damaged ({type(e).__name__}); delete it to continue from the ledger "
                              "alone (recorded evaluations are kept and not re-run; the searcher restarts)") from e
        searcher.load_state_dict(state)
        log.info("resumed %s with %d evaluations in the ledger", config.search.backend, len(searcher.ledger))
    return searcher, splits, spec


def _search(config: Config, run_dir: Path, show_progress: bool) -> RunOutcome:
    log.info("run %s: %s search for %d evaluations under %s, seed %d, %d worker(s)", run_dir, config.search.backend,
             config.search.evaluations, _budget(config), config.seed, config.search.workers)
    searcher, splits, spec = prepare(config, run_dir, show_progress=show_progress)
    start = time.perf_counter()
    backed_up = [time.monotonic()]

    def step(s: Searcher, _results: list[Result]) -> None:
        save_checkpoint(s, run_dir)
        if not config.search.storage and time.monotonic() - backed_up[0] >= BACKUP_SECONDS:
            backup_ledger(run_dir)
            backed_up[0] = time.monotonic()
        best = s.best
        found = best is not None and best.reward is not None and best.accuracy is not None
        log.info("%d/%d evaluations; best so far: %s", len(s.ledger), config.search.evaluations,
                 f"reward {best.reward:.4f}, accuracy {best.accuracy:.4f}, FLOPs {best.flops_ratio:.1%}"
                 if found and best is not None else "none within budget")

    try:
        searcher.run(config.search.evaluations, show_progress=show_progress, callback=step)
    except WorkersLostError as e:
        raise WorkersLostError(str(e).replace("RUN_DIR", str(run_dir))) from None
    finally:
        if hasattr(searcher.evaluator, "shutdown"):  # Ray workers
            searcher.evaluator.shutdown()
    save_checkpoint(searcher, run_dir)
    if not config.search.storage:
        backup_ledger(run_dir)
    summary = finish(searcher, config, splits, spec, run_dir, time.perf_counter() - start, show_progress=show_progress)
    d, p = summary["dense"], summary["pruned"]
    log.info("result: %d evaluations; FLOPs %.1f%% of dense, test accuracy %.2f%% (dense %.2f%%); budget %s",
             summary["evaluations"], 100 * p["flops"] / d["flops"], 100 * p["test_accuracy"],
             100 * d["test_accuracy"], "met" if summary["meets_budget"] else "NOT met")
    return RunOutcome(run_dir, summary)


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
    evaluator, budget = searcher.evaluator, _budget(config)
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
        save_pruned(run_dir / "pruned.pt", pruned, evaluator.pruner.plan(best.policy), spec)
        dense_test, pruned_test = accuracy(evaluator.model, splits.test), accuracy(pruned, splits.test)
        phase.advance(1, phase="saved")
        phase.advance(1, phase="done")
    summary = {"backend": config.search.backend, "evaluations": len(searcher.ledger),
               "search_seconds": seconds, "budget": str(budget), "search_budget": str(evaluator.budget),
               "dense": {"flops": dense.macs, "params": dense.params, "val_accuracy": evaluator.dense_accuracy(),
                         "test_accuracy": dense_test},
               "pruned": {"flops": counted.macs, "params": counted.params, "val_accuracy": best.accuracy,
                          "test_accuracy": pruned_test, "latency": best.latency},
               # counted FLOPs/params of the physically pruned model; latency as the table predicts it
               "meets_budget": budget.holds(replace(counted, latency=best.latency), dense)
               and (measured is None or measured["within_budget"]),
               "measured_latency": measured, "reconstructed": config.pruner.reconstruct, "best": best.to_dict(),
               "done": True}
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def _why_nothing_completed(results: list[Result]) -> str:
    """The message for a search with no usable result: the most common failure, not only the budget."""
    failures = Counter(r.failed[:160] for r in results if r.failed)
    if failures:
        cause, n = failures.most_common(1)[0]
        return (f"no evaluation completed: {n} of {len(results)} failed with '{cause}' (the most common "
                "failure; every failure is in the ledger); fix that, e.g. the reward, and start again")
    return (f"no evaluation met the budget ({len(results)} evaluated, all over it); loosen the budget or lower "
            "pruner.bounds' minimum")


@dataclass
class RunContents:
    """A finished run, loaded for reporting, fine-tuning or export (nothing outside ``run_dir`` needed)."""

    run_dir: Path
    config: Config
    splits: Splits
    dense: nn.Module
    space: SearchSpace
    spec: dict[str, Any]
    summary: dict[str, Any]

    def pruned(self) -> nn.Module:
        """The best policy's pruned model as the search saved it (before any fine-tune)."""
        from autoprune.model_io import load_pruned

        return load_pruned(self.run_dir / "pruned.pt")[0]

    def final(self) -> tuple[nn.Module, str]:
        """The model to ship: the fine-tuned one when ``autoprune finetune`` ran, else the pruned one."""
        from autoprune.model_io import load_pruned

        for name in ("finetuned.pt", "pruned.pt"):
            if (self.run_dir / name).exists():
                return load_pruned(self.run_dir / name)[0], name
        raise FileNotFoundError(f"{self.run_dir} has no pruned model; finish the search with 'autoprune resume'")

    def evaluations(self) -> list[Result]:
        """Every distinct evaluation in the run's ledger, in the order recorded."""
        from autoprune.search import read_ledger

        return read_ledger(_ledger_location(self.config, self.run_dir))

    def read(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the run directory, or None when that step has not run."""
        path = self.run_dir / name
        return json.loads(path.read_text()) if path.exists() else None


def open_run(run_dir: str | Path) -> RunContents:
    """Load a finished run: its config, data, dense model and search space."""
    run_dir, summary = _existing_run(run_dir)
    if not summary.get("done"):
        raise ConfigError(f"{run_dir} is not finished; continue it with 'autoprune resume {run_dir}'")
    config = load_config(run_dir / "config.yaml")
    torch.set_num_threads(config.threads)
    splits = _load_data(config)
    model, spec = _load_model(config, splits, run_dir, show_progress=False)
    space = _space(config, model, splits)
    return RunContents(run_dir, config, splits, model, space, spec, summary)


def _measured_within_latency(searcher: Searcher, config: Config, splits: Splits,
                             max_checks: int = 10) -> tuple[Result, dict[str, Any]]:
    """The best-rewarded evaluation whose *measured* latency meets the budget.

    The latency table's predictions are off by a few percent (benchmarks/results/latency.md), so
    the candidates are measured against the dense model (interleaved, on this machine) in order
    of reward; the first that meets the limit is the one returned. ``within_budget`` is False
    when none of the ``max_checks`` best does, and the best is returned as searched.
    """
    from autoprune.latency import make_runner, measure

    evaluator, budget = searcher.evaluator, _budget(config)  # the limit itself, not the search's margin
    x = splits.tensor_inputs(config.latency.batch)
    runtime = config.latency.runtime
    dense_runner = make_runner(evaluator.model, x, runtime)
    candidates = sorted((r for r in searcher.ledger.results if r.ok), key=lambda r: -(r.reward or -math.inf))
    checks = []
    for result in candidates[:max_checks]:
        t = measure({"dense": dense_runner, "pruned": make_runner(evaluator.pruner.prune(result.policy), x, runtime)},
                    repeats=30)
        ratio = t["pruned"] / t["dense"]
        ok = (budget.latency is None or ratio <= budget.latency) and (
            budget.latency_ms is None or t["pruned"] * 1e3 <= budget.latency_ms)
        checks.append({"dense_ms": t["dense"] * 1e3, "pruned_ms": t["pruned"] * 1e3, "ratio": ratio,
                       "predicted_ratio": (result.latency or math.nan) / (evaluator.space.dense_costs.latency or 1),
                       "reward": result.reward})
        log.info("measured latency of candidate %d: %.1f%% of dense (%s)", len(checks), 100 * ratio,
                 "within budget" if ok else "over budget")
        if ok:
            return result, {**checks[-1], "within_budget": True, "runtime": runtime, "checked": checks}
    return candidates[0], {**checks[0], "within_budget": False, "runtime": runtime, "checked": checks}


def _logging_to(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("autoprune").addHandler(handler)
    logging.getLogger("autoprune").setLevel(logging.INFO)
    return handler


def start(config: Config, run_dir: str | Path, *, show_progress: bool = True) -> RunOutcome:
    """Start a search in ``run_dir`` (which must not hold another run)."""
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; name a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold(run_dir, "autoprune search"):  # a live run there: RunInUseError names it (never suggest a racing resume)
        if (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir} already holds a run; use 'autoprune resume {run_dir}' or another --run-dir")
        config.dump(run_dir / "config.yaml")
        freeze(run_dir, config.model_dump(mode="json"))
        handler = _logging_to(run_dir)
        try:
            return _search(config, run_dir, show_progress)
        except ValueError:  # bad input (infeasible budget, unusable model, ...): leave no run to resume
            if not config.search.storage and count_recorded(run_dir) == 0:
                for name in ("config.yaml", FROZEN, CHECKPOINT, "ledger.db"):
                    (run_dir / name).unlink(missing_ok=True)
            raise
        finally:
            logging.getLogger("autoprune").removeHandler(handler)


def resume(run_dir: str | Path, *, show_progress: bool = True, evaluations: int | None = None,
           workers: int | None = None, address: str | None = None) -> RunOutcome:
    """Continue the run in ``run_dir``; a finished run is reported as such and left alone.

    ``evaluations`` (the total to reach), ``workers`` and ``address`` are the changes a run may take;
    any edit of ``config.yaml`` since the start is refused (:func:`autoprune.run_directory.check_unchanged`).
    """
    run_dir, summary = _existing_run(run_dir)
    with hold(run_dir, "autoprune resume"):
        config = load_config(run_dir / "config.yaml")
        check_unchanged(run_dir, config.model_dump(mode="json"))
        search = {k: v for k, v in {"evaluations": evaluations, "workers": workers, "address": address}.items()
                  if v is not None}
        if search:
            if summary.get("done") and evaluations is not None and evaluations > config.search.evaluations:
                raise ConfigError(f"{run_dir} is finished with {config.search.evaluations} evaluations; extending "
                                  "a finished run is not supported: start a new run with more evaluations")
            config = Config.model_validate({**config.model_dump(), "search": {**config.search.model_dump(),
                                                                               **search}})
            config.dump(run_dir / "config.yaml")
            freeze(run_dir, config.model_dump(mode="json"))
        if summary.get("done"):
            return RunOutcome(run_dir, summary, already_finished=True)
        handler = _logging_to(run_dir)
        try:
            return _search(config, run_dir, show_progress)
        finally:
            logging.getLogger("autoprune").removeHandler(handler)
