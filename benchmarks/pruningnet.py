"""PruningNet benchmark: MetaPruning's weight-generating evaluator against the adaptive-BN one.

Three parts, each appending rows to ``benchmarks/results/pruningnet.jsonl`` (a rerun skips finished rows)
and rebuilding ``benchmarks/results/pruningnet.md``; everything single-threaded (one core):

* ``train``: PruningNet training time for a zoo model with a committed Fashion-MNIST checkpoint, and
  seconds per candidate evaluation of both evaluators on the same policies.
* ``fidelity``: on ``--policies`` random policies filled to ``--budgets`` (and with ``--uniform`` each
  budget's uniform policy), each evaluator's validation score, and the target: the test accuracy of the
  model a run ships (pruned by importance, refitted by least squares, BN recalibrated); Kendall's tau and
  Spearman's rho of each proxy with it (``scipy.stats``).
* ``search``: evolution with each evaluator at equal total wall time (the PruningNet's training counted
  against its search), per budget and seed; the shipped model's test accuracy without and after a
  fine-tune.

    python benchmarks/pruningnet.py train --model resnet20 --epochs 1
    python benchmarks/pruningnet.py train --model vit --epochs 1
    python benchmarks/pruningnet.py fidelity --model resnet20 --policies 40
    python benchmarks/pruningnet.py fidelity --model resnet20 --policies 20 --first-index 40 --budgets 0.2
    python benchmarks/pruningnet.py fidelity --model resnet20 --policies 0 --budgets 0.5 0.3 0.2 --uniform
    python benchmarks/pruningnet.py fidelity --model resnet56 --policies 40 --budgets 0.3 0.2 --uniform \
        --kinds adaptive_bn    # policies and targets for benchmarks/fidelity.py, no PruningNet
    python benchmarks/pruningnet.py search --model resnet20 --budgets 0.5 0.3 --seeds 0 1 2 --wall 600
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import RANK_COLUMNS, rank_agreement  # benchmarks/fidelity.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget, project, uniform_policy
from autoprune.data import load_dataset
from autoprune.evaluation import Evaluator, recalibrate_batchnorm
from autoprune.models.checkpoints import load_checkpoint, reference_checkpoint
from autoprune.pruningnet import PruningNet, load_pruningnet, save_pruningnet, train_pruningnet
from autoprune.pruningnet_evaluator import PruningNetEvaluator
from autoprune.search import create_searcher
from autoprune.search_spaces import SearchSpace
from autoprune.training import TrainConfig, accuracy, train

RESULTS = Path(__file__).parent / "results"
ROWS = RESULTS / "pruningnet.jsonl"
NETS = RESULTS / "pruningnet"  # trained PruningNets (not committed: large), reused by the other parts
EVALUATION = {"val_size": 2000, "bn_batches": 8, "batch_size": 64}


def _setup(name: str) -> tuple[torch.nn.Module, Any, SearchSpace]:
    model, meta = load_checkpoint(reference_checkpoint(name, "fashion_mnist"))
    splits = load_dataset("fashion_mnist", val_size=meta["val_size"], seed=meta["split_seed"])
    return model, splits, SearchSpace.from_model(model, splits.example_inputs(), bounds=(0.0, 0.8))


def _rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []


def _done(**key: Any) -> bool:
    return any(all(r.get(k) == v for k, v in key.items()) for r in _rows())


def _append(row: dict[str, Any]) -> None:
    row = {**row, "command": "python benchmarks/pruningnet.py " + " ".join(sys.argv[1:]), "torch": torch.__version__}
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    _write_markdown()


def _net(name: str, model: torch.nn.Module, splits: Any, space: SearchSpace, epochs: float) -> tuple[PruningNet, float]:
    """The trained PruningNet (trained here if its file is missing) and the seconds its training took."""
    path = NETS / f"{name}-{epochs:g}ep.pt"
    torch.manual_seed(0)
    net = PruningNet(model, space)
    if path.exists():
        seconds = float(load_pruningnet(net, path)["seconds"])
        return net.eval(), seconds
    NETS.mkdir(parents=True, exist_ok=True)
    steps = int(np.ceil(epochs * len(splits.train) / 64))
    start = time.perf_counter()
    train_pruningnet(net, splits.train, steps=steps, batch_size=64, seed=0, checkpoint=path.with_suffix(".ckpt"))
    seconds = time.perf_counter() - start
    save_pruningnet(net, path, {"seconds": seconds, "steps": steps})
    return net.eval(), seconds


def _evaluators(model: torch.nn.Module, splits: Any, space: SearchSpace, net: PruningNet | None, budget: Budget,
                seed: int = 0) -> dict[str, Evaluator]:
    """The adaptive-BN evaluator, and the PruningNet's when there is a net."""
    common = dict(train_data=splits.train, val_data=splits.val, budget=budget, seed=seed, **EVALUATION)
    evaluators = {"adaptive_bn": Evaluator(model, space, path="exact", **common)}
    if net is not None:
        evaluators["pruningnet"] = PruningNetEvaluator(net, model, space, **common)
    return evaluators


def part_train(args: argparse.Namespace) -> None:
    if _done(part="train", model=args.model, epochs=args.epochs):
        return
    model, splits, space = _setup(args.model)
    net, seconds = _net(args.model, model, splits, space, args.epochs)
    evaluators = _evaluators(model, splits, space, net, Budget(flops=0.5))
    rng = np.random.default_rng(0)
    policies = [project(space, Budget(flops=0.5), space.sample(rng), fill=True) for _ in range(5)]
    per_candidate = {}
    for kind, ev in evaluators.items():
        ev(policies[0])  # warm-up
        start = time.perf_counter()
        for p in policies:
            ev(p)
        per_candidate[kind] = (time.perf_counter() - start) / len(policies)
    _append({"part": "train", "model": args.model, "epochs": args.epochs, "train_s": seconds,
             "generators_params": sum(p.numel() for p in net.generators.parameters()),
             "s_per_candidate": per_candidate})


def _fidelity_policies(args: argparse.Namespace, space: SearchSpace) -> list[tuple[int | str, float, Any]]:
    """(index, FLOPs ratio, policy): random draws filled to the budget, the i-th at ``budgets[i % len]`` from
    seed ``1000 + i`` (``--first-index`` adds policies without changing earlier ones), and with ``--uniform`` the
    uniform policy of each budget."""
    jobs: list[tuple[int | str, float, Any]] = []
    for i in range(args.first_index, args.first_index + args.policies):
        flops = args.budgets[i % len(args.budgets)]
        jobs.append((i, flops, project(space, Budget(flops=flops), space.sample(np.random.default_rng(1000 + i)),
                                       fill=True)))
    if args.uniform:
        jobs += [(f"uniform-{flops:g}", flops, uniform_policy(space, Budget(flops=flops))) for flops in args.budgets]
    return jobs


def part_fidelity(args: argparse.Namespace) -> None:
    model, splits, space = _setup(args.model)
    # without the PruningNet (--kinds adaptive_bn): the policies and targets for benchmarks/fidelity.py alone
    net = _net(args.model, model, splits, space, args.epochs)[0] if "pruningnet" in args.kinds else None
    for i, flops, policy in _fidelity_policies(args, space):
        if _done(part="fidelity", model=args.model, epochs=args.epochs, index=i):
            continue
        evaluators = _evaluators(model, splits, space, net, Budget(flops=flops))
        scores = {}
        for kind, ev in evaluators.items():
            result = ev(policy)
            scores[kind] = {"val": result.accuracy, "seconds": result.seconds["total"]}
        row = {"part": "fidelity", "model": args.model, "epochs": args.epochs, "index": i, "budget": flops,
               "policy": policy.to_dict(), "scores": scores,
               "shipped_test": accuracy(evaluators["adaptive_bn"].release(policy), splits.test)}
        if net is not None:
            generated = net.generate(policy)
            recalibrate_batchnorm(generated, evaluators["adaptive_bn"].release_images(8192), 64)
            row["generated_test"] = accuracy(generated, splits.test)
        _append(row)


def part_search(args: argparse.Namespace) -> None:
    model, splits, space = _setup(args.model)
    net, train_s = _net(args.model, model, splits, space, args.epochs)
    for flops in args.budgets:
        for seed in args.seeds:
            for kind in args.kinds:
                key = dict(part="search", model=args.model, epochs=args.epochs, budget=flops, seed=seed, kind=kind,
                           wall=args.wall)
                if _done(**key):
                    continue
                budget = Budget(flops=flops)
                evaluator = _evaluators(model, splits, space, net, budget, seed)[kind]
                searcher = create_searcher("evolution", evaluator=evaluator, seed=seed)
                search_s = args.wall - (train_s if kind == "pruningnet" else 0.0)
                start = time.perf_counter()
                while time.perf_counter() - start < search_s:
                    searcher.step(5)
                searched_s = time.perf_counter() - start
                best = searcher.best
                assert best is not None
                shipped = evaluator.release(best.policy)
                test = accuracy(shipped, splits.test)
                torch.manual_seed(seed)
                train(shipped, splits.train, TrainConfig(epochs=args.finetune_epochs, max_lr=0.05, seed=seed),
                      show_progress=False)
                released = getattr(evaluator, "released", {}).get(space.validate(best.policy).to_json(), {})
                _append({**key, "evaluations": len(searcher.ledger), "search_s": searched_s,
                         "train_s": train_s if kind == "pruningnet" else 0.0, "best_val": best.accuracy,
                         "shipped_test": test, "finetuned_test": accuracy(shipped, splits.test),
                         "finetune_epochs": args.finetune_epochs, "released": released,
                         "policy": best.policy.to_dict()})


# --------------------------------------------------------------------------------------------
def _ms(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else \
        f"{100 * xs[0]:.2f}" if xs else "–"


def _write_markdown() -> None:
    rows = _rows()
    lines = ["# PruningNet (MetaPruning) vs the adaptive-BN evaluator", "",
             "Reference checkpoints on Fashion-MNIST, one CPU core (`torch.set_num_threads(1)`), evaluation on 2,000 "
             "validation images with 8 BN batches for both evaluators. Commands: see each row of `pruningnet.jsonl`.",
             "", "## Training and seconds per candidate", "",
             "| model | PruningNet epochs | training (s) | generator parameters | s/candidate adaptive BN | "
             "s/candidate PruningNet |", "|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["part"] == "train"):
        s = r["s_per_candidate"]
        lines.append(f"| {r['model']} | {r['epochs']:g} | {r['train_s']:.0f} | {r['generators_params']:,} | "
                     f"{s['adaptive_bn']:.2f} | {s['pruningnet']:.2f} |")
    fid = [r for r in rows if r["part"] == "fidelity" and "pruningnet" in r["scores"]]
    if fid:
        lines += ["", f"## Ranking fidelity ({len(fid)} policies: random ones filled to the budget, and uniform)", "",
                  "Target: test accuracy of the model a run ships for the policy (the trained model pruned by "
                  "importance, refitted by least squares, BN recalibrated). Per budget: pooled, the budget alone "
                  "would rank them. More proxies on the same policies, and the target after a 1-epoch fine-tune: "
                  "`fidelity.md`.", "", *RANK_COLUMNS]
        for budget in sorted({r["budget"] for r in fid}, reverse=True):
            group = [r for r in fid if r["budget"] == budget]
            for kind in ("adaptive_bn", "pruningnet"):
                lines.append(f"| {budget:.0%} | {kind} | {len(group)} | " + rank_agreement(
                    [r["scores"][kind]["val"] for r in group], [r["shipped_test"] for r in group],
                    [r["scores"][kind]["seconds"] for r in group]) + " |")
        target = [r["shipped_test"] for r in fid]
        lines += ["", f"Generated networks' own test accuracy (BN recalibrated): mean "
                      f"{_ms([r['generated_test'] for r in fid])} vs the shipped models' {_ms(target)}."]
    search = [r for r in rows if r["part"] == "search"]
    if search:
        lines += ["", "## Evolution at equal total wall time", "",
                  "Mean ± std over the seeds run. The PruningNet's training time is taken from its search's time. "
                  "The shipped model: for adaptive BN the trained model pruned and refitted; for the PruningNet the "
                  "better on validation of its generated network and that model (last column: how often each). "
                  "The fine-tune (1 epoch, SGD, lr 0.05) starts from the shipped model.",
                  "", "| model | FLOPs | evaluator | seeds | wall (s) | evaluations | best val | shipped test | "
                  "after fine-tune | shipped generated / pruned |", "|---|---|---|---|---|---|---|---|---|---|"]
        keys = sorted({(r["model"], r["budget"], r["kind"], r["wall"]) for r in search}, key=lambda k: (k[0], -k[1]))
        for model, budget, kind, wall in keys:
            rs = [r for r in search if (r["model"], r["budget"], r["kind"], r["wall"]) == (model, budget, kind, wall)]
            chosen = [r["released"].get("shipped", "pruned") for r in rs]
            lines.append(f"| {model} | {budget:.0%} | {kind} | {len(rs)} | {wall:.0f} | "
                         f"{statistics.mean(r['evaluations'] for r in rs):.0f} | {_ms([r['best_val'] for r in rs])} | "
                         f"{_ms([r['shipped_test'] for r in rs])} | {_ms([r['finetuned_test'] for r in rs])} | "
                         f"{chosen.count('generated')} / {chosen.count('pruned')} |")
    (RESULTS / "pruningnet.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["train", "fidelity", "search", "table"])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=float, default=1.0, help="PruningNet training epochs")
    parser.add_argument("--policies", type=int, default=40, help="fidelity: random policies")
    parser.add_argument("--first-index", type=int, default=0, help="fidelity: index (and seed - 1000) of the first")
    parser.add_argument("--uniform", action="store_true", help="fidelity: also each budget's uniform policy")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--wall", type=float, default=600.0, help="seconds per search, PruningNet training included")
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--kinds", nargs="+", default=["adaptive_bn", "pruningnet"], help="evaluators to search with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"train": part_train, "fidelity": part_fidelity, "search": part_search,
     "table": lambda _: _write_markdown()}[args.part](args)


if __name__ == "__main__":
    main()
