"""Search-quality benchmark: backends compared on a reference Fashion-MNIST model (``--model``: ResNet-20,
or another model with a committed checkpoint).

For each budget (fraction of dense FLOPs), backend and seed: a search with the same number of
evaluations (adaptive-BN accuracy on the first ``--val-size`` validation images, carved from
TRAIN), then the best policy is pruned physically, its FLOPs counted, its BatchNorm recalibrated
and its accuracy measured on the 10k TEST split, before and after a ``--finetune-epochs`` fine-tune.
Also: evaluations per second, the fraction of wall time spent outside the forward passes, and the shipped
model's measured speed-up over the dense one (torch, batch 1, one thread). ``--evaluation refit`` ranks
policies by the refitted candidate (``evaluation.kind: refit``) instead of the plainly pruned one.

    python benchmarks/search_quality.py --backends uniform random ddpg tpe evolution \\
        --seeds 0 1 2 --budgets 0.5 0.3 --evaluations 300 --jobs 15 --device cuda

Each (budget, backend, seed) is one single-threaded process (``--jobs`` of them at once); each finished
one is appended to ``search_quality.jsonl`` (a rerun skips what is done), and ``search_quality.md``
is rebuilt from all of it. ``--device cuda`` scores the pruned copies on a GPU (pruning and the
searchers stay on the CPU); the device is recorded with every row.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget
from autoprune.costs import count_costs
from autoprune.evaluation import Evaluator, recalibrate_batchnorm
from autoprune.importance import IMPORTANCE_NAMES
from autoprune.latency import make_runner, measure
from autoprune.models.checkpoints import reference_checkpoint
from autoprune.refit_evaluator import RefitEvaluator
from autoprune.search import create_searcher
from autoprune.search_spaces import Policy
from autoprune.training import TrainConfig, accuracy, train

# benchmark name -> (searcher, options); "ddpg" is the default (budget-aware) agent, "ddpg-amc" AMC's recipe
# (every DDPG row recorded before the budget-aware agent existed ran AMC's and is named so)
BACKENDS = {"ddpg": ("ddpg", {"warmup": 100}), "ddpg-amc": ("ddpg", {"warmup": 100, "variant": "amc"}),
            "tpe": ("tpe", {"n_startup_trials": 10})}
REPAIRING = {"random", "evolution", "tpe"}  # the backends whose policies go through the shared projection
FILLING = {"random", "evolution"}  # of those, the ones that fill policies under budget by default
# The settings a row was searched under, with the defaults that rows recorded before a setting existed used.
# Rows with other values are tabled apart, labelled by how they differ.
SETTINGS = {"importance": "l2", "val_size": 2000, "bn_batches": 8, "max_ratio": 0.8, "checkpoint": None,
            "model": "resnet20", "evaluation": "adaptive_bn"}
EVALUATORS = {"adaptive_bn": Evaluator, "refit": RefitEvaluator}
# budget, backend, seed, fills, then the SETTINGS values in order
RowKey = tuple


def _exit_with_parent() -> None:
    """End this worker when the benchmark that spawned it dies: a killed benchmark leaves no search running."""
    parent = multiprocessing.parent_process()
    if parent is not None:  # join() returns once the parent's end of the spawn pipe closes, however it died
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()


def run_one(backend: str, seed: int, flops: float, args: argparse.Namespace) -> dict:
    """One search and the test-split measurements of its best policy (runs in its own process)."""
    torch.set_num_threads(1)
    model, splits, space = reference_setup(args.max_ratio, args.checkpoint, args.model)
    budget = Budget(flops=flops)
    evaluator = EVALUATORS[args.evaluation](model, space, train_data=splits.train, val_data=splits.val, budget=budget,
                          val_size=args.val_size, bn_batches=args.bn_batches, path="exact", seed=seed,
                          device=args.device, importance=args.importance)
    if len(evaluator.val) < args.val_size:  # the Evaluator takes what there is; the row must say what was asked
        raise SystemExit(f"--val-size {args.val_size}: the validation split holds only {len(evaluator.val)} "
                         "images; ask for at most that")
    with tempfile.TemporaryDirectory() as run_dir:
        name, options = BACKENDS.get(backend, (backend, {}))
        options = dict(options)
        if args.fill_budget is not None and backend in REPAIRING:
            options["fill_budget"] = args.fill_budget == "on"
        searcher = create_searcher(name, evaluator=evaluator, seed=seed, ledger=run_dir, **options)
        steps = []  # one entry per unit of work: a DDPG episode that re-proposes a cached policy adds no evaluation
        start = time.perf_counter()
        best = searcher.run(args.evaluations, show_progress=False, callback=lambda _, results: steps.append(1))
        wall = time.perf_counter() - start
        results = searcher.ledger.results
    assert best is not None
    forward = sum(r.seconds.get("recalibrate", 0.0) + r.seconds.get("validate", 0.0) for r in results)
    pruned = evaluator.pruner.prune(best.policy)
    counted = count_costs(pruned, splits.example_inputs())
    pruned.to(args.device)
    recalibrate_batchnorm(pruned, evaluator.bn_inputs, evaluator.batch_size)
    test = accuracy(pruned, splits.test)
    test_release = accuracy(evaluator.release(best.policy, reconstruct=False).to(args.device), splits.test)
    shipped = evaluator.release(best.policy)
    x = splits.tensor_inputs(1)
    seconds = measure({"dense": make_runner(model, x), "shipped": make_runner(shipped, x)}, repeats=30)
    test_reconstructed = accuracy(shipped.to(args.device), splits.test)
    torch.manual_seed(seed)
    train(pruned, splits.train, TrainConfig(epochs=args.finetune_epochs, max_lr=args.finetune_lr, seed=seed),
          show_progress=False)
    assert searcher.fills_budget == _fills_asked(backend, args)
    rerank = _rerank(evaluator, results, splits, args, seed) if args.rerank else {}
    return {"budget": flops, "backend": backend, "seed": seed, **_settings_asked(args),
            "fills_budget": searcher.fills_budget, "val_size": len(evaluator.val),
            "evaluations": len(results), "steps": len(steps),
            "failed": sum(r.failed is not None for r in results), "wall_s": wall,
            "evals_per_s": len(results) / wall, "outside_forward": 1 - forward / wall,
            "best_val": best.accuracy, "best_test": test, "best_test_release": test_release,
            "best_test_reconstructed": test_reconstructed, "speedup_torch": seconds["dense"] / seconds["shipped"],
            "val_test_gap": best.accuracy - test,
            "best_test_finetuned": accuracy(pruned, splits.test), "counted_flops_ratio": counted.macs /
            space.dense_costs.macs, "meets_budget": counted.macs <= flops * space.dense_costs.macs,
            "all_feasible": all(r.feasible for r in results), "policy": best.policy.to_dict(),
            "device": _device_name(args.device), "torch": torch.__version__,
            "optuna": optuna.__version__, **rerank}  # samplers change between versions; seeds replay within one


def _rerank(evaluator: Evaluator, results: list, splits: Any, args: argparse.Namespace, seed: int) -> dict:
    """The top ``--rerank`` policies by search accuracy, re-scored on the validation images the search
    never saw: does choosing among them on fresh images undo the search's optimism (the val-test gap)?"""
    x_val, y_val = splits.val.tensors
    fresh = torch.utils.data.TensorDataset(x_val[args.val_size:], y_val[args.val_size:])
    if not len(fresh):
        raise SystemExit(f"--rerank needs validation images beyond the first {args.val_size}; there are none")
    top = sorted((r for r in results if r.ok), key=lambda r: -r.accuracy)[: args.rerank]
    candidates = []
    if args.evaluation == "refit":  # scored as the search scored them (refitted), on fresh images; test: shipped
        judge = RefitEvaluator(evaluator.model, evaluator.space, train_data=splits.train, val_data=fresh,
                               budget=evaluator.budget, val_size=len(fresh), bn_batches=args.bn_batches, path="exact",
                               seed=seed, device=args.device, importance=args.importance)
        for r in top:
            candidates.append({"val": r.accuracy, "fresh": judge(r.policy).accuracy,
                               "test": accuracy(evaluator.release(r.policy).to(args.device), splits.test)})
    else:
        for r in top:
            pruned = evaluator.pruner.prune(r.policy).to(args.device)
            recalibrate_batchnorm(pruned, evaluator.bn_inputs, evaluator.batch_size)
            candidates.append({"val": r.accuracy, "fresh": accuracy(pruned, fresh),
                               "test": accuracy(pruned, splits.test)})
    chosen = max(candidates, key=lambda c: c["fresh"])
    return {"rerank_k": len(candidates), "rerank_fresh_size": len(fresh), "rerank_candidates": candidates,
            "rerank_test": chosen["test"]}


BACKFILLED = {"best_test_release": {"reconstruct": False}, "best_test_reconstructed": {"reconstruct": True}}


def backfill(ledger: Path) -> None:
    """Measure the release-BN and reconstructed test accuracies of rows recorded before they were
    measured (same policy, seed, criterion and bounds, so the same models ``run_one`` would measure)."""
    torch.set_num_threads(1)
    model, splits, _ = reference_setup()
    evaluators: dict[tuple[int, str, float], Evaluator] = {}  # building one ranks every group's channels
    found: dict[tuple[RowKey, str], float] = {}
    for r in map(json.loads, ledger.read_text().splitlines()):
        for column, options in BACKFILLED.items():
            if column in r or _setting(r, "checkpoint"):  # rows on other checkpoints were recorded complete
                continue
            if _pruner_key(r) not in evaluators:
                space = reference_setup(_setting(r, "max_ratio"))[2]
                evaluators[_pruner_key(r)] = Evaluator(model, space, train_data=splits.train, val_data=splits.val,
                                                       val_size=1, bn_batches=0, path="exact", seed=r["seed"],
                                                       importance=_setting(r, "importance"))
            released = evaluators[_pruner_key(r)].release(Policy(r["policy"]), **options)
            found[_row_key(r), column] = accuracy(released, splits.test)
            print(f"{_row_key(r)} {column}: {found[_row_key(r), column]:.2%}", flush=True)
    # re-read: other searches may have appended rows meanwhile
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    for r in rows:
        for column in BACKFILLED:
            if column not in r and (_row_key(r), column) in found:
                r[column] = found[_row_key(r), column]
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _setting(row: dict, name: str) -> Any:
    return row.get(name, SETTINGS[name])


def _settings_asked(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in SETTINGS}


def _fills_asked(backend: str, args: argparse.Namespace) -> bool:
    if args.fill_budget is None or backend not in REPAIRING:
        return backend in FILLING
    return args.fill_budget == "on"


def _fills(row: dict) -> bool:
    return row.get("fills_budget", False)  # rows recorded before the projection could fill


def _pruner_key(row: dict) -> tuple[int, str, float]:
    return row["seed"], _setting(row, "importance"), _setting(row, "max_ratio")


def _row_key(row: dict) -> RowKey:
    return (row["budget"], row["backend"], row["seed"], _fills(row), *(_setting(row, name) for name in SETTINGS))


def row_label(row: dict) -> str:
    """The row's backend, with the settings it ran under where they differ from the defaults."""
    notes = [] if _setting(row, "importance") == SETTINGS["importance"] else [_setting(row, "importance")]
    if _fills(row) != (row["backend"] in FILLING):
        notes.append("fill" if _fills(row) else "repair only")
    if _setting(row, "val_size") != SETTINGS["val_size"]:
        notes.append(f"val {_setting(row, 'val_size'):,}")
    if _setting(row, "bn_batches") != SETTINGS["bn_batches"]:
        notes.append(f"BN {_setting(row, 'bn_batches')} batches")
    if _setting(row, "max_ratio") != SETTINGS["max_ratio"]:
        notes.append(f"ratios ≤ {_setting(row, 'max_ratio'):g}")
    if _setting(row, "checkpoint") != SETTINGS["checkpoint"]:
        notes.append(f"model {Path(_setting(row, 'checkpoint')).stem}")
    if _setting(row, "evaluation") != SETTINGS["evaluation"]:
        notes.append(f"ranked by {_setting(row, 'evaluation')}")
    return row["backend"] + (f" ({', '.join(notes)})" if notes else "")


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (evaluation), 1 CPU thread per search"
    return "CPU, 1 thread per search"


def _span(counts: list[int]) -> str:  # a search may stop early when it only re-proposes evaluated policies
    if not counts:
        return ""
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2%}"  # the seeds column says it is one
    return f"{statistics.mean(values):.2%} ± {statistics.stdev(values):.2%}"


def write_markdown(rows: list[dict], path: Path) -> None:
    commands = list(dict.fromkeys(r["command"] for r in rows))  # each row was made by one of these
    checkpoints = {_setting(r, "checkpoint") for r in rows}
    only = next(iter(checkpoints)) if len(checkpoints) == 1 else None
    meta_path = Path(str(only)).with_suffix(".json") if only else None
    if meta_path is not None and meta_path.exists():  # a table of one other model: say which, and its accuracy
        meta = json.loads(meta_path.read_text())
        title = f"{meta['model']} on {meta['dataset']}"
        model_line = (f"Model: `{meta_path.with_suffix('.pt')}`, {meta['test_accuracy']:.2%} test dense "
                      f"(`{meta['command']}`). ")
    else:
        meta_path, title = None, "ResNet-20 on Fashion-MNIST"
        model_line = ("Reference model: 92.53% test (rows marked *model X* start from another training of it, see "
                      "`benchmarks/results/reference_variants/README.md`). ")
    lines = [f"# Search quality: {title}", "", "Commands (each row of search_quality.jsonl names "
             "its own):", "", *[f"- `{c}`" for c in commands], "",
             model_line + "Search on adaptive-BN validation accuracy "
             "(validation images carved from TRAIN); best policy physically pruned, FLOPs counted, test "
             "accuracy on the 10k TEST split without and with fine-tuning. "
             "*Release BN*: the same pruned model with its BatchNorm statistics "
             "re-estimated on 8,192 TRAIN images instead of the search's 512. *Reconstructed*: before that, the "
             "layers that lost input channels refitted by least squares to the dense model's outputs on 512 TRAIN "
             "images (what `autoprune run` ships; no gradient step, no label). The fine-tune starts from the "
             "pruned model without reconstruction. "
             "Overhead = fraction of wall time outside forward passes (for rows ranked by refit it includes the refit "
             "itself). *Val - test*: the search's best score minus the test accuracy of the model it scored (for "
             "rows ranked by refit, the reconstructed one). *Steps*: units of work (a DDPG episode, a TPE "
             "trial, a generation); a DDPG episode that re-proposes an evaluated policy costs its training but "
             "adds no evaluation (recorded since the release-BN column was added).", "",
             *(["Issue #4's reference points at 50% FLOPs (a plain Torch-Pruning + Optuna TPE script, 2,000 "
                "validation images): uniform 76.5% test; TPE 88.3% test after 80 trials, 88.8% after 400 "
                "(validation 90.0%).", ""] if meta_path is None else []),
             "Ran on: " + "; ".join(sorted({f"{r.get('device', 'CPU')}, torch {r.get('torch', '?')}" for r in rows})),
             "",
             *_verdict(rows)]
    for model in sorted({_setting(r, "model") for r in rows}, key=lambda m: (m != SETTINGS["model"], m)):
        lines += [f"## {model}", "", *_dense_line(model), *_table([r for r in rows if _setting(r, "model") == model]),
                  ""]
    path.write_text("\n".join(lines))


def _dense_line(model: str) -> list[str]:
    """For a model other than the reference: its committed checkpoint's dense test accuracy and command."""
    if model == SETTINGS["model"]:
        return []
    meta = json.loads(reference_checkpoint(model, "fashion_mnist").with_suffix(".json").read_text())
    return [f"Dense: {meta['test_accuracy']:.2%} test (`{meta['command']}`).", ""]


PEER = "modelopt-fastnas"  # rows of benchmarks/modelopt_fastnas.py: what a user would pick instead


def _verdict(rows: list[dict]) -> list[str]:
    """Per model, budget and ranking evaluator (criterion and bounds at their defaults): the best backend's mean
    test accuracy minus uniform's, random's and ModelOpt FastNAS's, on the shipped model and after the fine-tune."""
    peers = [r for r in rows if r["backend"] == PEER]
    other = [n for n in SETTINGS if n not in ("model", "evaluation", "val_size", "bn_batches")]
    rows = [r for r in rows if all(_setting(r, n) == SETTINGS[n] for n in other) and _fills(r) == (
        r["backend"] in FILLING) and "best_test_reconstructed" in r]
    lines = ["## Verdict: what the search buys over uniform pruning, random search and ModelOpt", "",
             "3-seed means of the rows below (criterion and ratio bounds at their defaults). Shipped: the "
             "reconstructed model's test accuracy (no fine-tune); FastNAS's shipped model is its subnet with "
             "BatchNorm re-estimated (ModelOpt has no refit). FT: after the fine-tune. *Best*: the non-uniform "
             "backend with the best shipped mean. *Wall*: the best backend's mean search seconds / FastNAS's.", "",
             "| model | FLOPs | ranked by | best | best − uniform, shipped | best − random, shipped "
             "| best − uniform, FT | best − random, FT | best − FastNAS, shipped | best − FastNAS, FT | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell_of(r: dict) -> tuple:
        return (_setting(r, "model"), r["budget"], _setting(r, "evaluation"), _setting(r, "val_size"),
                _setting(r, "bn_batches"))
    cells = sorted(set(map(cell_of, rows)), key=lambda c: (c[0] != SETTINGS["model"], c[0], -c[1], c[2:]))
    for cell in cells:
        model, budget, evaluation, val_size, bn_batches = cell
        mean: dict[str, tuple[float, float, float]] = {}
        for backend in sorted({r["backend"] for r in rows}):
            rs = [r for r in rows if cell_of(r) == cell and r["backend"] == backend]
            if rs:
                mean[backend] = _shipped_finetuned_wall(rs, "best_test_reconstructed")
        peer = [r for r in peers if (_setting(r, "model"), r["budget"]) == (model, budget)]
        if peer:  # ModelOpt has no refit: what it ships is its subnet with BatchNorm re-estimated
            mean[PEER] = _shipped_finetuned_wall(peer, "best_test_release")
        learned = {b: m for b, m in mean.items() if b not in ("uniform", PEER)}
        if not learned or not {"uniform", "random"} & mean.keys():  # a side study: nothing to compare it with
            continue
        best = max(learned, key=lambda b: learned[b][0])
        gains = [f"{100 * (mean[best][i] - mean[base][i]):+.2f}" if base in mean else "–"
                 for i in (0, 1) for base in ("uniform", "random")]
        gains += [f"{100 * (mean[best][i] - mean[PEER][i]):+.2f}" if PEER in mean else "–" for i in (0, 1)]
        wall = f"{mean[best][2]:.0f} / {mean[PEER][2]:.0f}" if PEER in mean else f"{mean[best][2]:.0f}"
        ranked = evaluation if (val_size, bn_batches) == (SETTINGS["val_size"], SETTINGS["bn_batches"]) else (
            f"{evaluation} (val {val_size:,}, BN {bn_batches})")
        lines.append(f"| {model} | {budget:.0%} | {ranked} | {best} | " + " | ".join(gains) + f" | {wall} |")
    return [*lines, ""]


def _shipped_finetuned_wall(rows: list[dict], shipped: str) -> tuple[float, float, float]:
    """Means over ``rows`` of the shipped model's test accuracy (column ``shipped``), the fine-tuned one's, and
    the search's wall seconds."""
    return tuple(statistics.mean(r[k] for r in rows) for k in (shipped, "best_test_finetuned", "wall_s"))


def _val_test_gap(row: dict) -> float:
    """The search's score minus the test accuracy of the same kind of model: refit-ranked searches scored
    refitted candidates, so their gap is to the reconstructed (shipped) model, not the plainly pruned one."""
    if _setting(row, "evaluation") == "refit":
        return row["best_val"] - row["best_test_reconstructed"]
    return row["val_test_gap"]


def _overhead(rows: list[dict]) -> str:
    known = [r["outside_forward"] for r in rows if not math.isnan(r["outside_forward"])]  # NaN: not measured
    return f"{statistics.mean(known):.1%}" if known else "-"


def _table(rows: list[dict]) -> list[str]:
    lines = ["| budget | backend | seeds | evals | steps | val (search) | test (no FT) | test, release BN (no FT) "
             "| test, reconstructed (no FT) | test after FT | val - test | evals/s | overhead | budget met "
             "| speed-up (torch) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["budget"], row_label(r)) for r in rows}, key=lambda k: (-k[0], k[1]))
    for budget, backend in keys:
        rs = [r for r in rows if r["budget"] == budget and row_label(r) == backend]
        speedups = [r["speedup_torch"] for r in rs if "speedup_torch" in r]
        lines.append(
            f"| {budget:.0%} FLOPs | {backend} | {len(rs)} | {_span([r['evaluations'] for r in rs])} "
            f"| {_span([r['steps'] for r in rs if 'steps' in r]) or '-'} "
            f"| {_mean_std([r['best_val'] for r in rs])} | {_mean_std([r['best_test'] for r in rs])} "
            f"| {_mean_std([r['best_test_release'] for r in rs if 'best_test_release' in r]) or '-'} "
            f"| {_mean_std([r['best_test_reconstructed'] for r in rs if 'best_test_reconstructed' in r]) or '-'} "
            f"| {_mean_std([r['best_test_finetuned'] for r in rs])} "
            f"| {statistics.mean(map(_val_test_gap, rs)):+.2%} "
            f"| {statistics.mean(r['evals_per_s'] for r in rs):.2f} "
            f"| {_overhead(rs)} "
            f"| {sum(r['meets_budget'] and r['all_feasible'] for r in rs)}/{len(rs)} "
            f"| {f'{statistics.mean(speedups):.2f}×' if speedups else '-'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["uniform", "random", "ddpg", "tpe", "evolution"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    parser.add_argument("--evaluations", type=int, default=300)
    parser.add_argument("--val-size", type=int, default=SETTINGS["val_size"],
                        help="validation images scored per evaluation (other sizes are tabled apart)")
    parser.add_argument("--bn-batches", type=int, default=SETTINGS["bn_batches"],
                        help="batches of 64 TRAIN images that re-estimate BatchNorm per evaluation "
                             "(other counts are tabled apart)")
    parser.add_argument("--importance", default=SETTINGS["importance"], choices=IMPORTANCE_NAMES,
                        help="the pruner's channel-ranking criterion (rows of other criteria are tabled apart)")
    parser.add_argument("--max-ratio", type=float, default=SETTINGS["max_ratio"],
                        help="the most of any group a policy may prune (other bounds are tabled apart)")
    parser.add_argument("--model", default=SETTINGS["model"], help="the committed Fashion-MNIST checkpoint to prune "
                        "(tabled apart)")
    parser.add_argument("--evaluation", default=SETTINGS["evaluation"], choices=sorted(EVALUATORS),
                        help="what a search ranks policies by: the plainly pruned candidate after BN recalibration, "
                             "or the candidate refitted by least squares (other kinds are tabled apart)")
    parser.add_argument("--checkpoint", default=SETTINGS["checkpoint"],
                        help="another trained ResNet-20 / Fashion-MNIST checkpoint instead of the committed "
                             "reference (rows are tabled apart)")
    parser.add_argument("--fill-budget", choices=["on", "off"],
                        help="override whether random / evolution / TPE fill policies under budget "
                             "(default: each backend's own; other settings are tabled apart)")
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--finetune-lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu", help="where pruned copies are scored: cpu or cuda")
    parser.add_argument("--jobs", type=int, default=1, help="searches run at once, one process each")
    parser.add_argument("--rerank", type=int, default=0, metavar="K",
                        help="also re-score the K best policies on the validation images the search did not use "
                             "and record the test accuracy of the one that scores best there")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--markdown-only", action="store_true", help="rebuild the .md from the .jsonl and stop")
    parser.add_argument("--backfill", action="store_true",
                        help="add the release-BN and reconstructed test accuracies to rows recorded without them, "
                             "rebuild the .md, stop")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = out / "search_quality.jsonl"
    done = set()
    if ledger.exists():
        done = {_row_key(r) for r in map(json.loads, ledger.read_text().splitlines())}
    command = ("python benchmarks/search_quality.py " + " ".join(sys.argv[1:])).strip()
    if args.backfill:
        backfill(ledger)
    if args.markdown_only or args.backfill:
        rows = [json.loads(line) for line in ledger.read_text().splitlines()]
        write_markdown(rows, out / "search_quality.md")
        return
    todo = [(backend, seed, flops) for flops in args.budgets for backend in args.backends for seed in args.seeds
            if (flops, backend, seed, _fills_asked(backend, args), *_settings_asked(args).values()) not in done]
    todo.sort(key=lambda job: job[0] == "uniform")  # the one-evaluation baseline last: long searches start first
    # spawn: each search starts from a clean interpreter (no forked torch thread pools or CUDA state)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context,
                                                initializer=_exit_with_parent) as pool:
        futures = {pool.submit(run_one, *job, args): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            row = {**future.result(), "command": command}
            with ledger.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['budget']:.0%} {row['backend']} seed {row['seed']}: test {row['best_test']:.2%} "
                  f"(val {row['best_val']:.2%}), after FT {row['best_test_finetuned']:.2%}, "
                  f"{row['evals_per_s']:.2f} evals/s, overhead {row['outside_forward']:.1%}", flush=True)
            rows = [json.loads(line) for line in ledger.read_text().splitlines()]
            write_markdown(rows, out / "search_quality.md")


if __name__ == "__main__":
    main()
