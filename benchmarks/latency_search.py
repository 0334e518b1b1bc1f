"""Latency-constrained search: does the returned model meet the latency target when *measured*?

Runs ``configs/mobilenetv2_latency.yaml`` (MobileNetV2 on Fashion-MNIST, onnxruntime, batch 1,
at most 60% of the dense model's latency; the search prices policies with the per-layer latency
table), then measures the dense and the returned pruned model in onnxruntime (batch 1, one
thread, interleaved, several rounds) and reports the measured ratio against the target.

    python benchmarks/latency_search.py --evaluations 60 --train-epochs 0.3 --val-size 500

Writes ``benchmarks/results/latency_search.{json,md}``; the run directory (with its report) is
``runs/latency_search``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from autoprune import run
from autoprune.config import load_config
from autoprune.latency import make_runner, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mobilenetv2_latency.yaml")
    parser.add_argument("--evaluations", type=int, default=60)
    parser.add_argument("--train-epochs", type=float, default=0.3, help="training of the dense model")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--bn-batches", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds of 30 interleaved repeats")
    parser.add_argument("--run-dir", default="runs/latency_search")
    parser.add_argument("--measure-only", action="store_true", help="re-measure the finished run in --run-dir")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    command = ("python benchmarks/latency_search.py " + " ".join(sys.argv[1:])).strip()
    config = load_config(args.config, {"search.evaluations": str(args.evaluations),
                                       "model.train_epochs": str(args.train_epochs),
                                       "evaluation.val_size": str(args.val_size),
                                       "evaluation.bn_batches": str(args.bn_batches)})
    run_dir = Path(args.run_dir)
    if args.measure_only:  # the finished run already in --run-dir: measure it again
        outcome = run.resume(run_dir, show_progress=False)
        wall = outcome.summary["search_seconds"]
    else:
        if run_dir.exists():  # a fresh search, but keep a dense model trained by an earlier attempt
            for item in run_dir.iterdir():
                if item.name != "dense.pt":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        start = time.perf_counter()
        outcome = run.start(config, run_dir, show_progress=False)
        wall = time.perf_counter() - start
    contents = run.open_run(args.run_dir)
    x = contents.splits.example_inputs(1)
    runtime, target = config.latency.runtime, config.budget.latency
    runners = {"dense": make_runner(contents.dense, x, runtime), "pruned": make_runner(contents.pruned(), x, runtime)}
    rounds = [measure(runners, repeats=30) for _ in range(args.rounds)]
    ratios = [r["pruned"] / r["dense"] for r in rounds]
    s = outcome.summary
    result = {
        "command": command, "model": config.model.name, "runtime": runtime, "batch": config.latency.batch,
        "target_ratio": target, "evaluations": s["evaluations"], "search_wall_s": wall,
        "predicted_ratio": s["best"]["latency"] / contents.space.dense_costs.latency,
        "measured_ratio_median": statistics.median(ratios), "measured_ratio_rounds": ratios,
        "dense_ms": statistics.median(r["dense"] for r in rounds) * 1e3,
        "pruned_ms": statistics.median(r["pruned"] for r in rounds) * 1e3,
        "flops_ratio": s["pruned"]["flops"] / s["dense"]["flops"],
        "params_ratio": s["pruned"]["params"] / s["dense"]["params"],
        "dense_test_accuracy": s["dense"]["test_accuracy"], "pruned_test_accuracy": s["pruned"]["test_accuracy"],
        "candidates_measured_by_the_search": s["measured_latency"]["checked"],
    }
    result["meets_target"] = result["measured_ratio_median"] <= target
    out = Path(args.out)
    (out / "latency_search.json").write_text(json.dumps(result, indent=2))
    (out / "latency_search.md").write_text("\n".join([
        "# Latency-constrained search: MobileNetV2 on Fashion-MNIST, onnxruntime, batch 1", "",
        f"Command: `{command}` (2-core machine, 1 thread per measurement)", "",
        "| target | predicted (table) | measured (median of rounds) | rounds | dense | pruned | FLOPs | params "
        "| test acc dense -> pruned (no FT) | met |", "|---|---|---|---|---|---|---|---|---|---|",
        f"| {target:.0%} | {result['predicted_ratio']:.1%} | {result['measured_ratio_median']:.1%} "
        f"| {', '.join(f'{r:.1%}' for r in ratios)} | {result['dense_ms']:.3f} ms | {result['pruned_ms']:.3f} ms "
        f"| {result['flops_ratio']:.1%} | {result['params_ratio']:.1%} "
        f"| {result['dense_test_accuracy']:.2%} -> {result['pruned_test_accuracy']:.2%} "
        f"| {'yes' if result['meets_target'] else 'NO'} |", ""]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
