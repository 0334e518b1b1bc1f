"""Pruner benchmark: what each step of an evaluation costs, exact path vs mask path.

For ResNet-20, ResNet-56, VGG-16 and MobileNetV2 on Fashion-MNIST-shaped inputs (1x28x28), per
random policy near 50% FLOPs: the mask path (apply + restore), the exact path by plan replay and by
re-tracing the dependency graph, the analytic cost, the budget projection (uniform bisection), and a
full evaluation both ways (adaptive BN on 512 TRAIN images + 2,000 validation images). "Overhead" is
everything in an evaluation except the forward passes (pruning/masking, costs, bookkeeping).

    python benchmarks/pruner.py [--policies 5] [--out benchmarks/results]

Runs on 1 torch thread. Results: benchmarks/results/pruner.json and pruner.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.budget import Budget, uniform_policy
from autoprune.data import load_dataset
from autoprune.evaluation import Evaluator
from autoprune.models.checkpoints import load_checkpoint, reference_checkpoint
from autoprune.models.zoo import create_model
from autoprune.search_spaces import SearchSpace

MODELS = ("resnet20", "resnet56", "vgg16", "mobilenetv2")


def timed(fn, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def near_half(space: SearchSpace, rng: np.random.Generator) -> dict[str, float]:
    """A random policy scaled so it keeps about half the FLOPs (the regime searches explore)."""
    raw = space.sample(rng)
    base = uniform_policy(space, Budget(flops=0.5))
    mean = np.mean(list(raw.values()))
    return {k: float(np.clip(v / mean * base[k], space.group(k).low, space.group(k).high)) for k, v in raw.items()}


def bench_model(name: str, data, n_policies: int) -> dict:
    if name == "resnet20":
        model, _ = load_checkpoint(reference_checkpoint("resnet20", "fashion_mnist"))
    else:
        torch.manual_seed(0)
        model = create_model(name, in_channels=1, image_size=28).eval()
    t = time.perf_counter()
    space = SearchSpace.from_model(model, data.example_inputs())
    space_s = time.perf_counter() - t
    evaluators = {path: Evaluator(model, space, train_data=data.train, val_data=data.val, budget=Budget(flops=0.5),
                                  val_size=2000, bn_batches=8, batch_size=64, path=path) for path in ("exact", "mask")}
    pruner = evaluators["exact"].pruner
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n_policies):
        policy = space.validate(near_half(space, rng))

        def mask_once(policy=policy):
            with pruner.masked(policy):
                pass

        row = {"flops_ratio": space.costs(policy).macs / space.dense_costs.macs,
               "mask_s": timed(mask_once, 3), "exact_replay_s": timed(lambda p=policy: pruner.prune(p), 3),
               "exact_retrace_s": timed(lambda p=policy: pruner.prune_retraced(p)),
               "analytic_cost_s": timed(lambda p=policy: space.costs(p), 200),
               "projection_s": timed(lambda: uniform_policy(space, Budget(flops=0.5)), 3)}
        for path, ev in evaluators.items():
            r = ev(policy)
            forward = r.seconds["recalibrate"] + r.seconds["validate"]
            row[f"eval_{path}_s"] = r.seconds["total"]
            row[f"eval_{path}_overhead"] = (r.seconds["total"] - forward) / r.seconds["total"]
        rows.append(row)
    auto = Evaluator(model, space, train_data=data.train, val_data=data.val, val_size=2000, bn_batches=8, path="auto")
    auto(space.validate(near_half(space, rng)))
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"model": name, "groups": len(space), "dense_macs": space.dense_costs.macs, "space_build_s": space_s,
            "auto_choice": auto.path, "auto_estimates": auto.path_timing, "median": summary, "policies": rows}


def to_markdown(results: list[dict], command: str) -> str:
    lines = [
        "# Pruner benchmark", "", f"Command: `{command}`", "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread; inputs 1x28x28 (Fashion-MNIST). "
        "Medians over random policies near 50% FLOPs. "
        "An evaluation = adaptive BN on 512 TRAIN images + accuracy on 2,000 validation images. "
        "Overhead = everything but the forward passes (target <= 10%); analytic cost target <= 5 ms.", "",
        "| model | groups | mask apply+restore | exact: replay plan | exact: re-trace graph | analytic cost "
        "| projection (bisection) | eval exact | overhead exact | eval mask | overhead mask | auto picks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["median"]
        lines.append(
            f"| {r['model']} | {r['groups']} | {m['mask_s'] * 1e3:.1f} ms | {m['exact_replay_s'] * 1e3:.1f} ms "
            f"| {m['exact_retrace_s'] * 1e3:.1f} ms | {m['analytic_cost_s'] * 1e3:.3f} ms "
            f"| {m['projection_s'] * 1e3:.1f} ms | {m['eval_exact_s']:.2f} s | {m['eval_exact_overhead']:.1%} "
            f"| {m['eval_mask_s']:.2f} s | {m['eval_mask_overhead']:.1%} | {r['auto_choice']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion_mnist", val_size=5000, seed=0)
    results = []
    for name in args.models:
        results.append(bench_model(name, data, args.policies))
        m = results[-1]["median"]
        print(f"{name}: eval exact {m['eval_exact_s']:.2f}s (overhead {m['eval_exact_overhead']:.1%}), "
              f"mask {m['eval_mask_s']:.2f}s, cost {m['analytic_cost_s'] * 1e3:.3f} ms", flush=True)
    command = "python benchmarks/pruner.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruner.json").write_text(json.dumps({"command": command, "results": results}, indent=2))
    (out / "pruner.md").write_text(to_markdown(results, command.strip()))
    print((out / "pruner.md").read_text())


if __name__ == "__main__":
    main()
