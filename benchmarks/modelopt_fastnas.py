"""NVIDIA Model Optimizer's FastNAS pruning on the reference checkpoint: the row a user would get instead.

FastNAS (``modelopt.torch.prune``, mode ``fastnas``) scores each prunable width alone (a sensitivity map:
one score per channel count per layer group, the rest of the model dense), then binary-searches one
degradation threshold until the subnet meets the FLOPs constraint; it never scores a combination.
Here it scores with the same thing our searches rank by by default in this table: accuracy on the first
``--val-size`` validation images after BatchNorm re-estimation (ModelOpt's own, on 50 batches of 64 TRAIN
images). The subnet it returns is then measured as ``search_quality.py`` measures a search's best policy:
its FLOPs counted by our counter, test accuracy after re-estimating BatchNorm (on those 50 batches: *test*;
on 8,192 TRAIN images as our release does: *release BN*, what a user of ModelOpt ships without
fine-tuning), the same 1-epoch fine-tune, and its measured speed-up. ModelOpt has no least-squares refit,
so the *reconstructed* column stays empty. Rows are appended to ``search_quality.jsonl`` as backend
``modelopt-fastnas`` and tabled beside the searches; the verdict compares the best search with them.

ModelOpt needs its own environment (it pulls a torchvision that cannot load beside the pinned CPU torch):

    make modelopt-venv
    .venv-modelopt/bin/python benchmarks/modelopt_fastnas.py --budgets 0.5 0.3 0.2

Quirks met (ModelOpt 0.47): its default channel divisor (32) cannot reach 50% FLOPs on ResNet-20 (8 here);
its FLOPs constraint counts through torchprofile (0.0.4; 0.1.0 breaks) as 2 x MACs, a ratio equal to ours;
the model ``mtp.prune`` returns still carries the BatchNorm statistics of the last subnet it scored.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py
from search_quality import SETTINGS, write_markdown
from torch.utils.data import DataLoader, TensorDataset

from autoprune.costs import count_costs
from autoprune.evaluation import recalibrate_batchnorm
from autoprune.latency import make_runner, measure
from autoprune.training import TrainConfig, accuracy, train

try:
    import modelopt
    import modelopt.torch.prune as mtp
except ImportError:
    sys.exit("modelopt_fastnas.py: nvidia-modelopt is not installed here; run `make modelopt-venv` and use "
             ".venv-modelopt/bin/python")

BN_BATCHES, BATCH = 50, 64  # ModelOpt's default BN re-estimation: max_iter_data_loader batches
RELEASE_BN_IMAGES = 8192  # as autoprune's release


def _divisor_rules(divisor: int) -> dict:
    """FastNAS's rules with every channel count a multiple of ``divisor`` (the default 32 cannot reach 50%)."""
    conv = {"*": {"channel_divisor": divisor}}
    feature = {"*": {"feature_divisor": divisor}}
    return {"nn.Conv2d": conv, "nn.BatchNorm2d": feature, "nn.Linear": feature}


def run_one(flops: float, seed: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, splits, space = reference_setup(args.max_ratio, None, args.model)
    x_val, y_val = splits.val.tensors
    val = TensorDataset(x_val[: args.val_size], y_val[: args.val_size])
    x_train, _ = splits.train.tensors
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    calibration = x_train[pick[: BN_BATCHES * BATCH]]
    # ModelOpt re-estimates BN by running its data loader; its batches are inputs only (collect_func below)
    loader = DataLoader(calibration, batch_size=BATCH, shuffle=False)
    scored = []

    def score(subnet: torch.nn.Module) -> float:
        scored.append(1)
        return 100 * accuracy(subnet, val)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pruned, _ = mtp.prune(copy.deepcopy(model), mode=[("fastnas", _divisor_rules(args.divisor))],
                              constraints={"flops": f"{100 * flops:g}%"}, dummy_input=splits.example_inputs(),
                              config={"data_loader": loader, "collect_func": lambda batch: batch,
                                      "score_func": score, "verbose": False,
                                      "checkpoint": str(Path(tmp) / "fastnas_search.pth")})
        wall = time.perf_counter() - start
    counted = count_costs(pruned, splits.example_inputs())
    recalibrate_batchnorm(pruned, calibration, BATCH)
    best_val, test = accuracy(pruned, val), accuracy(pruned, splits.test)
    released = copy.deepcopy(pruned)
    recalibrate_batchnorm(released, x_train[pick[:RELEASE_BN_IMAGES]], BATCH)
    test_release = accuracy(released, splits.test)
    x = splits.tensor_inputs(1)
    seconds = measure({"dense": make_runner(model, x), "shipped": make_runner(released, x)}, repeats=30)
    torch.manual_seed(seed)
    train(pruned, splits.train, TrainConfig(epochs=args.finetune_epochs, max_lr=args.finetune_lr, seed=seed),
          show_progress=False)
    return {"budget": flops, "backend": "modelopt-fastnas", "seed": seed,
            **{**SETTINGS, "model": args.model, "val_size": args.val_size, "bn_batches": BN_BATCHES,
               "max_ratio": args.max_ratio},
            "fills_budget": False, "evaluations": len(scored), "steps": len(scored), "failed": 0,
            "wall_s": wall, "evals_per_s": len(scored) / wall, "outside_forward": float("nan"),
            "best_val": best_val, "best_test": test, "best_test_release": test_release,
            "speedup_torch": seconds["dense"] / seconds["shipped"], "val_test_gap": best_val - test,
            "best_test_finetuned": accuracy(pruned, splits.test),
            "counted_flops_ratio": counted.macs / space.dense_costs.macs,
            "meets_budget": counted.macs <= flops * space.dense_costs.macs, "all_feasible": True,
            "channel_divisor": args.divisor, "device": "CPU, 1 thread per search", "torch": torch.__version__,
            "modelopt": modelopt.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds the BN images and the fine-tune (FastNAS itself draws nothing)")
    parser.add_argument("--model", default=SETTINGS["model"])
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--divisor", type=int, default=8, help="channel counts are multiples of this")
    parser.add_argument("--max-ratio", type=float, default=0.95,
                        help="FastNAS's narrowest choice is 5%% of a layer's channels: it may prune 95%%")
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--finetune-lr", type=float, default=0.05)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    ledger = Path(args.out) / "search_quality.jsonl"
    rows = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
    done = {(r["budget"], r["seed"], r.get("model", SETTINGS["model"])) for r in rows
            if r["backend"] == "modelopt-fastnas"}
    command = ("python benchmarks/modelopt_fastnas.py " + " ".join(sys.argv[1:])).strip()
    for flops in args.budgets:
        for seed in args.seeds:
            if (flops, seed, args.model) in done:  # a finished row is never re-run
                continue
            row = {**run_one(flops, seed, args), "command": command}
            with ledger.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{flops:.0%} FastNAS seed {seed}: {row['evaluations']} scored in {row['wall_s']:.0f} s; test "
                  f"{row['best_test']:.2%}, release BN {row['best_test_release']:.2%}, after FT "
                  f"{row['best_test_finetuned']:.2%}; FLOPs {row['counted_flops_ratio']:.1%}", flush=True)
            write_markdown([json.loads(line) for line in ledger.read_text().splitlines()],
                           ledger.with_suffix(".md"))


if __name__ == "__main__":
    main()
