"""Issue #4's reference point, re-measured: a plain Torch-Pruning + Optuna TPE script.

Issue #4 sets its 50%-FLOPs targets from "a plain script — Torch-Pruning + Optuna TPE, 2,000-image
validation split" (88.3% test after 80 trials, 88.8% after 400). This is such a script, written
without autoprune's search space, cost model, pruner, evaluator or searchers: Torch-Pruning's
dependency graph gives the coupled groups, its ``MetaPruner`` prunes each group by its L2
magnitude, its own counter checks the FLOPs, and an Optuna study proposes one ratio per group.
Only the trained checkpoint and the data splits are autoprune's, so both scripts see the same images.

It answers two questions about the search benchmark (``search_quality.py``): does autoprune's
machinery lose accuracy against the plain approach, and is the 89.5% target a question of the
searcher or of the trained checkpoint? Run it on the committed reference and on another training:

    python benchmarks/plain_tpe.py --seed 0
    python benchmarks/plain_tpe.py --seed 0 --checkpoint benchmarks/results/reference_variants/resnet20_s1_e4.pt

Budget: a proposal over the FLOPs budget is repaired the plain way, every ratio moved toward the
upper bound by the same fraction (bisection on the counted FLOPs of the pruned model); proposals
under the budget are evaluated as they are. The best trial after N trials (``--report-at``) is
rebuilt, its BatchNorm statistics re-estimated on the same training images, and scored on TEST.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import optuna
import torch
import torch_pruning as tp
from torch import nn

from autoprune.data import load_dataset
from autoprune.models.checkpoints import load_checkpoint, reference_checkpoint

OUT = Path(__file__).parent / "results"


def top1(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    x, y = data
    with torch.no_grad():
        correct = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum()) for i in range(0, len(y), 500))
    return correct / len(y)


class PlainSearch:
    """One model, one FLOPs budget: prune a list of group ratios and score the result on validation."""

    def __init__(self, checkpoint: str | None, budget: float, max_ratio: float, val_size: int, bn_images: int,
                 seed: int) -> None:
        self.model, meta = load_checkpoint(checkpoint or reference_checkpoint("resnet20", "fashion_mnist"))
        self.model.eval()
        self.splits = load_dataset("fashion_mnist", val_size=meta["val_size"], seed=meta["split_seed"])
        self.example = self.splits.example_inputs()
        self.max_ratio = max_ratio
        x_val, y_val = self.splits.val.tensors
        self.val = (x_val[:val_size], y_val[:val_size])
        x_train = self.splits.train.tensors[0]
        pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:bn_images]
        self.bn_inputs = x_train[pick]
        graph = tp.DependencyGraph().build_dependency(self.model, self.example)
        names = {m: n for n, m in self.model.named_modules()}
        groups = graph.get_all_groups(ignored_layers=[self.model.fc], root_module_types=[nn.Conv2d])
        self.roots = [names[g[0].dep.target.module] for g in groups]  # one ratio per coupled group
        self.dense_macs, _ = tp.utils.count_ops_and_params(self.model, self.example)
        self.limit = budget * self.dense_macs

    def prune(self, ratios: list[float]) -> tuple[nn.Module, float]:
        """A pruned copy of the model and its counted FLOPs (MACs)."""
        model = copy.deepcopy(self.model)
        modules = dict(model.named_modules())
        per_group = {modules[root]: ratio for root, ratio in zip(self.roots, ratios, strict=True)}
        pruner = tp.pruner.MetaPruner(model, self.example, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio_dict=per_group, ignored_layers=[model.fc])
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, self.example)
        return model, macs

    def within_budget(self, ratios: list[float]) -> tuple[list[float], nn.Module, float]:
        """The proposal itself when it meets the budget, else every ratio moved toward ``max_ratio`` by the
        smallest common fraction that meets it."""
        model, macs = self.prune(ratios)
        if macs <= self.limit:
            return ratios, model, macs

        def moved(alpha: float) -> list[float]:
            return [r + alpha * (self.max_ratio - r) for r in ratios]

        lo, hi = 0.0, 1.0
        best = self.prune(moved(hi))
        if best[1] > self.limit:
            raise SystemExit(f"a {self.limit / self.dense_macs:.0%} FLOPs budget is infeasible at ratios <= "
                             f"{self.max_ratio}; raise --max-ratio or the budget")
        while hi - lo > 1e-3:
            mid = (lo + hi) / 2
            model, macs = self.prune(moved(mid))
            if macs <= self.limit:
                hi, best = mid, (model, macs)
            else:
                lo = mid
        return moved(hi), *best

    def score(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Accuracy on ``data`` after re-estimating BatchNorm statistics (adaptive BN) on ``bn_inputs``."""
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None  # a plain average over the calibration batches
        model.train()
        with torch.no_grad():
            for i in range(0, len(self.bn_inputs), 64):
                model(self.bn_inputs[i:i + 64])
        return top1(model, data)

    def objective(self, trial: optuna.Trial) -> float:
        proposal = [trial.suggest_float(r, 0.0, self.max_ratio) for r in self.roots]
        ratios, model, _ = self.within_budget(proposal)
        trial.set_user_attr("ratios", ratios)  # the repaired policy, rebuilt when the best trials are reported
        return self.score(model, self.val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds TPE and the BatchNorm calibration images")
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--report-at", type=int, nargs="+", default=[80, 300, 400],
                        help="score the best trial on TEST after this many trials")
    parser.add_argument("--budget", type=float, default=0.5, help="FLOPs budget, a fraction of the dense model")
    parser.add_argument("--max-ratio", type=float, default=0.8)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--bn-images", type=int, default=512)
    parser.add_argument("--checkpoint", default=None, help="a ResNet-20 checkpoint (default: the committed reference)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--markdown-only", action="store_true", help="only rebuild plain_tpe.md from the .jsonl")
    args = parser.parse_args()
    if args.markdown_only:
        write_markdown(args.out)
        return
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    search = PlainSearch(args.checkpoint, args.budget, args.max_ratio, args.val_size, args.bn_images, args.seed)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=args.seed, multivariate=True))
    start = time.perf_counter()
    study.optimize(search.objective, n_trials=args.trials, show_progress_bar=True)
    wall = time.perf_counter() - start

    points = []
    for n in sorted(set(args.report_at) | {args.trials}):
        if n > args.trials:
            continue
        best = max(study.trials[:n], key=lambda t: t.value)
        ratios = best.user_attrs["ratios"]
        model, macs = search.prune(ratios)
        points.append({"trials": n, "val": best.value, "test": search.score(model, search.splits.test.tensors),
                       "flops_ratio": macs / search.dense_macs, "ratios": dict(zip(search.roots, ratios, strict=True))})
        print(f"best of {n} trials: val {best.value:.2%}  test {points[-1]['test']:.2%}  "
              f"FLOPs {points[-1]['flops_ratio']:.1%}")
    row = {"checkpoint": args.checkpoint or "committed reference", "seed": args.seed, "budget": args.budget,
           "max_ratio": args.max_ratio, "val_size": args.val_size, "bn_images": args.bn_images,
           "dense_test": top1(search.model, search.splits.test.tensors),
           "wall_s": round(wall, 1), "optuna": optuna.__version__, "torch_pruning": tp.__version__,
           "points": points}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "plain_tpe.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    write_markdown(args.out)


def write_markdown(out: Path) -> None:
    """``plain_tpe.md`` from every row in ``plain_tpe.jsonl``: mean ± std over seeds, then each run."""
    rows = [json.loads(line) for line in (out / "plain_tpe.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["checkpoint"] != "committed reference", r["checkpoint"], r["seed"]))
    lines = ["# A plain Torch-Pruning + Optuna TPE script (issue #4's reference method)", "",
             "Command: `python benchmarks/plain_tpe.py --seed S [--checkpoint CKPT]` (1 thread). "
             "Written without autoprune's search space, pruner, cost model, evaluator or searchers; see its docstring. "
             "Best trial by validation accuracy (2,000 TRAIN images, adaptive BN on 512), scored on the 10k TEST "
             "split without fine-tuning. FLOPs counted by Torch-Pruning on the pruned model.", "",
             "Issue #4's own plain script at 50% FLOPs: 88.3% test after 80 trials, 88.8% after 400 "
             "(validation 90.0%), dense 92.6%.", "",
             "| checkpoint | dense test | seeds | trials | val (best), mean | test, mean ± std | test, best |",
             "|---|---|---|---|---|---|---|"]
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in rows:
        for p in r["points"]:
            runs.setdefault((r["checkpoint"], p["trials"]), []).append((p["val"], p["test"]))
    dense = {r["checkpoint"]: r["dense_test"] for r in rows}
    for (checkpoint, trials), scores in runs.items():
        val, test = zip(*scores, strict=True)
        spread = f" ± {statistics.stdev(test):.2%}" if len(test) > 1 else ""
        lines.append(f"| {Path(checkpoint).name} | {dense[checkpoint]:.2%} | {len(test)} | {trials} | "
                     f"{statistics.mean(val):.2%} | {statistics.mean(test):.2%}{spread} | {max(test):.2%} |")
    lines += ["", "Each run:", "",
              "| checkpoint | seed | trials | val (best) | test | FLOPs | wall |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for p in r["points"]:
            lines.append(f"| {Path(r['checkpoint']).name} | {r['seed']} | {p['trials']} | {p['val']:.2%} | "
                         f"{p['test']:.2%} | {p['flops_ratio']:.1%} | {r['wall_s'] / 60:.0f} min |")
    (out / "plain_tpe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
