"""DDPG past AMC: what each change to AMC's agent does at tight budgets, against random search.

Each row is one search on the reference ResNet-20 / Fashion-MNIST with the same evaluator
(``--evaluation``: the default ``refit``, or ``adaptive_bn``, on the first ``--val-size`` validation
images after ``--bn-batches`` batches of BatchNorm recalibration): an agent (a named DDPG variant
with optional overrides) or random search, ``--evaluations`` evaluations, a seed and a FLOPs budget.
Recorded: the best score the search found
(what the agent optimises), the mean score of its last 100 evaluations (is it still exploring, or
re-proposing a few policies?), how many distinct policies it scored, and the best policy's test
accuracy once shipped (pruned, least-squares refitted, BatchNorm re-estimated: what ``autoprune run``
hands back).

    python benchmarks/ddpg.py --agents amc budget_aware random --seeds 0 1 2 --budgets 0.3 0.2
    python benchmarks/ddpg.py --agents budget_aware:sigma_floor=0 --seeds 0 1 2 --budgets 0.2

An agent is ``random``, a variant name (``amc``, ``budget_aware``) or a variant with overrides
(``budget_aware:sigma_floor=0,warmup=50``). A finished row (agent, budget, seed, settings) is never
re-run; ``ddpg.md`` is rebuilt from ``ddpg.jsonl`` after every row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget
from autoprune.evaluation import Evaluator
from autoprune.refit_evaluator import RefitEvaluator
from autoprune.search import create_searcher
from autoprune.training import accuracy

SETTINGS = ("evaluations", "val_size", "bn_batches", "evaluation")
EVALUATORS = {"adaptive_bn": Evaluator, "refit": RefitEvaluator}


def parse_agent(agent: str) -> tuple[str, dict[str, Any]]:
    """``"budget_aware:sigma_floor=0,warmup=50"`` -> ``("ddpg", {"variant": "budget_aware", ...})``."""
    if agent == "random":
        return "random", {}
    variant, _, overrides = agent.partition(":")
    options: dict[str, Any] = {"variant": variant, "warmup": 100}  # AMC's warm-up, as search_quality.py
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    return "ddpg", options


def run_one(agent: str, flops: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    model, splits, space = reference_setup()
    evaluator = EVALUATORS[args.evaluation](model, space, train_data=splits.train, val_data=splits.val,
                                            budget=Budget(flops=flops), val_size=args.val_size,
                                            bn_batches=args.bn_batches, path="exact", seed=seed)
    backend, options = parse_agent(agent)
    with tempfile.TemporaryDirectory() as run_dir:
        searcher = create_searcher(backend, evaluator=evaluator, seed=seed, ledger=run_dir, **options)
        start = time.perf_counter()
        best = searcher.run(args.evaluations, show_progress=False)
        wall = time.perf_counter() - start
        results = [r for r in searcher.ledger.results if r.ok]
    assert best is not None
    shipped = evaluator.release(best.policy)
    return {"agent": agent, "budget": flops, "seed": seed, **{k: getattr(args, k) for k in SETTINGS},
            "scored": len(results), "distinct": len({tuple(r.policy.values()) for r in results}),
            "best_val": best.accuracy, "last100_val": statistics.mean(r.accuracy for r in results[-100:]),
            "shipped_test": accuracy(shipped, splits.test), "wall_s": wall,
            "policy": best.policy.to_dict(), "command": "python " + " ".join(sys.argv)}


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["agent"], row["budget"], row["seed"], *(row[k] for k in SETTINGS))


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2%}"
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = ["# DDPG past AMC: each change, against random search", "",
             "ResNet-20 / Fashion-MNIST, l2 channel ranking, ratios in [0, 0.8]. Every search scores a candidate "
             "by its validation accuracy (images carved from TRAIN) after least-squares refit (`refit`, the "
             "default evaluation) or BatchNorm recalibration only (`adaptive_bn`); *shipped* is the best "
             "policy's model as `autoprune run` returns it (refitted by least squares, BatchNorm "
             "re-estimated), on the 10k TEST split. *Last 100*: the mean score of the search's last 100 "
             "evaluations (an agent that stopped exploring re-proposes a few policies). *Distinct*: the "
             "policies it scored. Agents: `amc` is AMC's "
             "recipe unchanged; `budget_aware` reads actions relative to the evenly spread deficit, observes it, "
             "and keeps the exploration sigma at or above 0.1; overrides after the colon.", "",
             "Commands:", "", *[f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)], "",
             "| FLOPs | agent | evals | val 1 | BN batches | scored by | seeds | best score (search) | last 100 "
             "| distinct | shipped test | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cells = sorted({(r["budget"], r["agent"], *(r[k] for k in SETTINGS)) for r in rows},
                   key=lambda c: (-c[0], c[2:], c[1]))
    for budget, agent, *settings in cells:
        rs = [r for r in rows if (r["budget"], r["agent"], *(r[k] for k in SETTINGS)) == (budget, agent, *settings)]
        lines.append(f"| {budget:.0%} | {agent} | {settings[0]} | {settings[1]:,} | {settings[2]} | {settings[3]} | "
                     f"{', '.join(str(r['seed']) for r in rs)} | {_mean_std([r['best_val'] for r in rs])} "
                     f"| {_mean_std([r['last100_val'] for r in rs])} "
                     f"| {statistics.mean(r['distinct'] for r in rs):.0f} "
                     f"| {_mean_std([r['shipped_test'] for r in rs])} "
                     f"| {statistics.mean(r['wall_s'] for r in rs):.0f} |")
    path.write_text("\n".join(lines).replace("val 1", "val images") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["amc", "budget_aware", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.3, 0.2])
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--bn-batches", type=int, default=4)
    parser.add_argument("--evaluation", default="refit", choices=sorted(EVALUATORS))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--markdown-only", action="store_true", help="rebuild the .md from the .jsonl and stop")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    ledger, table = Path(args.out) / "ddpg.jsonl", Path(args.out) / "ddpg.md"

    def done() -> list[dict[str, Any]]:  # re-read each time: another process may share the ledger
        return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []

    if args.markdown_only:
        write_markdown(done(), table)
        return

    for budget in args.budgets:
        for seed in args.seeds:
            for agent in args.agents:
                probe = {"agent": agent, "budget": budget, "seed": seed, **{k: getattr(args, k) for k in SETTINGS}}
                if _key(probe) in {_key(r) for r in done()}:
                    continue
                row = run_one(agent, budget, seed, args)
                with ledger.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                write_markdown(done(), table)
                print(f"{agent} {budget:.0%} seed {seed}: best {row['best_val']:.2%}, last 100 "
                      f"{row['last100_val']:.2%}, {row['distinct']} distinct, shipped {row['shipped_test']:.2%}, "
                      f"{row['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
