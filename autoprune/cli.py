"""The ``autoprune`` command line. Exit codes: 0 success, 2 usage/config error, 1 failure in the run."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


class UsageError(Exception):
    """A problem with what the user asked for (exit code 2, one line, no traceback)."""


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from autoprune.data import load_dataset
    from autoprune.models import MODEL_NAMES, create_model, save_checkpoint
    from autoprune.training import TrainConfig, accuracy, train

    if args.model not in MODEL_NAMES:  # fail before loading any data
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset, val_size=args.val_size, seed=args.seed)
    c, s = splits.input_shape[0], splits.input_shape[-1]
    model = create_model(args.model, in_channels=c, num_classes=splits.num_classes, image_size=s)
    start = time.perf_counter()
    train(model, splits.train, TrainConfig(epochs=args.epochs, batch_size=args.batch_size, max_lr=args.lr,
                                           seed=args.seed))
    seconds = time.perf_counter() - start
    meta = {"model": args.model, "dataset": args.dataset, "in_channels": c, "num_classes": splits.num_classes,
            "image_size": s, "val_size": args.val_size, "split_seed": args.seed, "epochs": args.epochs,
            "train_seconds": round(seconds, 1), "threads": args.threads,
            "val_accuracy": accuracy(model, splits.val), "test_accuracy": accuracy(model, splits.test),
            "command": "autoprune " + " ".join(sys.argv[1:])}
    save_checkpoint(model, args.out, meta)
    print(f"{args.model} on {args.dataset}: test accuracy {meta['test_accuracy']:.4f}, "
          f"val {meta['val_accuracy']:.4f}, {seconds:.0f} s -> {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Uniformly prune the reference ResNet-20 to the FLOPs budget and compare it with the dense model."""
    import json
    from pathlib import Path

    import torch
    from rich.console import Console
    from rich.table import Table

    from autoprune.budget import Budget, uniform_policy
    from autoprune.costs import Costs, count_costs
    from autoprune.data import load_dataset
    from autoprune.evaluation import Evaluator, recalibrate_batchnorm
    from autoprune.models import load_checkpoint, reference_checkpoint
    from autoprune.pruning import export_onnx, save_pruned
    from autoprune.search_spaces import SearchSpace
    from autoprune.training import accuracy

    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(reference_checkpoint("resnet20", "fashion_mnist"))
    splits = load_dataset(meta["dataset"], val_size=meta["val_size"], seed=meta["split_seed"])
    example = splits.example_inputs()
    space = SearchSpace.from_model(model, example, bounds=(0.0, 0.8))
    budget = Budget(flops=args.flops)
    policy = uniform_policy(space, budget)
    evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val, budget=budget,
                          val_size=args.val_size, bn_batches=args.bn_batches)
    console.print(f"[bold]{len(space)} coupled groups[/]; uniform ratio {next(iter(policy.values())):.3f} "
                  f"meets {budget}")
    result = evaluator(policy)
    if result.failed:
        raise RuntimeError(result.failed)
    pruned = evaluator.pruner.prune(policy)
    recalibrate_batchnorm(pruned, evaluator.bn_inputs, evaluator.batch_size)
    counted = count_costs(pruned, example)
    dense = space.dense_costs
    dense_test, pruned_test = accuracy(model, splits.test), accuracy(pruned, splits.test)
    table = Table(title=f"ResNet-20 on Fashion-MNIST, uniform pruning to {budget}")
    for col in ("", "dense", "pruned", "pruned / dense"):
        table.add_column(col, justify="right")
    table.add_row("FLOPs (MACs)", f"{dense.macs / 1e6:.2f} M", f"{counted.macs / 1e6:.2f} M",
                  f"{counted.macs / dense.macs:.1%}")
    table.add_row("parameters", f"{dense.params / 1e3:.1f} k", f"{counted.params / 1e3:.1f} k",
                  f"{counted.params / dense.params:.1%}")
    table.add_row("val accuracy (adaptive BN)", f"{evaluator.dense_accuracy():.2%}", f"{result.accuracy:.2%}", "")
    table.add_row("test accuracy", f"{dense_test:.2%}", f"{pruned_test:.2%}", "")
    console.print(table)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "best_policy.json").write_text(policy.to_json(indent=2))
    spec = {k: meta[k] for k in ("model", "in_channels", "num_classes", "image_size")}
    save_pruned(run_dir / "pruned.pt", pruned, evaluator.pruner.plan(policy), spec)
    onnx_err = export_onnx(pruned, splits.example_inputs(8), run_dir / "pruned.onnx")
    summary = {"budget": str(budget), "policy": policy.to_dict(), "dense": vars(dense), "pruned": vars(counted),
               "analytic_equals_counted": counted == Costs(result.flops, result.params),
               "meets_budget": budget.holds(counted, dense),
               "val_accuracy": result.accuracy, "dense_test_accuracy": dense_test, "test_accuracy": pruned_test,
               "seconds": result.seconds, "path": result.path, "onnx_max_abs_error": onnx_err}
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    ok = summary["meets_budget"] and summary["analytic_equals_counted"]
    console.print(f"budget {'met' if ok else 'NOT met'} (counted on the physically pruned model); "
                  f"evaluation {result.seconds['total']:.2f} s via the {result.path} path; "
                  f"ONNX export matches torch to {onnx_err:.1e}; written to {run_dir}/")
    return 0 if ok else 1


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} flops=0.5")
        out[key] = value
    return out


def _print_outcome(outcome) -> None:  # type: ignore[no-untyped-def]
    s = outcome.summary
    d, p = s["dense"], s["pruned"]
    print(f"{s['backend']}: {s['evaluations']} evaluations; pruned FLOPs {p['flops'] / d['flops']:.1%}, "
          f"params {p['params'] / d['params']:.1%} of dense; test accuracy {p['test_accuracy']:.2%} "
          f"(dense {d['test_accuracy']:.2%}); budget {'met' if s['meets_budget'] else 'NOT met'}; "
          f"results in {outcome.run_dir}")


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune import run
    from autoprune.config import load_config

    overrides = _pairs(args.set, "--set")
    budget = _pairs(args.budget, "--budget")
    if budget:  # --budget replaces the config's budget section
        unknown = set(budget) - {"flops", "params", "latency", "latency_ms"}
        if unknown:
            raise UsageError(f"--budget {sorted(unknown)[0]}: use flops, params, latency or latency_ms")
        overrides.update({f"budget.{k}": v for k, v in budget.items()})
        for k in {"flops", "params", "latency", "latency_ms"} - set(budget):
            overrides[f"budget.{k}"] = "null"
    for flag, key in ((args.backend, "search.backend"), (args.evaluations, "search.evaluations"),
                      (args.seed, "seed")):
        if flag is not None:
            overrides[key] = str(flag)
    config = load_config(args.config, overrides)
    run_dir = args.run_dir or f"runs/{config.search.backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    outcome = run.start(config, run_dir, show_progress=not args.quiet)
    _print_outcome(outcome)
    return 0 if outcome.summary["meets_budget"] else 1


def _cmd_resume(args: argparse.Namespace) -> int:
    from autoprune import run

    outcome = run.resume(args.run_dir, show_progress=not args.quiet)
    if outcome.already_finished:
        print(f"{outcome.run_dir} is already finished; nothing to do")
    _print_outcome(outcome)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autoprune",
        description="Search per-layer prune ratios that meet a FLOPs, parameter or latency budget.",
        epilog="examples:\n  autoprune demo\n  autoprune train --model resnet20 --dataset fashion_mnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a zoo model on a built-in dataset",
                       epilog="example:\n  autoprune train --model resnet20 --dataset fashion_mnist --epochs 4 "
                              "--out runs/resnet20.pt", formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", default="resnet20")
    t.add_argument("--dataset", default="fashion_mnist")
    t.add_argument("--epochs", type=float, default=4.0)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    t.add_argument("--val-size", type=int, default=5000, help="TRAIN images held out for validation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", required=True, help="checkpoint path to write")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("demo", help="prune the reference ResNet-20 on Fashion-MNIST to 50%% FLOPs",
                       epilog="example:\n  autoprune demo --flops 0.5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--flops", type=float, default=0.5, help="FLOPs budget as a fraction of dense (default 0.5)")
    d.add_argument("--val-size", type=int, default=2000, help="validation images scored (from TRAIN)")
    d.add_argument("--bn-batches", type=int, default=8, help="batches of 64 train images for adaptive BN")
    d.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    d.add_argument("--run-dir", default="runs/demo")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("search", help="search prune ratios that meet a budget, as a config describes",
                       epilog="examples:\n  autoprune search configs/resnet20_fashion_mnist.yaml\n"
                              "  autoprune search configs/digits_smoke.yaml --backend evolution --budget flops=0.4 "
                              "--evaluations 20 --set evaluation.val_size=200",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", help="YAML experiment file (see configs/)")
    s.add_argument("--backend", help="ddpg, tpe, gp, cmaes, qmc, nsga2, evolution, random or uniform")
    s.add_argument("--budget", action="append", metavar="KEY=VALUE",
                   help="flops/params as a fraction (<= 1) or absolute count; latency (fraction) or latency_ms")
    s.add_argument("--evaluations", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--run-dir", help="where the run is written (default runs/BACKEND-TIMESTAMP)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. seed=3")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_search)

    r = sub.add_parser("resume", help="continue a search from its run directory",
                       epilog="example:\n  autoprune resume runs/tpe-20261123-101500",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dir")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_resume)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, ValueError, FileNotFoundError) as e:  # config, policy, budget, model, dataset problems
        print(f"autoprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted; continue with 'autoprune resume RUN_DIR'", file=sys.stderr)
        return 130
    except Exception as e:  # a failure inside the run: one line here, the traceback in the run's log
        import logging
        import traceback

        logging.getLogger("autoprune").error("run failed:\n%s", traceback.format_exc())
        where = getattr(args, "run_dir", None)
        hint = f"; details in {where}/log.txt" if where else ""
        print(f"autoprune: run failed: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
