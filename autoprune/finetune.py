"""Fine-tune a run's pruned model (optionally distilling from the dense one) and record the gain.

Writes ``finetuned.pt`` (portable, like ``pruned.pt``) and ``finetune.json`` (test accuracy
before and after) into the run directory; the report and ``autoprune export`` pick them up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from autoprune.evaluation import recalibrate_batchnorm
from autoprune.forward import batch_size as count
from autoprune.forward import examples, take
from autoprune.model_io import read_plan, save_pruned
from autoprune.run import open_run
from autoprune.run_directory import holding, write_atomically
from autoprune.training import TrainConfig, accuracy, train

__all__ = ["finetune_run"]


@holding("autoprune finetune")
def finetune_run(run_dir: str | Path, *, epochs: float = 1.0, lr: float = 0.05, distill: bool = False,
                 show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune the best pruned model of a finished run for ``epochs`` and save it next to it.

    Args:
        run_dir: a finished run (``autoprune search`` wrote it).
        epochs: training epochs over the TRAIN split (fractions allowed).
        lr: peak learning rate of the one-cycle schedule.
        distill: mix the loss with the dense model's softened outputs (knowledge distillation).
    """
    if epochs <= 0 or lr <= 0:
        raise ValueError(f"epochs and lr must be > 0, got epochs={epochs}, lr={lr}")
    run = open_run(run_dir)
    torch.manual_seed(run.config.seed)
    model = run.pruned()
    before = accuracy(model, run.splits.test)
    start = time.perf_counter()
    train(model, run.splits.train, TrainConfig(epochs=epochs, max_lr=lr, seed=run.config.seed,
                                               hflip=run.splits.input_shape[-1] > 8),
          teacher=run.dense if distill else None, show_progress=show_progress)
    seconds = time.perf_counter() - start
    # the last training steps moved the BN statistics with a high learning rate: re-estimate them
    x = examples(run.splits.train)[0]
    order = torch.randperm(count(x), generator=torch.Generator().manual_seed(0))
    recalibrate_batchnorm(model, take(x, order[:2048]), 128)
    # Every fine-tune is kept (finetuned-N.pt); finetuned.pt, what the run ships, is the best on VALIDATION
    # images (choosing on test would leak it), so a worse later fine-tune never replaces a better one.
    history = finetune_history(run.run_dir)
    name = f"finetuned-{len(history) + 1}.pt"
    plan = read_plan(run.run_dir / "pruned.pt")
    save_pruned(run.run_dir / name, model, plan, run.spec)
    record = {"file": name, "epochs": epochs, "lr": lr, "distill": distill, "seconds": seconds,
              "test_accuracy_before": before, "test_accuracy": accuracy(model, run.splits.test),
              "val_accuracy": accuracy(model, run.splits.val),
              "dense_test_accuracy": run.summary["dense"]["test_accuracy"]}
    history.append(record)
    best = max(history, key=lambda r: r["val_accuracy"])
    record["shipped"] = best["file"] == name
    if record["shipped"]:
        save_pruned(run.run_dir / "finetuned.pt", model, plan, run.spec)
    write_atomically(run.run_dir / "finetune.json", json.dumps({"shipped": best["file"], "runs": history}, indent=2))
    return record


def finetune_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every fine-tune of the run so far, oldest first (``finetune.json``; one record in runs before numbering)."""
    path = Path(run_dir) / "finetune.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if "runs" not in data:  # written before fine-tunes were numbered: the one there is finetuned.pt
        return [{**data, "file": "finetuned.pt"}]
    return list(data["runs"])
