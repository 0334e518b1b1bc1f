"""Trained checkpoints of zoo models: a state_dict plus the facts needed to rebuild and judge it.

A checkpoint is ``{"state_dict": ..., "meta": {...}}`` saved with ``torch.save``; it loads with
``weights_only=True`` because it holds only tensors and plain data, never pickled modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.models.zoo import create_model

__all__ = ["REFERENCE_DIR", "load_checkpoint", "reference_checkpoint", "save_checkpoint"]

REFERENCE_DIR = Path(__file__).parent / "checkpoints"


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Save ``model``'s weights and ``meta``.

    ``meta`` must include ``model``, ``in_channels``, ``num_classes`` and ``image_size``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write never leaves a truncated checkpoint
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the zoo model a checkpoint was saved from and load its weights (eval mode)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with 'autoprune train'")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = create_model(meta["model"], in_channels=meta["in_channels"], num_classes=meta["num_classes"],
                         image_size=meta["image_size"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), meta


def reference_checkpoint(model: str = "resnet20", dataset: str = "fashion_mnist") -> Path:
    """Path of a committed reference checkpoint, e.g. the ResNet-20 trained on Fashion-MNIST."""
    path = REFERENCE_DIR / f"{model}_{dataset}.pt"
    if not path.exists():
        have = sorted(p.stem for p in REFERENCE_DIR.glob("*.pt"))
        raise FileNotFoundError(f"no reference checkpoint for {model} on {dataset}; available: {have or 'none'}; "
                                f"train one with 'autoprune train --model {model} --dataset {dataset}'")
    return path
