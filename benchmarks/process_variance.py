"""Is an evaluation slower on a Ray worker because of Ray, or because it runs in another process?

Scores the same ResNet-20 / Fashion-MNIST policies (median of 5, after one warm-up) in the driver,
in the driver after a pickle round trip of the evaluator (what Ray ships), in a plain spawned
process, and in a Ray task, ``--rounds`` times. If the spread between plain processes is as large
as the Ray worker's difference, ``benchmarks/distributed.py``'s end-to-end overhead is process
placement noise and its *dispatch* overhead is what Ray adds.

    python benchmarks/process_variance.py --rounds 2

Writes ``benchmarks/results/process_variance.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget
from autoprune.evaluation import Evaluator


def _evaluator() -> Evaluator:
    model, splits, space = reference_setup()
    return Evaluator(model, space, train_data=splits.train, val_data=splits.val, budget=Budget(flops=0.5),
                     val_size=2000, bn_batches=8, path="exact")


def _median_seconds(evaluator: Evaluator, n: int = 5) -> float:
    torch.set_num_threads(1)
    evaluator(evaluator.space.uniform(0.3))  # warm-up: pruning plan, allocator
    times = []
    for i in range(n):
        start = time.perf_counter()
        evaluator(evaluator.space.uniform(0.3 + 0.01 * i))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _in_child(blob: bytes, queue: Any) -> None:
    queue.put(_median_seconds(pickle.loads(blob)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    evaluator = _evaluator()
    blob = pickle.dumps(evaluator)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    in_ray: Any = ray.remote(num_cpus=1)(lambda b: _median_seconds(pickle.loads(b)))
    context = mp.get_context("spawn")
    rounds = []
    for _ in range(args.rounds):
        queue = context.Queue()
        child = context.Process(target=_in_child, args=(blob, queue))
        child.start()
        row = {"driver": _median_seconds(evaluator), "driver, unpickled": _median_seconds(pickle.loads(blob)),
               "spawned process": queue.get()}
        child.join()
        row["Ray task"] = ray.get(in_ray.remote(blob))
        rounds.append(row)
        print(json.dumps(row), flush=True)
    ray.shutdown()
    command = ("python benchmarks/process_variance.py " + " ".join(sys.argv[1:])).strip()
    out = Path(args.out)
    (out / "process_variance.json").write_text(json.dumps({"command": command, "rounds": rounds}, indent=2))
    places = list(rounds[0])
    lines = ["# One evaluation, four processes: ResNet-20 / Fashion-MNIST, 1 thread", "", f"Command: `{command}`", "",
             "Median seconds of 5 evaluations (2,000 validation images, BN on 512) in each place, per round.", "",
             "| round | " + " | ".join(places) + " |", "|---|" + "---|" * len(places)]
    lines += [f"| {i + 1} | " + " | ".join(f"{r[p]:.2f} s ({r[p] / r['driver'] - 1:+.0%})" for p in places) + " |"
              for i, r in enumerate(rounds)]
    (out / "process_variance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
