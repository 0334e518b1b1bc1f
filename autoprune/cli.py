"""The ``autoprune`` command line. Exit codes: 0 success, 2 usage/config error, 1 failure in the run."""

from __future__ import annotations

import argparse
import errno
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


class UsageError(Exception):
    """A problem with what the user asked for (exit code 2, one line, no traceback)."""


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from autoprune.data import load_dataset
    from autoprune.models import MODEL_NAMES
    from autoprune.models.checkpoints import save_checkpoint
    from autoprune.models.zoo import create_model
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
    """A short TPE search on the reference ResNet-20 / Fashion-MNIST, then ONNX export and the report."""
    from autoprune import run
    from autoprune.config import Config

    config = Config.model_validate({
        "model": {"name": "resnet20"},
        "data": {"name": "fashion_mnist", "val_size": 5000},  # the checkpoint's own held-out images
        "budget": {"flops": args.flops},
        # multiples of 8 channels: faster than dense on torch and onnxruntime (benchmarks/results/channel_multiple.md)
        "pruner": {"importance": "l2", "bounds": [0.0, 0.8], "round_to": 8},
        "search": {"backend": "tpe", "evaluations": args.evaluations, "options": {"n_startup_trials": 10}},
        "evaluation": {"val_size": args.val_size, "bn_batches": args.bn_batches},
        "seed": args.seed, "threads": args.threads})
    run_dir = args.run_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    outcome = run.start(config, run_dir, show_progress=not args.quiet)
    _print_outcome(outcome)
    if args.finetune_epochs:
        _finetune(outcome.run_dir, args.finetune_epochs, distill=False, quiet=args.quiet)
    _export(outcome.run_dir, "onnx")
    _report(outcome.run_dir)
    return 0 if outcome.summary["meets_budget"] else 1


def _finetune(run_dir, epochs: float, *, distill: bool, quiet: bool, lr: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    from autoprune.finetune import finetune_run

    r = finetune_run(run_dir, epochs=epochs, lr=lr, distill=distill, show_progress=not quiet)
    print(f"fine-tuned {epochs:g} epoch(s){' with distillation' if distill else ''} in {r['seconds']:.0f} s: "
          f"test accuracy {r['test_accuracy_before']:.2%} -> {r['test_accuracy']:.2%} "
          f"(dense {r['dense_test_accuracy']:.2%}); saved {run_dir}/{r['file']}, "
          + ("shipped as finetuned.pt (best on validation)" if r["shipped"] else
             "not shipped: an earlier fine-tune scores better on validation (finetune.json lists them)"))


def _export(run_dir, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from autoprune.export import export_run

    e = export_run(run_dir, fmt)
    print(f"exported {e['source']} as {fmt}: {run_dir}/{e['path']}; outputs match torch to {e['max_abs_error']:.1e}; "
          f"measured latency {e['latency_ms']:.3f} ms ({e['runtime']}, batch 1, 1 thread)")


def _report(run_dir) -> None:  # type: ignore[no-untyped-def]
    from autoprune.report import build_report

    print(f"report: {build_report(run_dir)}")


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
    m = s.get("measured_latency")
    if m:
        print(f"measured latency ({m['runtime']}): {m['pruned_ms']:.3f} ms = {m['ratio']:.1%} of dense "
              f"({m['dense_ms']:.3f} ms; median of {len(m['round_ratios'])} rounds); "
              f"{'within' if m['within_budget'] else 'NOT within'} the latency budget "
              f"after measuring {len(m['checked'])} model(s)"
              + (" (the shipped one resized by measurement: no candidate landed within latency.window)"
                 if m.get("resized") else ""))
        if not m["within_budget"]:
            print("the latency table predicted these candidates within the limit; search further under it with "
                  "--set latency.margin=0.05 (5%)")
        elif not m.get("lands", True):
            print("it leaves some of the latency budget unused (more than latency.window under the limit), and no "
                  "candidate as accurate measured closer to it; search longer (--evaluations) or lower latency.margin")


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune.config import load_config  # light: a missing or malformed file is reported before torch loads

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
                      (args.seed, "seed"), (args.workers, "search.workers"), (args.address, "search.address")):
        if flag is not None:
            overrides[key] = str(flag)
    config = load_config(args.config, overrides)
    run_dir = args.run_dir or f"runs/{config.search.backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    from autoprune import run

    outcome = run.start(config, run_dir, show_progress=not args.quiet)
    _print_outcome(outcome)
    if not args.no_report:
        _report(outcome.run_dir)
    return 0 if outcome.summary["meets_budget"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    _report(args.run_dir)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    _finetune(args.run_dir, args.epochs, distill=args.distill, quiet=args.quiet, lr=args.lr)
    _report(args.run_dir)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    for fmt in args.format:
        _export(args.run_dir, fmt)
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    """Backends x seeds x budgets as one Ray Tune experiment (or --resume one)."""
    if args.resume:
        from autoprune.experiments import resume_experiment

        grid = resume_experiment(args.resume)
    else:
        if not args.config or not args.name:
            raise UsageError("experiment needs CONFIG and --name (or --resume EXPERIMENT_DIR)")
        from autoprune.config import load_config

        base = load_config(args.config, _pairs(args.set, "--set"))
        budgets = []
        for item in args.budget or []:
            budget = {k: float(v) for k, v in _pairs(item.split(","), "--budget").items()}
            unknown = set(budget) - {"flops", "params", "latency", "latency_ms"}
            if unknown:
                raise UsageError(f"--budget {sorted(unknown)[0]}: use flops, params, latency or latency_ms")
            budgets.append(budget)
        from autoprune.experiments import experiment_grid, run_experiment

        configs = experiment_grid(base, backends=args.backends or (), seeds=args.seeds or (), budgets=budgets)
        grid = run_experiment(configs, name=args.name, results_dir=args.results_dir)
    results = [grid[i] for i in range(len(grid))]
    for r in results:
        m = r.metrics or {}
        state = f"error: {r.error}" if r.error else (
            f"{m.get('evaluations')} evaluations, test {m.get('test_accuracy', float('nan')):.2%}")
        print(f"{m.get('run_dir', r.path)}: {state}")
    return 1 if any(r.error for r in results) else 0


def _cmd_pruningnet(args: argparse.Namespace) -> int:
    """Train a PruningNet into a run directory; ``autoprune search CONFIG --run-dir`` there then uses it."""
    from autoprune.config import load_config

    overrides = _pairs(args.set, "--set")
    if args.epochs is not None:
        overrides["pruningnet.epochs"] = str(args.epochs)
    overrides["evaluation.kind"] = "pruningnet"
    config = load_config(args.config, overrides)
    run_dir = args.run_dir or f"runs/pruningnet-{time.strftime('%Y%m%d-%H%M%S')}"
    from autoprune import run

    path = run.pretrain_pruningnet(config, run_dir, show_progress=not args.quiet)
    print(f"PruningNet trained: {path}; search with it: autoprune search {args.config} --run-dir {path.parent} "
          "--set evaluation.kind=pruningnet" + "".join(f" --set {item}" for item in args.set or ()) +
          (f" --set pruningnet.epochs={args.epochs:g}" if args.epochs is not None else ""))
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from autoprune import run

    outcome = run.resume(args.run_dir, show_progress=not args.quiet, evaluations=args.evaluations,
                         workers=args.workers, address=args.address)
    if outcome.already_finished:
        print(f"{outcome.run_dir} is already finished; nothing to do")
    _print_outcome(outcome)
    if not outcome.already_finished and not args.no_report:
        _report(outcome.run_dir)
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

    d = sub.add_parser("demo", help="search the reference ResNet-20 on Fashion-MNIST at 50%% FLOPs, then report",
                       epilog="examples:\n  autoprune demo\n  autoprune demo --evaluations 100 --finetune-epochs 1",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--flops", type=float, default=0.5, help="FLOPs budget as a fraction of dense (default 0.5)")
    d.add_argument("--evaluations", type=int, default=40, help="policies the TPE search scores (default 40)")
    d.add_argument("--val-size", type=int, default=2000, help="validation images scored (from TRAIN)")
    d.add_argument("--bn-batches", type=int, default=8, help="batches of 64 train images for adaptive BN")
    d.add_argument("--finetune-epochs", type=float, default=0.0, help="fine-tune the result (default: no)")
    d.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--run-dir", help="where the run is written (default runs/demo-TIMESTAMP)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
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
    s.add_argument("--workers", type=int, help="evaluations in parallel on this many Ray actors (default 1: no Ray)")
    s.add_argument("--address", help="join this Ray cluster (e.g. auto, or HOST:6379) instead of a local Ray")
    s.add_argument("--run-dir", help="where the run is written (default runs/BACKEND-TIMESTAMP)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. seed=3")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--no-report", action="store_true", help="skip report.html (it measures latency: seconds)")
    s.set_defaults(func=_cmd_search)

    pn = sub.add_parser("pruningnet", help="MetaPruning's PruningNet: train one into a run directory",
                        epilog="example:\n  autoprune pruningnet train configs/resnet20_fashion_mnist.yaml --epochs 2 "
                               "--run-dir runs/meta\n  autoprune search configs/resnet20_fashion_mnist.yaml "
                               "--run-dir runs/meta --set evaluation.kind=pruningnet --set pruningnet.epochs=2",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pn_sub = pn.add_subparsers(dest="action", required=True, metavar="ACTION")
    pt = pn_sub.add_parser("train", help="train (or continue training) RUN_DIR/pruningnet.pt")
    pt.add_argument("config", help="YAML experiment file: model, data, pruner bounds, pruningnet section")
    pt.add_argument("--epochs", type=float, help="passes over TRAIN (pruningnet.epochs)")
    pt.add_argument("--run-dir", help="where pruningnet.pt is written (default runs/pruningnet-TIMESTAMP)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(func=_cmd_pruningnet)

    r = sub.add_parser("resume", help="continue a search from its run directory",
                       epilog="example:\n  autoprune resume runs/tpe-20261123-101500",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dir")
    r.add_argument("--evaluations", type=int, help="extend the search to this many evaluations in all")
    r.add_argument("--workers", type=int, help="evaluate on this many Ray workers from now on")
    r.add_argument("--address", help="join this Ray cluster from now on")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--no-report", action="store_true", help="skip report.html")
    r.set_defaults(func=_cmd_resume)

    x = sub.add_parser("experiment", help="many searches at once (backends x seeds x budgets) as a Ray Tune experiment",
                       epilog="examples:\n  autoprune experiment configs/resnet20_fashion_mnist.yaml --name compare "
                              "--backends tpe evolution --seeds 0 1 2 --budget flops=0.5 --budget flops=0.3\n"
                              "  autoprune experiment --resume runs/experiments/compare",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("config", nargs="?", help="YAML experiment file: the base every search starts from")
    x.add_argument("--name", help="experiment name (its folder under --results-dir)")
    x.add_argument("--backends", nargs="+", help="one search per backend (default: the config's)")
    x.add_argument("--seeds", nargs="+", type=int, help="one search per seed (default: the config's)")
    x.add_argument("--budget", action="append", metavar="KEY=VALUE[,KEY=VALUE]", help="one search per --budget")
    x.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the base config")
    x.add_argument("--results-dir", default="runs/experiments",
                   help="where experiments are written (one folder per --name; Ray's log in its log.txt)")
    x.add_argument("--resume", metavar="EXPERIMENT_DIR", help="continue an interrupted experiment")
    x.set_defaults(func=_cmd_experiment)

    rep = sub.add_parser("report", help="write RUN_DIR/report.html (+ PNGs): costs, latency, accuracy, plots",
                         epilog="example:\n  autoprune report runs/tpe-20261123-101500",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("run_dir")
    rep.set_defaults(func=_cmd_report)

    f = sub.add_parser("finetune", help="fine-tune the run's pruned model (optionally distilled from the dense one)",
                       epilog="example:\n  autoprune finetune runs/tpe-20261123-101500 --epochs 2 --distill",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("run_dir")
    f.add_argument("--epochs", type=float, default=1.0)
    f.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the one-cycle schedule")
    f.add_argument("--distill", action="store_true", help="distill from the dense model (Hinton et al.)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=_cmd_finetune)

    e = sub.add_parser("export", help="export the run's final model (fine-tuned if any) and measure it",
                       epilog="examples:\n  autoprune export runs/tpe-20261123-101500 --format onnx\n"
                              "  autoprune export runs/tpe-20261123-101500 --format torch onnx",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run_dir")
    e.add_argument("--format", nargs="+", choices=["torch", "onnx"], default=["onnx"],
                   help="torch: torch.export program (model.pt2); onnx: model.onnx")
    e.set_defaults(func=_cmd_export)
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
    except Exception as e:  # a failure inside the run: one line here, the traceback in a log file
        where = getattr(args, "run_dir", None) or "RUN_DIR"
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRORS:  # a full disk, a read-only run directory
            print(f"autoprune: cannot write {e.filename or where}: {_STORAGE_ERRORS[e.errno]}; the evaluations "
                  f"recorded so far are kept: make room (or make it writable), then 'autoprune resume {where}'",
                  file=sys.stderr)
            return 1
        unreachable = _database_unreachable(e)
        if unreachable:
            print(f"autoprune: the ledger database could not be reached ({unreachable}); the evaluations "
                  f"recorded so far are kept in it: when it is back, 'autoprune resume {where}'", file=sys.stderr)
            return 1
        log = _write_traceback(getattr(args, "run_dir", None))
        print(f"autoprune: run failed: {type(e).__name__}: {e}; details in {log}", file=sys.stderr)
        return 1


_STORAGE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}


def _database_unreachable(error: BaseException | None) -> str:
    """The database driver's first line if ``error`` is (or wraps) a lost connection to the ledger's server."""
    found = ""
    while error is not None:
        name = type(error).__name__
        if name in ("OperationalError", "InterfaceError"):  # the driver's own words: the most specific
            lines = str(getattr(error, "orig", None) or error).strip().splitlines()
            return lines[0] if lines else name
        if name == "StorageInternalError" and not found:  # Optuna's wrapper: used if no driver error is inside
            found = name
        error = error.__cause__ or error.__context__
    return found


def _write_traceback(run_dir: str | None) -> str:
    """Append the current traceback to the run's log.txt (or a log file in the temp folder)."""
    import tempfile
    import traceback
    from pathlib import Path

    if run_dir and Path(run_dir).is_dir():
        path = Path(run_dir) / "log.txt"
    else:
        path = Path(tempfile.gettempdir()) / f"autoprune-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with path.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run failed:\n{traceback.format_exc()}\n")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
