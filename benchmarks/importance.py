"""Does another channel-ranking criterion make the searched policies more accurate?

The pruner keeps, in each coupled group, the channels its importance criterion ranks highest
(default ``l2``: the L2 norm of each channel's weights, summed over every coupled layer). This re-scores
the best TPE and evolution policies at 50% FLOPs of ``benchmarks/results/search_quality.jsonl`` (the
rows with default settings) with other criteria, without searching again: validation accuracy as the
search scores it (adaptive BN on 512 TRAIN images, 2,000 validation images) and TEST accuracy with
BatchNorm re-estimated on 8,192 TRAIN images, without least-squares reconstruction (which would mask
the criterion). The policies were searched with ``l2``, so a criterion that loses here could still win
with a search of its own; one that wins would be worth one.

Criteria: every built-in name (``autoprune.pruning.IMPORTANCE_NAMES``; ``energy`` weighs each channel's
weights by its activations on the 512 BN images, ``autoprune.pruning.OutputEnergyImportance``); ``l2``
with Torch-Pruning's other ways of combining a group's layers (``l2_first``: the group's first layer only, ``l2_max``,
``l2_prod``); and two data-driven ones from per-sample loss gradients on 1,024 TRAIN images:
``fisher`` (Optimal Brain Damage, w^2 * E[g^2]) and ``bn_gate_taylor`` (the squared first-order loss
change of zeroing each BatchNorm output channel, E[(gamma * dL/dgamma + beta * dL/dbeta)^2], summed over
the group; Molchanov et al. 2019).

    python benchmarks/importance.py            # every criterion; --importance NAME ... for some

Writes ``benchmarks/results/importance.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch_pruning as tp
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py
from search_quality import row_label
from torch import nn

from autoprune.evaluation import Evaluator
from autoprune.importance import IMPORTANCE_NAMES, Criterion
from autoprune.search_spaces import Policy
from autoprune.training import accuracy

GRADIENT_IMAGES = 1024


class PerSampleGradients:
    """E[g^2] of every parameter and E[(gamma*dL/dgamma + beta*dL/dbeta)^2] of every BatchNorm channel,
    one backward pass per TRAIN image (a batch's mean gradient of a trained model is mostly noise)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model = model.eval()
        self.params = dict(model.named_parameters())
        self.squared = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.gates = {m: torch.zeros(m.num_features, dtype=torch.float64)
                      for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
        for i in range(len(x)):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            for n, p in self.params.items():
                self.squared[n] += p.grad.detach() ** 2 / len(x)
            for bn, total in self.gates.items():
                total += (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).detach().double() ** 2 / len(x)
        model.zero_grad(set_to_none=True)


class Fisher(tp.importance.GroupHessianImportance):
    """Torch-Pruning's OBD criterion read from our E[g^2]: its own accumulator (1.6.0) looks running sums up
    by name but stores them by parameter, so it keeps only the last sample."""

    def __init__(self, grads: PerSampleGradients) -> None:
        super().__init__()
        self.grads = grads

    def __call__(self, group):  # noqa: ANN001 (a Torch-Pruning Group)
        for n, p in self.grads.params.items():
            p.grad = self.grads.squared[n]
        try:
            return super().__call__(group)
        finally:
            self.grads.model.zero_grad(set_to_none=True)


class BNGateTaylor(tp.importance.Importance):
    def __init__(self, grads: PerSampleGradients) -> None:
        self.grads = grads

    def __call__(self, group):  # noqa: ANN001 (a Torch-Pruning Group)
        scores = None
        for item in group:
            dep, idxs = item
            if dep.handler == tp.pruner.function.prune_batchnorm_out_channels:
                scores = torch.zeros(len(item.root_idxs), dtype=torch.float64) if scores is None else scores
                scores.scatter_add_(0, torch.tensor(item.root_idxs), self.grads.gates[dep.target.module][idxs])
        return scores


def criteria(model: nn.Module, splits) -> dict[str, Callable[[], Criterion]]:  # noqa: ANN001 (Splits)
    grads: list[PerSampleGradients] = []  # computed once, when a data-driven criterion is first asked for

    def per_sample() -> PerSampleGradients:
        if not grads:
            x, y = splits.train.tensors
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:GRADIENT_IMAGES]
            grads.append(PerSampleGradients(model, x[pick], y[pick]))
        return grads[0]

    found: dict[str, Callable[[], Criterion]] = {name: (lambda name=name: name) for name in IMPORTANCE_NAMES}
    for reduction in ("first", "max", "prod"):
        found[f"l2_{reduction}"] = lambda r=reduction: tp.importance.MagnitudeImportance(p=2, group_reduction=r)
    found["fisher"] = lambda: Fisher(per_sample())
    found["bn_gate_taylor"] = lambda: BNGateTaylor(per_sample())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--importance", nargs="+", help="criteria to compare (default: all)")
    parser.add_argument("--backends", nargs="+", default=["tpe", "evolution"])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.results)
    searched = [json.loads(line) for line in (out / "search_quality.jsonl").read_text().splitlines()]
    searched = [r for r in searched if r["backend"] in args.backends and r["budget"] == args.budget
                and row_label(r) == r["backend"]]  # default settings only
    model, splits, space = reference_setup()
    available = criteria(model, splits)
    args.importance = args.importance or list(available)
    unknown = sorted(set(args.importance) - set(available))
    if unknown:
        parser.error(f"unknown criterion {', '.join(unknown)}; choose from {', '.join(available)}")
    rows = []
    for importance in args.importance:
        # One evaluator (seed 0: the same BN images) per criterion; it ranks every group's channels once.
        evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val, val_size=2000,
                              bn_batches=8, path="exact", seed=0, importance=available[importance]())
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
             f"The best policy of each {' and '.join(args.backends)} search at {args.budget:.0%} FLOPs (default "
             "settings, searched with `l2`), pruned by each criterion (see the script's docstring). Cells: "
             "validation accuracy as the search scores it / TEST accuracy with release BN (no reconstruction).", "",
             "| importance | " + " | ".join(policies) + " | mean test |", "|---|" + "---|" * (len(policies) + 1)]
    for importance in args.importance:
        cells = [x for x in rows if x["importance"] == importance]
        lines.append(f"| {importance} | " + " | ".join(f"{c['val']:.2%} / {c['test']:.2%}" for c in cells)
                     + f" | {statistics.mean(c['test'] for c in cells):.2%} |")
    (out / "importance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
