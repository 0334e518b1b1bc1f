"""Which architectures autoprune can search, end to end, with exact costs; and plain Torch-Pruning on the same.

For every model of the zoo and of the gallery (``autoprune.models.gallery``: hand-written families and
Hugging Face ``transformers`` models built from configs, random weights), and timm models where timm
imports, it measures:

* discovery: ``SearchSpace.from_model`` wall time (group discovery + cost model + per-group probe),
  groups by kind, the groups left whole and why;
* the share of the dense model's MACs in layers whose *outputs* a group prunes (what a search can act on;
  a layer that only loses inputs, such as the classifier, does not count), and the share in layers with
  either dimension pruned;
* exact costs: analytic == counted FLOPs and parameters on 5 random policies, physically pruned;
* the pruned model runs and gives outputs of the dense shape;
* a 5-evaluation random search at 70% FLOPs runs (random inputs and labels: it checks the machinery, not accuracy);
* plain Torch-Pruning 1.6.1 (``MetaPruner``, magnitude importance, 30% of channels, its own defaults with
  the output layer ignored): does the pruned model run with the right output shape.

Usage: ``python benchmarks/coverage.py`` (about 2 minutes on one core; writes
``benchmarks/results/coverage.{json,md}``).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autoprune.budget import Budget
from autoprune.costs import count_costs
from autoprune.evaluation import Evaluator
from autoprune.forward import Inputs, call, dataset, select_output
from autoprune.models import MODEL_NAMES
from autoprune.models.gallery import ENTRIES, build
from autoprune.models.zoo import create_model, default_ignored_layers
from autoprune.pruning import Pruner
from autoprune.search import create_searcher
from autoprune.search_spaces import SearchSpace

RESULTS = Path(__file__).parent / "results"
TP_TIMEOUT = 60  # seconds plain Torch-Pruning gets per model (it hangs on Llama-style attention)
TIMM_MODELS = ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "mobilevit_xxs")


def _zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return create_model(name, in_channels=1, image_size=28).eval(), torch.randn(2, 1, 28, 28)


def _random_data(x: Inputs, classes: int, n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    if isinstance(x, dict):
        ids = x["input_ids"]
        inputs: Inputs = {"input_ids": torch.randint(1, int(ids.max()) + 1, (n, ids.shape[1]), generator=g)}
    elif not x.is_floating_point():  # token ids
        inputs = torch.randint(1, int(x.max()) + 1, (n, *x.shape[1:]), generator=g)
    else:
        inputs = torch.randn(n, *x.shape[1:], generator=g)
    return dataset(inputs, torch.randint(0, classes, (n,), generator=g))


def _last_position(output: Any) -> torch.Tensor:
    return select_output(output)[:, -1]


def _plain_torch_pruning(model: nn.Module, x: Inputs) -> dict[str, Any]:
    """What a user gets from Torch-Pruning alone: its MetaPruner at 30% with the output layer ignored."""
    import torch_pruning as tp

    dense_shape = tuple(call(model, x).shape)
    start = time.perf_counter()

    def stop(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {TP_TIMEOUT} s (stopped)")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(TP_TIMEOUT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                          pruning_ratio=0.3, ignored_layers=default_ignored_layers(model),
                                          output_transform=select_output)
            pruner.step()
            with torch.no_grad():
                shape = tuple(call(model, x).shape)
        ok = shape == dense_shape
        return {"ok": ok, "seconds": time.perf_counter() - start,
                "error": None if ok else f"output shape {shape} instead of {dense_shape}"}
    except Exception as e:
        return {"ok": False, "seconds": time.perf_counter() - start,
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def measure(name: str, family: str, model: nn.Module, x: Inputs, tp_model: nn.Module) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "family": family}
    dense_shape = tuple(call(model, x).shape)
    start = time.perf_counter()
    try:
        space = SearchSpace.from_model(model, x)
    except Exception as e:
        row.update(searchable=False, discovery_s=time.perf_counter() - start,
                   error=f"{type(e).__name__}: {str(e)[:300]}")
        row["torch_pruning"] = _plain_torch_pruning(tp_model, x)
        return row
    row["discovery_s"] = time.perf_counter() - start
    kinds: dict[str, int] = {}
    for g in space.groups:
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
    cm = space.cost_model
    dense = space.dense_costs
    per_layer = cm.layer_costs(cm.units)
    touched = sum(c.macs for c in per_layer.values())  # layers with a pruned input or output dimension
    outputs = sum(per_layer[layer.name].macs for layer in cm.layers if layer.out.terms)  # pruned outputs
    row.update(groups=kinds, left_whole=dict(space.unprunable), prunable_macs_share=outputs / dense.macs,
               touched_macs_share=touched / dense.macs,
               dense_macs=dense.macs, dense_params=dense.params, maskable=all(g.maskable for g in space.groups))
    pruner = Pruner(model, space, example_inputs=x)
    rng = np.random.default_rng(0)
    exact, runs = 0, 0
    for _ in range(5):
        policy = space.sample(rng)
        pruned = pruner.prune(policy)
        with torch.no_grad():
            runs += tuple(call(pruned, x).shape) == dense_shape
        exact += count_costs(pruned, x) == space.costs(policy)
    row.update(exact_costs=f"{exact}/5", runs_pruned=f"{runs}/5")
    try:
        classes = dense_shape[-1]
        # a causal LM's logits are per position: score it on the next token after the prompt
        select = _last_position if len(dense_shape) == 3 and isinstance(x, torch.Tensor) and not x.is_floating_point() \
            else select_output
        evaluator = Evaluator(model, space, train_data=_random_data(x, classes), val_data=_random_data(x, classes),
                              budget=Budget(flops=0.7), val_size=32, bn_batches=1, batch_size=16, select=select)
        best = create_searcher("random", evaluator=evaluator, seed=0).run(5, show_progress=False)
        row["search"] = "ok" if best is not None else "no result"
    except Exception as e:
        row["search"] = f"{type(e).__name__}: {str(e)[:200]}"
        traceback.print_exc()
    row["searchable"] = exact == 5 and runs == 5 and row["search"] == "ok"
    row["torch_pruning"] = _plain_torch_pruning(tp_model, x)
    return row


def _timm_rows() -> list[dict[str, Any]]:
    try:
        import timm
    except Exception as e:  # timm imports torchvision, which has no CPU build for the pinned torch here
        reason = f"timm does not import here ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        print(f"skipping timm models: {reason}")
        return [{"model": f"timm:{n}", "family": "timm", "skipped": reason} for n in TIMM_MODELS]
    rows = []
    for n in TIMM_MODELS:
        model = timm.create_model(n, pretrained=False, num_classes=10, img_size=64).eval()
        x = torch.randn(2, 3, 64, 64)
        tp_model = timm.create_model(n, pretrained=False, num_classes=10, img_size=64).eval()
        tp_model.load_state_dict(model.state_dict())
        rows.append(measure(f"timm:{n}", "timm", model, x, tp_model))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    parser.add_argument("--out", default=str(RESULTS / "coverage"), help="output path without extension")
    parser.add_argument("--markdown-only", action="store_true", help="rebuild the .md from the .json and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.markdown_only:
        blob = json.loads(out.with_suffix(".json").read_text())
        blob["summary"]["nothing_left_whole"] = _nothing_left_whole(blob["rows"])
        out.with_suffix(".json").write_text(json.dumps(blob, indent=2, default=str))
        out.with_suffix(".md").write_text(_markdown(blob["summary"], blob["rows"]))
        return 0
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows: list[dict[str, Any]] = []
    candidates = [(n, "zoo", lambda n=n: _zoo(n)) for n in MODEL_NAMES]
    candidates += [(e.name, e.family, lambda e=e: build(e.name)) for e in ENTRIES if e.available()]
    for name, family, make in candidates:
        if args.only and name not in args.only:
            continue
        model, x = make()
        tp_model, _ = make()
        rows.append(measure(name, family, model, x, tp_model))
        r = rows[-1]
        print(f"{name:18s} searchable={r.get('searchable')} groups={r.get('groups')} "
              f"share={r.get('prunable_macs_share', 0):.2f} exact={r.get('exact_costs')} "
              f"discovery={r['discovery_s']:.1f}s TP={'ok' if r['torch_pruning']['ok'] else 'FAIL'}", flush=True)
    if not args.only:
        rows += _timm_rows()
    missing = [e.name for e in ENTRIES if not e.available()]
    measured = [r for r in rows if "skipped" not in r]
    searchable = [r for r in measured if r.get("searchable")]
    transformers = [r for r in measured if r["model"].startswith("hf_") and any(
        k in r["model"] for k in ("vit", "deit", "swin", "bert", "gpt2", "llama", "qwen", "mistral"))]
    summary = {
        "models": len(measured), "searchable": len(searchable),
        "nothing_left_whole": _nothing_left_whole(measured),
        "searchable_share": len(searchable) / max(1, len(measured)),
        "torch_pruning_ok": sum(r["torch_pruning"]["ok"] for r in measured),
        "transformers_by_heads_and_mlp": sum(1 for r in transformers if r.get("searchable")
                                             and r.get("groups", {}).get("heads", 0) > 0
                                             and r.get("groups", {}).get("channels", 0) > 0),
        "transformers": len(transformers),
        "median_prunable_macs_share": statistics.median(r.get("prunable_macs_share", 0.0) for r in measured),
        "max_discovery_s": max(r["discovery_s"] for r in measured),
        "not_installed": missing, "command": "python benchmarks/coverage.py",
        "torch": torch.__version__, "python": sys.version.split()[0],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2, default=str))
    out.with_suffix(".md").write_text(_markdown(summary, rows))
    print(json.dumps(summary, indent=2))
    return 0


def _nothing_left_whole(rows: list[dict[str, Any]]) -> int:
    """Searchable models that prune every group they have."""
    return sum(1 for r in rows if r.get("searchable") and not r.get("left_whole"))


def _markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Architecture coverage",
        "",
        f"Command: `{summary['command']}` (1 torch thread; torch {summary['torch']}, Python {summary['python']}).",
        "Random weights; a 5-evaluation random search on random data checks the machinery, not accuracy.",
        "",
        f"- **searchable end to end with exact costs: {summary['searchable']} of {summary['models']}** "
        f"({summary['searchable_share']:.0%}); plain Torch-Pruning prunes {summary['torch_pruning_ok']} of "
        f"{summary['models']} into a model that runs with the right output shape",
        f"- with no group left whole: {summary['nothing_left_whole']} of {summary['models']} (the others prune "
        "every group but those listed in the last column, with the reason)",
        f"- transformers searchable by heads and MLP channels: {summary['transformers_by_heads_and_mlp']} of "
        f"{summary['transformers']}",
        f"- median share of MACs in layers whose outputs a group prunes: {summary['median_prunable_macs_share']:.0%}",
        f"- slowest discovery: {summary['max_discovery_s']:.1f} s",
        "",
        "| model | family | searchable | groups (kind: n) | MACs with prunable outputs (either side) | exact costs "
        "| pruned runs | discovery s | plain Torch-Pruning | groups left whole (why) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['family']} | skipped | | | | | | | {r['skipped']} |")
            continue
        groups = ", ".join(f"{k}: {v}" for k, v in r.get("groups", {}).items())
        whole = "; ".join(f"`{k}`: {v}" for k, v in r.get("left_whole", {}).items()) or r.get("error", "")
        tp = "ok" if r["torch_pruning"]["ok"] else f"fails: {r['torch_pruning']['error']}"
        share = (f"{r['prunable_macs_share']:.0%} ({r['touched_macs_share']:.0%})" if "prunable_macs_share" in r
                 else "")
        lines.append(f"| {r['model']} | {r['family']} | {'yes' if r.get('searchable') else 'no'} | {groups} | {share} "
                     f"| {r.get('exact_costs', '')} | {r.get('runs_pruned', '')} | {r['discovery_s']:.2f} | {tp} "
                     f"| {whole.replace('|', '/')} |")
    lines += ["", "timm: measured in a separate virtual environment, `pip install -c constraints.txt timm` "
              "installs timm 1.0.31 with torchvision 0.28.0 beside torch 2.13.0+cpu, and `import timm` fails with "
              "`RuntimeError: operator torchvision::nms does not exist` (torchvision's build does not match the "
              "CPU torch). The `timm_style_vit` row stands in: timm's `Attention` (fused qkv, stored "
              "`num_heads`), class token, position embeddings and layer scale."]
    if summary["not_installed"]:
        lines += ["", f"Not run (transformers not installed): {', '.join(summary['not_installed'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
