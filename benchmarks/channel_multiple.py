"""Channel multiples: which ``pruner.round_to`` makes a pruned model actually faster than the dense one?

Fewer FLOPs do not always mean less time: at batch 1 on one thread, onnxruntime's and torch's convolution
kernels work on blocks of 4, 8 or 16 channels, and a layer left with 13 channels can run slower than one
with 16. For the reference ResNet-20 / Fashion-MNIST, each ``round_to`` and FLOPs budget: the uniform policy
and ``--policies`` random ones filled to the budget (the shared projection), physically shaped, timed
interleaved with the dense model on torch and onnxruntime (batch 1, one thread; median of 30 samples).
``--model`` measures another model with a committed checkpoint.

    python benchmarks/channel_multiple.py --budgets 0.5 0.3 --round-to 0 4 8 16 --policies 5
    python benchmarks/channel_multiple.py --model resnet56 --budgets 0.5 0.3 --round-to 0 8 --policies 3

Rows go to ``benchmarks/results/channel_multiple.jsonl`` (a rerun skips finished ones); the table to
``channel_multiple.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget, InfeasibleBudgetError, check_feasible, project, uniform_policy
from autoprune.latency import make_runner, measure
from autoprune.search_spaces import SearchSpace

RESULTS = Path(__file__).parent / "results"
ROWS = RESULTS / "channel_multiple.jsonl"
RUNTIMES = ("torch", "onnxruntime")


def _read() -> list[dict[str, Any]]:
    return [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--round-to", type=int, nargs="+", default=[0, 4, 8, 16], help="0: no rounding")
    parser.add_argument("--policies", type=int, default=5, help="random policies per budget, besides uniform")
    parser.add_argument("--model", default="resnet20", help="a model with a committed Fashion-MNIST checkpoint")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.table_only:
        model, splits, _ = reference_setup(model_name=args.model)
        x = splits.tensor_inputs(1)
        done = {(r["round_to"], r["budget"], r["policy"]) for r in _read() if _model_of(r) == args.model}
        for round_to in args.round_to:
            space = SearchSpace.from_model(model, splits.example_inputs(), bounds=(0.0, 0.8), round_to=round_to or None)
            for flops in args.budgets:
                budget = Budget(flops=flops)
                try:
                    check_feasible(space, budget)
                except InfeasibleBudgetError as e:  # e.g. 16-channel layers cannot go below 16 channels
                    if (round_to, flops, "infeasible") not in done:
                        _append({"model": args.model, "round_to": round_to, "budget": flops, "policy": "infeasible",
                                 "why": str(e)})
                    continue
                policies = {"uniform": uniform_policy(space, budget)}
                for i in range(args.policies):
                    policies[f"random-{i}"] = project(space, budget, space.sample(np.random.default_rng(i)), fill=True)
                for name, policy in policies.items():
                    if (round_to, flops, name) in done:
                        continue
                    shaped = space.shaped_copy(model, policy)
                    ratios = {}
                    for rt in RUNTIMES:
                        runners = {"dense": make_runner(model, x, rt), "pruned": make_runner(shaped, x, rt)}
                        t = measure(runners, repeats=30)
                        ratios[rt] = t["pruned"] / t["dense"]
                    _append({"model": args.model, "round_to": round_to, "budget": flops, "policy": name,
                             "flops_ratio": space.costs(policy).macs / space.dense_costs.macs, "latency_ratio": ratios,
                             "keep": space.keep_units(policy).tolist(), "torch": torch.__version__})
                    print(f"round_to {round_to} {flops:.0%} {name}: " + ", ".join(
                        f"{rt} {r:.1%}" for rt, r in ratios.items()), flush=True)
    _write_markdown(_read())


def _model_of(row: dict[str, Any]) -> str:
    return row.get("model", "resnet20")  # rows from before --model existed


def _append(row: dict[str, Any]) -> None:
    command = "python benchmarks/channel_multiple.py " + " ".join(sys.argv[1:])
    with ROWS.open("a") as f:
        f.write(json.dumps({**row, "command": command}) + "\n")


def _write_markdown(rows: list[dict[str, Any]]) -> None:
    lines = ["# Channel multiples: pruned latency as a fraction of dense", "",
             "Reference Fashion-MNIST checkpoints, batch 1, one thread, pruned and dense timed interleaved (median of "
             "30). Per `round_to` and budget: the uniform policy and random policies filled to the budget. Latency "
             "ratio < 100%: the pruned model is faster. Measured with the machine's other benchmarks paused (SIGSTOP). "
             "Commands: each row of `channel_multiple.jsonl`.", "",
             "| model | round_to | FLOPs budget | policies | FLOPs ratio | torch: uniform | torch: random, median "
             "(range) | onnxruntime: uniform | onnxruntime: random, median (range) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted({(_model_of(r), r["round_to"], r["budget"]) for r in rows},
                      key=lambda k: (k[0] != "resnet20", k[0], k[1], -k[2])):
        model, round_to, budget = key
        rs = [r for r in rows if (_model_of(r), r["round_to"], r["budget"]) == key]
        head = f"| {model} | {round_to or 'none'} | {budget:.0%} | "
        if rs[0]["policy"] == "infeasible":
            lines.append(head + "0 | unreachable: one multiple per group already exceeds the budget | | | | |")
            continue
        cells = []
        for runtime in RUNTIMES:
            uniform = [r["latency_ratio"][runtime] for r in rs if r["policy"] == "uniform"]
            rand = [r["latency_ratio"][runtime] for r in rs if r["policy"] != "uniform"]
            cells.append(f"{uniform[0]:.1%}" if uniform else "–")
            cells.append(f"{statistics.median(rand):.1%} ({min(rand):.1%}–{max(rand):.1%})" if rand else "–")
        lines.append(head + f"{len(rs)} | {statistics.mean(r['flops_ratio'] for r in rs):.1%} | " + " | ".join(cells)
                     + " |")
    (RESULTS / "channel_multiple.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
