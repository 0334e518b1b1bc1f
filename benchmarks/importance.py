"""Does another channel-ranking criterion make the searched policies more accurate?

The pruner keeps, in each coupled group, the channels its importance criterion ranks highest
(default ``l2``: the L2 norm of each channel's weights over every coupled layer). This re-scores the
best TPE and evolution policies at 50% FLOPs from ``benchmarks/results/search_quality.jsonl`` with
every criterion Torch-Pruning offers here, without searching again: validation accuracy as the search
scores it (adaptive BN on 512 TRAIN images, 2,000 validation images) and TEST accuracy with BatchNorm
re-estimated on 8,192 TRAIN images, without least-squares reconstruction (which would mask the
criterion). The policies were searched with ``l2``, so a criterion that loses here could still win
with a search of its own; one that wins would be worth one.

    python benchmarks/importance.py --importance l2 l1 lamp bn_scale fpgm taylor

Writes ``benchmarks/results/importance.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.evaluation import Evaluator
from autoprune.pruning import IMPORTANCE_NAMES
from autoprune.search_spaces import Policy
from autoprune.training import accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--importance", nargs="+", default=["l2", "l1", "lamp", "bn_scale", "fpgm", "taylor"],
                        choices=IMPORTANCE_NAMES)
    parser.add_argument("--backends", nargs="+", default=["tpe", "evolution"])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.results)
    searched = [json.loads(line) for line in (out / "search_quality.jsonl").read_text().splitlines()]
    searched = [r for r in searched if r["backend"] in args.backends and r["budget"] == args.budget
                and r.get("importance", "l2") == "l2"]
    model, splits, space = reference_setup()
    rows = []
    for importance in args.importance:
        # One evaluator (seed 0: the same BN images) per criterion; it ranks every group's channels once.
        evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val, val_size=2000,
                              bn_batches=8, path="exact", seed=0, importance=importance)
        for r in searched:
            policy = Policy(r["policy"])
            rows.append({"importance": importance, "backend": r["backend"], "seed": r["seed"],
                         "val": evaluator(policy).accuracy,
                         "test": accuracy(evaluator.release(policy, reconstruct=False), splits.test)})
            print(json.dumps(rows[-1]), flush=True)
    command = ("python benchmarks/importance.py " + " ".join(sys.argv[1:])).strip()
    (out / "importance.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    policies = [f"{r['backend']} s{r['seed']}" for r in searched]
    lines = ["# Channel-ranking criterion vs accuracy of the searched policies", "",
             f"Command: `{command}` (after `benchmarks/search_quality.py`; 1 thread)", "",
             f"The best policy of each {' and '.join(args.backends)} search at {args.budget:.0%} FLOPs (searched with "
             "`l2`), pruned by each criterion. Cells: validation accuracy as the search scores it / TEST accuracy "
             "with release BN (no reconstruction).", "",
             "| importance | " + " | ".join(policies) + " | mean test |", "|---|" + "---|" * (len(policies) + 1)]
    for importance in args.importance:
        cells = [x for x in rows if x["importance"] == importance]
        lines.append(f"| {importance} | " + " | ".join(f"{c['val']:.2%} / {c['test']:.2%}" for c in cells)
                     + f" | {statistics.mean(c['test'] for c in cells):.2%} |")
    (out / "importance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
