"""Many searches at once as a Ray Tune experiment: backends x seeds x budgets.

Each Tune trial is one search in its own run directory (``EXPERIMENT/runs/TRIAL``): its ``step``
is ``searcher.step()``, its checkpoint the searcher's ``state_dict()`` (the evaluations live in the
run directory's ledger), and a finished trial writes the same ``result.json`` and ``pruned.pt``
as ``autoprune search``, so ``autoprune report`` works on it. :func:`resume_experiment` restores
an interrupted experiment with ``Tuner.restore``: finished trials stay finished, the others
continue from their last checkpoint and never re-run a recorded evaluation.

Everything Tune pickles is defined at module level here, so a restored experiment finds it.
"""

from __future__ import annotations

import itertools
import pickle
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from autoprune import run
from autoprune.config import Config, validate_config
from autoprune.finishing import finish
from autoprune.progress import stderr_into

__all__ = ["SearchTrainable", "experiment_grid", "resume_experiment", "run_experiment"]


class SearchTrainable(tune.Trainable):
    """One autoprune search as a Tune trial; ``config`` = ``{"autoprune": Config as a dict, "runs": folder}``."""

    def setup(self, config: dict[str, Any]) -> None:
        self.cfg = Config.model_validate(config["autoprune"])
        self.run_dir = Path(config["runs"]) / self.trial_name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.dump(self.run_dir / "config.yaml")
        self.searcher, self.splits, self.spec = run.prepare(self.cfg, self.run_dir)
        self.seconds = 0.0

    def step(self) -> dict[str, Any]:
        start = time.perf_counter()
        target = self.cfg.search.evaluations
        self.searcher.step(target - len(self.searcher.ledger))
        self.seconds += time.perf_counter() - start
        done = len(self.searcher.ledger) >= target or self.searcher.done
        best = self.searcher.best
        metrics = {"evaluations": len(self.searcher.ledger), "best_reward": best.reward if best else None,
                   "best_accuracy": best.accuracy if best else None, "done": done, "run_dir": str(self.run_dir)}
        if done:
            summary = finish(self.searcher, self.cfg, self.splits, self.spec, self.run_dir, self.seconds)
            metrics.update(test_accuracy=summary["pruned"]["test_accuracy"], meets_budget=summary["meets_budget"])
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:  # type: ignore[override]
        run.save_checkpoint(self.searcher, self.run_dir)  # also in the run directory, for `autoprune resume`
        return {"state": pickle.dumps(self.searcher.state_dict()), "seconds": self.seconds}

    def load_checkpoint(self, checkpoint: dict[str, Any] | None) -> None:
        assert checkpoint is not None  # Tune passes back what save_checkpoint returned
        self.searcher.load_state_dict(pickle.loads(checkpoint["state"]))
        self.seconds = checkpoint["seconds"]


def experiment_grid(base: Config, *, backends: Sequence[str] = (), seeds: Sequence[int] = (),
                    budgets: Sequence[Mapping[str, float]] = (),
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of backend, seed and budget applied to ``base``, as validated config dicts.

    ``options`` gives each backend its own options; a backend not named there keeps ``base``'s
    options if it is ``base``'s backend, else its defaults.
    """
    combos = itertools.product(backends or [base.search.backend], seeds or [base.seed],
                               budgets or [base.budget.model_dump(exclude_none=True)])
    configs = []
    for backend, seed, budget in combos:
        data = base.model_dump()
        own = (options or {}).get(backend, base.search.options if backend == base.search.backend else {})
        data["search"].update(backend=backend, options=dict(own))
        data["seed"], data["budget"] = seed, dict(budget)
        configs.append(validate_config(data).model_dump())
    return configs


def _trial_name(trial: Any) -> str:  # short folder names: Tune's defaults overflow path limits
    c = trial.config["autoprune"]
    budget = "-".join(f"{k}{v:g}" for k, v in c["budget"].items() if v is not None)
    return f"{c['search']['backend']}-s{c['seed']}-{budget}-{trial.trial_id}"


def run_experiment(configs: Sequence[Mapping[str, Any]], *, name: str, results_dir: str | Path = "runs/experiments",
                   cpus_per_trial: float = 1.0, max_concurrent: int = 0) -> tune.ResultGrid:
    """Run every config as a Tune trial (checkpointed after each step); results under ``results_dir/name``.

    Ray's and Tune's notices and warnings go to ``results_dir/name/log.txt``, not the terminal.
    """
    root = Path(results_dir).resolve()
    space = {"autoprune": tune.grid_search([dict(c) for c in configs]), "runs": str(root / name / "runs")}
    tuner = tune.Tuner(
        tune.with_resources(SearchTrainable, {"cpu": cpus_per_trial}), param_space=space,
        tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                    max_concurrent_trials=max_concurrent or None),
        run_config=tune.RunConfig(name=name, storage_path=str(root), stop={"done": True}, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=2)))
    return _fit(tuner, root / name)


def resume_experiment(path: str | Path) -> tune.ResultGrid:
    """Continue an interrupted experiment (``results_dir/name``) where each trial left off."""
    tuner = tune.Tuner.restore(str(Path(path).resolve()), trainable=tune.with_resources(SearchTrainable, {"cpu": 1}),
                               resume_unfinished=True, resume_errored=True)
    return _fit(tuner, Path(path).resolve())


def _fit(tuner: tune.Tuner, folder: Path) -> tune.ResultGrid:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "log.txt").open("ab") as log, stderr_into(log):
        return tuner.fit()
