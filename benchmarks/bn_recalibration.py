"""How much of a pruned network's accuracy depends on how many batches recalibrate its BatchNorm?

Adaptive BN (re-estimating the BN statistics of a pruned copy on a few TRAIN batches) is what
every search scores. This re-scores the best policy of each backend in
``benchmarks/results/search_quality.jsonl`` with more recalibration batches, on the same 2,000-image
validation split and on the 10k TEST split, to see how much accuracy the search's default
(8 batches of 64) leaves on the table.

    python benchmarks/bn_recalibration.py --bn-batches 8 32 128

Writes ``benchmarks/results/bn_recalibration.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget
from autoprune.evaluation import Evaluator, accuracy, recalibrate_batchnorm
from autoprune.search_spaces import Policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bn-batches", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.results)
    searched = [json.loads(line) for line in (out / "search_quality.jsonl").read_text().splitlines()]
    # One policy per searching backend: seed 0 at 50% FLOPs with the default criterion (what the table says).
    searched = [r for r in searched if r["backend"] != "uniform" and r["seed"] == 0 and r["budget"] == 0.5
                and r.get("importance", "l2") == "l2"]
    model, splits, space = reference_setup()
    rows = []
    for bn_batches in args.bn_batches:
        evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val,
                              budget=Budget(flops=0.5), val_size=2000, bn_batches=bn_batches, path="exact", seed=0)
        for r in searched:
            policy = Policy(r["policy"])
            start = time.perf_counter()
            val = evaluator(policy).accuracy
            seconds = time.perf_counter() - start
            pruned = evaluator.pruner.prune(policy)
            recalibrate_batchnorm(pruned, evaluator.bn_inputs, evaluator.batch_size)
            rows.append({"backend": r["backend"], "seed": r["seed"], "budget": r["budget"], "bn_batches": bn_batches,
                         "val": val, "test": accuracy(pruned, splits.test), "evaluation_s": seconds})
            print(json.dumps(rows[-1]), flush=True)
    command = ("python benchmarks/bn_recalibration.py " + " ".join(sys.argv[1:])).strip()
    (out / "bn_recalibration.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    lines = ["# BatchNorm recalibration batches vs accuracy of the searched policies", "",
             f"Command: `{command}` (after `benchmarks/search_quality.py`; 1 thread)", "",
             "Each backend's best policy at 50% FLOPs (seed 0, from search_quality.jsonl), BN re-estimated on "
             "N batches of 64 TRAIN images; validation = the search's 2,000-image split. Seconds per evaluation "
             "of the first row include each evaluator's one-time set-up (pruning plan, warm-up).", "",
             "| backend | " + " | ".join(f"{n} batches: val / test / s per evaluation" for n in args.bn_batches) + " |",
             "|---|" + "---|" * len(args.bn_batches)]
    for r in searched:
        cells = [next(x for x in rows if x["backend"] == r["backend"] and x["seed"] == r["seed"]
                      and x["budget"] == r["budget"] and x["bn_batches"] == n) for n in args.bn_batches]
        lines.append(f"| {r['backend']} | " + " | ".join(
            f"{c['val']:.2%} / {c['test']:.2%} / {c['evaluation_s']:.1f}" for c in cells) + " |")
    (out / "bn_recalibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
