"""Assembly: from a configuration to the objects a run needs (data, model, search space, evaluator, searcher).

Everything here reads the configuration; nothing writes into the run directory except a dense model
trained first (``dense.pt``) when the configuration asks for one, and the measured latency limit
(``latency_calibration.json``) of a latency budget.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.budget import Budget, InfeasibleBudgetError, check_feasible
from autoprune.config import Config, ConfigError, import_object
from autoprune.data import Splits, load_dataset
from autoprune.evaluation import Evaluator
from autoprune.parallel_evaluation import RayEvaluator
from autoprune.pruningnet import PruningNet, train_pruningnet
from autoprune.pruningnet_evaluator import PruningNetEvaluator
from autoprune.refit_evaluator import RefitEvaluator
from autoprune.run_directory import LATENCY_CALIBRATION, PRUNINGNET, write_atomically
from autoprune.search import LedgerSpec, Searcher, create_searcher
from autoprune.search_spaces import SearchSpace

__all__ = ["build", "build_space", "ledger_location", "load_data", "load_model", "requested_budget",
           "search_budget", "trained_pruningnet"]

log = logging.getLogger("autoprune.run")


def load_data(config: Config) -> Splits:
    if ":" in config.data.name:
        splits = import_object(config.data.name, what="data.name")()
        if not isinstance(splits, Splits):
            raise ConfigError(f"data.name: {config.data.name} must return autoprune.data.Splits")
        return splits
    return load_dataset(config.data.name, root=config.data.root, val_size=config.data.val_size,
                        seed=config.data.split_seed)


def requested_budget(config: Config) -> Budget:
    """The budget the user asked for (the search may aim under its latency limit: ``latency.margin``)."""
    return Budget(**config.budget.model_dump())


def build_space(config: Config, model: nn.Module, splits: Splits) -> SearchSpace:
    """The config's search space, priced in latency when its budget needs it (the table is cached on disk)."""
    space = SearchSpace.from_model(model, splits.example_inputs(), ignored_layers=config.pruner.ignored_layers,
                                   bounds=config.pruner.bounds, round_to=config.pruner.round_to)
    if requested_budget(config).needs_latency:
        from autoprune.latency import LatencyTable

        space.attach_latency(LatencyTable.build(model, space, runtime=config.latency.runtime,
                                                batch=config.latency.batch))
    return space


def search_budget(config: Config, model: nn.Module, space: SearchSpace, splits: Splits, run_dir: Path) -> Budget:
    """The budget the search works under: the requested one, its latency limit lowered by ``latency.margin``
    and, with ``latency.calibrate``, corrected by measuring whole models (once per run: a resumed run reads
    ``latency_calibration.json`` back, so it searches under the same limit)."""
    requested = requested_budget(config)
    if not (requested.needs_latency and config.latency.calibrate):
        budget = requested.with_latency_margin(config.latency.margin)
        try:
            check_feasible(space, budget)
        except InfeasibleBudgetError as e:
            if budget == requested:
                raise
            raise InfeasibleBudgetError(f"{e} or lower latency.margin ({config.latency.margin:g}), which lowers "
                                        "the search's latency limit") from None
        return budget
    from autoprune.latency_calibration import LatencyCalibration, calibrate_latency_limit, time_in

    path = run_dir / LATENCY_CALIBRATION
    if path.exists():
        return LatencyCalibration.from_dict(json.loads(path.read_text())).budget(requested)
    log.info("calibrating the search's latency limit on whole models (%s, batch %d)", config.latency.runtime,
             config.latency.batch)
    calibration = calibrate_latency_limit(
        model, space, requested, time_in(config.latency.runtime, splits.tensor_inputs(config.latency.batch)),
        runtime=config.latency.runtime, batch=config.latency.batch, margin=config.latency.margin, seed=config.seed,
        on_round=lambda r: log.info("latency limit %.1f%% predicted: whole models measure %.1f%% of dense",
                                    100 * r["limit"], 100 * r["median"]))
    write_atomically(path, json.dumps(calibration.to_dict(), indent=2))
    return calibration.budget(requested)


def load_model(config: Config, splits: Splits, run_dir: Path, show_progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    from autoprune.models.checkpoints import REFERENCE_DIR, load_checkpoint, save_checkpoint
    from autoprune.models.zoo import create_model
    from autoprune.training import TrainConfig, accuracy, train

    c, size = splits.input_shape[0], splits.input_shape[-1]
    spec = {"model": config.model.name, "in_channels": c, "num_classes": splits.num_classes, "image_size": size}
    if ":" in config.model.name:
        model = import_object(config.model.name, what="model.name")()
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
    budget = requested_budget(config)
    if not budget.needs_latency:  # costs do not depend on weights: refuse an impossible budget before training
        check_feasible(build_space(config, model, splits), budget)
    train(model, splits.train, TrainConfig(epochs=config.model.train_epochs, seed=config.seed,
                                           hflip=splits.input_shape[-1] > 8), show_progress=show_progress)
    save_checkpoint(model, run_dir / "dense.pt", {**spec, "test_accuracy": accuracy(model, splits.test)})
    return model.eval(), spec


def build(config: Config, run_dir: Path, show_progress: bool) -> tuple[Searcher, Splits, dict[str, Any]]:
    torch.set_num_threads(config.threads)
    splits = load_data(config)
    model, spec = load_model(config, splits, run_dir, show_progress)
    space = build_space(config, model, splits)
    budget = search_budget(config, model, space, splits, run_dir)
    ev = config.evaluation
    if ev.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"evaluation.device: {ev.device} asked for, but torch sees no CUDA device; use cpu")
    settings: dict[str, Any] = dict(
        train_data=splits.train, val_data=splits.val, budget=budget, importance=config.pruner.importance,
        val_size=ev.val_size, bn_batches=ev.bn_batches, batch_size=ev.batch_size, finetune_steps=ev.finetune_steps,
        path=ev.path, reward=config.reward, seed=config.seed, device=ev.device)
    if ev.kind == "pruningnet":
        net = trained_pruningnet(config, model, space, splits, run_dir, show_progress)
        evaluator: Evaluator = PruningNetEvaluator(net, model, space, **settings)
    elif ev.kind == "refit":
        evaluator = RefitEvaluator(model, space, **settings)
    else:
        evaluator = Evaluator(model, space, **settings)
    options = dict(config.search.options)
    if config.search.workers > 1 or config.search.address:
        evaluator = RayEvaluator(evaluator, workers=config.search.workers, address=config.search.address)  # type: ignore[assignment]
        # keep every worker busy: that many evaluations per step (evolution scores whole generations)
        if config.search.backend in ("tpe", "gp", "cmaes", "qmc", "nsga2", "random"):
            options.setdefault("batch_size", config.search.workers)
        elif config.search.backend == "ddpg":
            options.setdefault("parallel_episodes", config.search.workers)
    searcher = create_searcher(config.search.backend, evaluator=evaluator, seed=config.seed,
                               ledger=ledger_location(config, run_dir), **options)
    return searcher, splits, spec


def trained_pruningnet(config: Config, model: nn.Module, space: SearchSpace, splits: Splits, run_dir: Path,
                       show_progress: bool) -> PruningNet:
    """The run's PruningNet, trained into ``RUN_DIR/pruningnet.pt`` first (continued if a checkpoint is there)."""
    c = config.pruningnet
    torch.manual_seed(config.seed)
    net = PruningNet(model, space, hidden=c.hidden)
    steps = max(1, math.ceil(c.epochs * len(splits.train) / c.batch_size))
    train_pruningnet(net, splits.train, steps=steps, batch_size=c.batch_size, lr=c.lr, seed=config.seed,
                     distill=c.distill, checkpoint=run_dir / PRUNINGNET, show_progress=show_progress)
    return net


def ledger_location(config: Config, run_dir: Path) -> Path | LedgerSpec:
    """The run directory's SQLite file, or this run's own study in a shared database."""
    if config.search.storage:
        return LedgerSpec(config.search.storage, study_name=f"autoprune/{run_dir.name}")
    return run_dir
