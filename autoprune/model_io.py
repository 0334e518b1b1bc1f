"""Model I/O: portable save / load of pruned models and ONNX export.

A pruned model is saved as how to build the dense model + the pruning plan + the state_dict, so it
loads with ``torch.load(weights_only=True)`` (nothing pickled but tensors and plain data) and
rebuilds by replaying the plan on a fresh dense model.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.groups import Plan
from autoprune.models.zoo import create_model
from autoprune.objects import load_object
from autoprune.surgery import apply_plan

__all__ = ["export_onnx", "load_pruned", "read_plan", "save_pruned"]


def save_pruned(path: str | os.PathLike[str], model: nn.Module, plan: Plan, model_spec: Mapping[str, Any]) -> Path:
    """Save a pruned model as ``model_spec`` (how to build the dense model) + plan + state_dict.

    The file loads with ``torch.load(weights_only=True)``: nothing pickled but tensors and plain data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": "autoprune.pruned/1", "model_spec": json.dumps(dict(model_spec)),
            "plan": [[name, bool(out), [int(i) for i in idxs]] for (name, out), idxs in plan.items()],
            "state_dict": model.state_dict()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def _read_pruned(path: str | os.PathLike[str]) -> dict[str, Any]:
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "autoprune.pruned/1":
        raise ValueError(f"{path} is not an autoprune pruned-model file")
    return blob


def _plan_of(blob: Mapping[str, Any]) -> Plan:
    return {(name, out): idxs for name, out, idxs in blob["plan"]}


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """The pruning plan stored in a file written by :func:`save_pruned`."""
    return _plan_of(_read_pruned(path))


def load_pruned(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_pruned`: dense model from its spec, replay the plan, load weights."""
    blob = _read_pruned(path)
    spec = json.loads(blob["model_spec"])
    if ":" in spec["model"]:  # a user's "package.module:factory"
        model = load_object(spec["model"], what="model factory")()
    else:
        model = create_model(spec["model"], in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                             image_size=spec["image_size"])
    apply_plan(model, _plan_of(blob))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), spec


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | os.PathLike[str], *,
                atol: float = 1e-4) -> float:
    """Export ``model`` to ONNX and check onnxruntime's outputs against torch's.

    Returns:
        The largest absolute difference between the two outputs.

    Raises:
        RuntimeError: the outputs differ by more than ``atol``.
    """
    import onnxruntime as ort  # heavy: loaded only for an export

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_inputs,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=True,
                          verbose=False)
    quiet.setLevel(level)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example_inputs).numpy()
    got = session.run(None, {"input": example_inputs.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise RuntimeError(f"ONNX outputs differ from torch by {err:.2e} > {atol:.0e} ({path})")
    return err
