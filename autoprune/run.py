"""A search run in its directory: start, resume, and open a finished one for reporting, fine-tuning or export.

The pieces are elsewhere: :mod:`autoprune.run_directory` owns every file of a run (lock, frozen
configuration, ledger backups, checkpoint, log), :mod:`autoprune.assembly` builds the objects from the
configuration, :mod:`autoprune.finishing` prunes, checks and saves the result. :func:`resume` continues
from the last checkpoint; evaluations already in the ledger are not run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.assembly import (
    build,
    build_space,
    ledger_location,
    load_data,
    load_model,
    requested_budget,
    trained_pruningnet,
)
from autoprune.config import Config, ConfigError, load_config, validate_config
from autoprune.data import Splits
from autoprune.finishing import finish
from autoprune.parallel_evaluation import WorkersLostError
from autoprune.result import Result
from autoprune.run_directory import (
    CHECKPOINT,
    FROZEN,
    PRUNINGNET,
    backup_ledger,
    check_ledger,
    check_unchanged,
    freeze,
    hold,
    load_state,
    logging_into,
    save_state,
)
from autoprune.run_lease import lease
from autoprune.search import LedgerSpec, Searcher, count_recorded
from autoprune.search_spaces import SearchSpace

__all__ = ["RunContents", "RunOutcome", "open_run", "prepare", "pretrain_pruningnet", "resume", "save_checkpoint",
           "start"]

log = logging.getLogger("autoprune.run")
BACKUP_SECONDS = 30.0  # the ledger is backed up at most this often (SQLite's online backup: milliseconds)


def save_checkpoint(searcher: Searcher, run_dir: Path) -> None:
    """Write the searcher's state into ``run_dir`` atomically."""
    save_state(run_dir, searcher.state_dict())


@dataclass
class RunOutcome:
    run_dir: Path
    summary: dict[str, Any]
    already_finished: bool = False


def _existing_run(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """``run_dir`` resolved and its ``result.json`` (empty until the run finishes); a usage error if no run is there."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} holds no run (no config.yaml); start one with 'autoprune search CONFIG'")
    result = run_dir / "result.json"
    return run_dir, json.loads(result.read_text()) if result.exists() else {}


def prepare(config: Config, run_dir: Path, *, show_progress: bool = False,
            guard: Callable[[], None] | None = None) -> tuple[Searcher, Splits, dict[str, Any]]:
    """The run's searcher, restored from ``run_dir``'s checkpoint when there is one.

    ``guard`` (the check of a held lease on a shared ledger) runs before every ledger write.
    """
    if not config.search.storage:
        check_ledger(run_dir)  # before any slow set-up: a damaged ledger is a one-line error naming its backup
    searcher, splits, spec = build(config, run_dir, show_progress)
    searcher.ledger.guard = guard
    state = load_state(run_dir)
    if state is not None:
        searcher.load_state_dict(state)
        log.info("resumed %s with %d evaluations in the ledger", config.search.backend, len(searcher.ledger))
    if not config.search.storage or guard is not None:  # we are its one writer: a RUNNING trial is a dead one's
        searcher.rerun_interrupted()
    return searcher, splits, spec


@contextmanager
def _leased(config: Config, run_dir: Path, command: str) -> Iterator[Callable[[], None] | None]:
    """A ledger in a shared database is leased there too (:mod:`autoprune.run_lease`): one writer on any host."""
    if not config.search.storage:
        yield None  # the run directory's flock is enough
        return
    location = ledger_location(config, run_dir)
    assert isinstance(location, LedgerSpec)
    with lease(config.search.storage, location.study_name, command) as held:
        yield held.check


def _search(config: Config, run_dir: Path, show_progress: bool, command: str) -> RunOutcome:
    with _leased(config, run_dir, command) as guard:
        return _leased_search(config, run_dir, show_progress, guard)


def _leased_search(config: Config, run_dir: Path, show_progress: bool, guard: Callable[[], None] | None) -> RunOutcome:
    log.info("run %s: %s search for %d evaluations under %s, seed %d, %d worker(s)", run_dir, config.search.backend,
             config.search.evaluations, requested_budget(config), config.seed, config.search.workers)
    searcher, splits, spec = prepare(config, run_dir, show_progress=show_progress, guard=guard)
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

        return read_ledger(ledger_location(self.config, self.run_dir))

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
    splits = load_data(config)
    model, spec = load_model(config, splits, run_dir, show_progress=False)
    space = build_space(config, model, splits)
    return RunContents(run_dir, config, splits, model, space, spec, summary)


def _created(run_dir: str | Path) -> Path:
    """``run_dir`` resolved and created; a usage error if it names a file."""
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; name a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def start(config: Config, run_dir: str | Path, *, show_progress: bool = True) -> RunOutcome:
    """Start a search in ``run_dir`` (which must not hold another run)."""
    run_dir = _created(run_dir)
    with hold(run_dir, "autoprune search"):  # a live run there: RunInUseError names it (never suggest a racing resume)
        if (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir} already holds a run; use 'autoprune resume {run_dir}' or another --run-dir")
        config.dump(run_dir / "config.yaml")
        freeze(run_dir, config.model_dump(mode="json"))
        with logging_into(run_dir):
            try:
                return _search(config, run_dir, show_progress, "autoprune search")
            except ValueError:  # bad input (infeasible budget, unusable model, ...): leave no run to resume
                if not config.search.storage and count_recorded(run_dir) == 0:
                    for name in ("config.yaml", FROZEN, CHECKPOINT, "ledger.db"):
                        (run_dir / name).unlink(missing_ok=True)
                raise


def pretrain_pruningnet(config: Config, run_dir: str | Path, *, show_progress: bool = True) -> Path:
    """Train the PruningNet of ``config`` into ``run_dir/pruningnet.pt`` (continuing its checkpoint if there is
    one); a search started in ``run_dir`` with ``evaluation.kind: pruningnet`` uses it."""
    run_dir = _created(run_dir)
    with hold(run_dir, "autoprune pruningnet train"), logging_into(run_dir):
        torch.set_num_threads(config.threads)
        splits = load_data(config)
        model, _ = load_model(config, splits, run_dir, show_progress)
        trained_pruningnet(config, model, build_space(config, model, splits), splits, run_dir, show_progress)
        log.info("PruningNet trained for %g epoch(s) into %s", config.pruningnet.epochs, run_dir / PRUNINGNET)
        return run_dir / PRUNINGNET


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
            config = validate_config({**config.model_dump(), "search": {**config.search.model_dump(), **search}})
            config.dump(run_dir / "config.yaml")
            freeze(run_dir, config.model_dump(mode="json"))
        if summary.get("done"):
            return RunOutcome(run_dir, summary, already_finished=True)
        with logging_into(run_dir):
            return _search(config, run_dir, show_progress, "autoprune resume")
