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
    from autoprune.models import create_model, save_checkpoint
    from autoprune.training import TrainConfig, accuracy, train

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"autoprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
