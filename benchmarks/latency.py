"""Latency-table benchmark: predicted vs measured latency of random pruned policies.

For ResNet-20, ResNet-56 and MobileNetV2 on Fashion-MNIST-shaped inputs (1x28x28), each runtime
(torch, onnxruntime) and batch size (1, 64): build the lookup table (timed), then predict and
measure 20 random pruned policies (physically pruned models, measured interleaved with the dense
model on one thread). Reports the median and max relative error of the absolute latency and of
the latency ratio to dense (what a fractional latency budget uses). Channel counts are rounded
to multiples of 8 (``round_to=8``), as deployments on onnxruntime should be.

    python benchmarks/latency.py [--policies 20] [--out benchmarks/results]

Results: benchmarks/results/latency.json and latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.latency import CALIBRATION_POLICIES, LatencyTable
from autoprune.models.zoo import create_model
from autoprune.search_spaces import SearchSpace

MODELS = ("resnet20", "resnet56", "mobilenetv2")


def run(name: str, runtime: str, batch: int, n_policies: int, round_to: int | None, cache: str,
        calibration_policies: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, image_size=28).eval()
    space = SearchSpace.from_model(model, torch.randn(1, 1, 28, 28), round_to=round_to)
    t = time.perf_counter()
    table = LatencyTable.build(model, space, runtime=runtime, batch=batch, calibration_policies=calibration_policies,
                               cache_dir=cache, show_progress=False)
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    policies = [space.sample(rng) for _ in range(n_policies)]
    keep = space.keep_units(policies[0])
    t = time.perf_counter()
    for _ in range(200):
        table.predict(space, keep)
    predict_us = (time.perf_counter() - t) / 200 * 1e6
    rows = table.check(model, space, policies, repeats=11 if batch > 1 else 15)
    abs_err = [r["relative_error"] for r in rows]
    ratio_err = [r["ratio_error"] for r in rows]
    return {"model": name, "runtime": runtime, "batch": batch, "round_to": round_to, "build_s": build_s,
            "measured_layers": table.meta["measured_signatures"], "predict_us": predict_us,
            "dense_ms": table.dense_measured * 1e3, "median_abs_error": statistics.median(abs_err),
            "max_abs_error": max(abs_err), "median_ratio_error": statistics.median(ratio_err),
            "max_ratio_error": max(ratio_err), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--calibration-policies", type=int, default=CALIBRATION_POLICIES,
                        help="random whole models measured to fit the table (besides dense and 3 uniform ones)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = tempfile.mkdtemp(prefix="autoprune-latency-")  # measure afresh, never reuse a cached table
    results = []
    for name in args.models:
        for runtime in args.runtimes:
            for batch in args.batches:
                r = run(name, runtime, batch, args.policies, args.round_to or None, cache, args.calibration_policies)
                results.append(r)
                print(f"{name} {runtime} b{batch}: ratio err median {r['median_ratio_error']:.1%} max "
                      f"{r['max_ratio_error']:.1%}; abs err median {r['median_abs_error']:.1%} "
                      f"max {r['max_abs_error']:.1%}; build {r['build_s']:.0f}s", flush=True)
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps({"command": command.strip(), "cpus": os.cpu_count(),
                                                  "results": results}, indent=2))
    lines = ["# Latency lookup table: predicted vs measured", "", f"Command: `{command.strip()}`", "",
             f"{args.policies} random policies per row (round_to={args.round_to}), physically pruned and measured "
             "interleaved with 3 copies of the dense model, 1 thread, median of 11-15 samples. *Ratio* = latency "
             "/ dense latency (the median of the copies; what a fractional latency budget uses; cancels "
             "machine-wide drift). Target: median error <= 10%.", "",
             "| model | runtime | batch | dense latency | ratio error median | ratio error max "
             "| absolute error median | absolute error max | table build | predict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['dense_ms']:.2f} ms "
                     f"| {r['median_ratio_error']:.1%} | {r['max_ratio_error']:.1%} | {r['median_abs_error']:.1%} "
                     f"| {r['max_abs_error']:.1%} | {r['build_s']:.0f} s | {r['predict_us']:.0f} us |")
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
