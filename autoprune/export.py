"""Export a run's final model (fine-tuned if ``autoprune finetune`` ran) for deployment.

``torch``: a ``torch.export`` program (``model.pt2``) that loads with plain PyTorch
(``torch.export.load(path).module()``), no autoprune needed. ``onnx``: ``model.onnx`` for
onnxruntime and friends. Each export is checked against the PyTorch model's outputs and its
latency is measured in the runtime that will run it; ``export.json`` records both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from autoprune.latency import measure
from autoprune.model_io import export_onnx
from autoprune.run import open_run
from autoprune.run_directory import holding

__all__ = ["EXPORT_FORMATS", "export_run"]

EXPORT_FORMATS = ("torch", "onnx")


def _export_torch(model: torch.nn.Module, x: torch.Tensor, path: Path,
                  atol: float = 1e-4) -> tuple[float, torch.nn.Module]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        err = float((loaded(x) - model(x)).abs().max())
    if err > atol:
        raise RuntimeError(f"exported program differs from the model by {err:.2e} (> {atol})")
    return err, loaded


@holding("autoprune export")
def export_run(run_dir: str | Path, fmt: str = "onnx", *, repeats: int = 15) -> dict[str, Any]:
    """Export the run's final model as ``fmt`` into ``run_dir/export/``; returns what ``export.json`` records."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    run = open_run(run_dir)
    model, source = run.final()
    x = run.splits.tensor_inputs(8)
    out_dir = run.run_dir / "export"
    out_dir.mkdir(exist_ok=True)
    if fmt == "torch":
        path = out_dir / "model.pt2"
        err, loaded = _export_torch(model, x, path)
        runner, runtime = _torch_runner(loaded, x[:1]), "torch"
    else:
        path = out_dir / "model.onnx"
        err = export_onnx(model, x, path)
        runner, runtime = _onnx_runner(path, x[:1]), "onnxruntime"
    entry = {"path": str(path.relative_to(run.run_dir)), "source": source, "max_abs_error": err,
             "runtime": runtime, "latency_ms": measure({"m": runner}, repeats=repeats)["m"] * 1e3, "batch": 1}
    records = run.read("export.json") or {}
    records[fmt] = entry
    (run.run_dir / "export.json").write_text(json.dumps(records, indent=2))
    return entry


def _torch_runner(program_module: torch.nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """Time the loaded program (an exported module has no train/eval switch: it is traced in eval mode)."""
    def run():  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            return program_module(x)
    return run


def _onnx_runner(path: Path, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """Time the exported file itself (one thread, as deployed), not a re-export of the model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)
