"""Proxy fidelity: which score, computed during a search, ranks policies like the model a user ships?

Takes the policies of ``benchmarks/pruningnet.py fidelity`` for ``--model`` (random policies filled to the
budgets and the uniform ones, on a reference Fashion-MNIST checkpoint, with the adaptive-BN (and PruningNet)
scores and the shipped model's test accuracy already measured) and scores each with more proxies a search
could rank by:

* ``refit``: the candidate refitted by least squares in one pass on 256 TRAIN images, then adaptive BN
  (``evaluation.kind: refit``);
* ``finetune_k``: the plainly pruned candidate after ``k`` SGD steps on TRAIN, then adaptive BN.

Two targets: the shipped model's test accuracy (measured with the policies), and with ``--finetuned-target``
its test accuracy after the 1-epoch fine-tune users run (SGD, one-cycle lr 0.05, seed 0), which is what the
policy is worth to a user who fine-tunes. For each proxy, target and budget: Kendall's tau with a 90%
bootstrap interval, Spearman's rho (``scipy.stats``), the top-5 overlap, the mean seconds per evaluation
(one core), and the paired tau difference of each proxy with adaptive BN.

    python benchmarks/pruningnet.py fidelity --model resnet20 --policies 40   # first: policies + targets
    python benchmarks/fidelity.py --steps 10 50
    python benchmarks/fidelity.py --steps --finetuned-target --shard 0/2 &    # ~1-2 min per policy and core
    python benchmarks/fidelity.py --steps --finetuned-target --shard 1/2
    python benchmarks/fidelity.py --model resnet56 --steps 10 50           # after pruningnet.py fidelity for it

Rows go to ``benchmarks/results/fidelity.jsonl`` (a rerun skips finished ones); the table to ``fidelity.md``.
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
from scipy import stats

from autoprune.budget import Budget
from autoprune.data import load_dataset
from autoprune.evaluation import Evaluator
from autoprune.models.checkpoints import load_checkpoint, reference_checkpoint
from autoprune.refit_evaluator import RefitEvaluator
from autoprune.search_spaces import SearchSpace
from autoprune.training import TrainConfig, accuracy, train

RESULTS = Path(__file__).parent / "results"
SOURCE, ROWS = RESULTS / "pruningnet.jsonl", RESULTS / "fidelity.jsonl"
FINETUNED = "target:finetuned_test"  # the fine-tuned target's rows, among the proxies' rows
EVALUATION = {"val_size": 2000, "bn_batches": 8, "batch_size": 64}


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 50], help="fine-tune proxies (SGD steps)")
    parser.add_argument("--finetuned-target", action="store_true", help="also the 1-epoch fine-tuned target")
    parser.add_argument("--shard", default="0/1", help="K/N: only the policies whose position %% N == K")
    parser.add_argument("--reverse", action="store_true", help="last policy first (a second process on a shard "
                        "meets the first one in the middle: each policy is checked as done just before it starts)")
    parser.add_argument("--model", default="resnet20", help="whose policies (benchmarks/pruningnet.py fidelity made)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    every = [r for r in _read(SOURCE) if r["part"] == "fidelity"]
    if not args.table_only:
        policies = [r for r in every if r["model"] == args.model]
        model, meta = load_checkpoint(reference_checkpoint(args.model, "fashion_mnist"))
        splits = load_dataset("fashion_mnist", val_size=meta["val_size"], seed=meta["split_seed"])
        space = SearchSpace.from_model(model, splits.example_inputs(), bounds=(0.0, 0.8))
        common = dict(train_data=splits.train, val_data=splits.val, **EVALUATION)
        proxies: dict[str, Evaluator] = {"refit": RefitEvaluator(model, space, **common)}
        for k in args.steps:
            proxies[f"finetune_{k}"] = Evaluator(model, space, finetune_steps=k, **common)
        shipping = Evaluator(model, space, path="exact", **common)  # releases the shipped models of the targets
        shard, shards = (int(x) for x in args.shard.split("/"))
        for row in policies[shard::shards][::-1 if args.reverse else 1]:
            done = {(r["index"], r["proxy"]) for r in _read(ROWS) if _model(r) == args.model}
            if args.finetuned_target and (row["index"], FINETUNED) not in done:
                shipping.budget = Budget(flops=row["budget"])
                _append(_finetuned_target(shipping, splits, row))
            for name, evaluator in proxies.items():
                if (row["index"], name) in done:
                    continue
                evaluator.budget = Budget(flops=row["budget"])
                result = evaluator(row["policy"])
                _append({"model": args.model, "index": row["index"], "budget": row["budget"], "proxy": name,
                         "val": result.accuracy, "seconds": result.seconds["total"]})
    _write_markdown(every, _read(ROWS))


def _model(row: dict[str, Any]) -> str:
    return row.get("model", "resnet20")  # rows from before other models were studied


def _append(row: dict[str, Any]) -> None:
    with ROWS.open("a") as f:  # one short line per write: shards running side by side do not interleave
        f.write(json.dumps({**row, "command": "python benchmarks/fidelity.py " + " ".join(sys.argv[1:])}) + "\n")


def _finetuned_target(evaluator: Evaluator, splits: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The shipped model of ``row``'s policy (as in ``benchmarks/pruningnet.py``) after the 1-epoch fine-tune."""
    start = time.perf_counter()
    shipped = evaluator.release(row["policy"])
    shipped_test = accuracy(shipped, splits.test)
    torch.manual_seed(0)
    train(shipped, splits.train, TrainConfig(epochs=1, max_lr=0.05, seed=0), show_progress=False)
    return {"model": row["model"], "index": row["index"], "budget": row["budget"], "proxy": FINETUNED,
            "shipped_test": shipped_test,
            "test": accuracy(shipped, splits.test), "seconds": time.perf_counter() - start}


RANK_COLUMNS = ["| budget | proxy | policies | Kendall's τ | τ, 90% bootstrap interval | Spearman's ρ | top-5 overlap "
                "| s/eval |", "|---|---|---|---|---|---|---|---|"]


def bootstrap_tau(proxies: list[list[float]], target: list[float], resamples: int = 2000) -> np.ndarray:
    """Kendall's tau of each proxy with ``target`` on ``resamples`` resamplings of the policies (the same
    resamplings for every proxy, so differences between proxies are paired), shape (resamples, proxies)."""
    rng = np.random.default_rng(0)
    x, y = np.asarray(proxies, dtype=float), np.asarray(target, dtype=float)
    taus = np.empty((resamples, len(x)))
    for b in range(resamples):
        i = rng.integers(0, len(y), len(y))
        taus[b] = [stats.kendalltau(p[i], y[i])[0] for p in x]
    return taus


def rank_agreement(proxy: list[float], target: list[float], seconds: list[float]) -> str:
    """Table cells: Kendall's tau (and its 90% bootstrap interval), Spearman's rho, top-5 overlap of ``proxy``
    with ``target``, mean seconds."""
    top = len(set(np.argsort(target)[-5:]) & set(np.argsort(proxy)[-5:]))
    low, high = np.nanpercentile(bootstrap_tau([proxy], target)[:, 0], [5, 95])
    rho = stats.spearmanr(proxy, target)[0]
    return (f"{stats.kendalltau(proxy, target)[0]:.3f} | [{low:.2f}, {high:.2f}] | {rho:.3f} | {top}/5 | "
            f"{statistics.mean(seconds):.2f}")


def _write_markdown(policies: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    lines = ["# Proxy fidelity: ranking policies like the shipped model", "",
             "Reference Fashion-MNIST checkpoints; random policies (uniform draws, filled to the budget by the shared "
             "projection) and each budget's uniform policy. Targets: TEST accuracy of the model a run ships for the "
             "policy (pruned by `l2` importance, refitted by least squares on 512 TRAIN images, BatchNorm on 8,192), "
             "and of that model after a 1-epoch fine-tune (SGD, one-cycle lr 0.05, seed 0). Proxies score 2,000 "
             "validation images after 8 BN batches. One core, while other benchmarks used the second one.", "",
             "Commands: `python benchmarks/pruningnet.py fidelity --model resnet20 --policies 40` (policies, target, "
             "`adaptive_bn`, `pruningnet` after 1 epoch of PruningNet training), then "
             "`python benchmarks/fidelity.py --steps 10 50` (the others), "
             "`python benchmarks/fidelity.py --steps --finetuned-target` (the fine-tuned target); each row of "
             "`fidelity.jsonl` and `pruningnet.jsonl` has its command.", ""]
    for model in sorted({p["model"] for p in policies}, key=lambda m: (m != "resnet20", m)):
        lines += _model_sections(model, [p for p in policies if p["model"] == model],
                                 [r for r in rows if _model(r) == model])
    (RESULTS / "fidelity.md").write_text("\n".join(lines))


def _model_sections(model: str, policies: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    scores: dict[str, dict[Any, tuple[float, float]]] = {}
    for p in policies:
        for kind, s in p["scores"].items():
            scores.setdefault(kind, {})[p["index"]] = (s["val"], s["seconds"])
    for r in rows:
        if r["proxy"] != FINETUNED:
            scores.setdefault(r["proxy"], {})[r["index"]] = (r["val"], r["seconds"])
    targets = {"the shipped model's test accuracy": {p["index"]: p["shipped_test"] for p in policies},
               "test accuracy after the 1-epoch fine-tune": {r["index"]: r["test"] for r in rows
                                                             if r["proxy"] == FINETUNED}}
    if all(sum(p["budget"] == b for p in policies) < 3 for b in {p["budget"] for p in policies}):
        return [f"## {model}", "", f"{len(policies)} policies measured so far; a table needs 3 per budget "
                "(`pruningnet.jsonl`).", ""]
    lines = []
    for title, target in targets.items():
        if not target:
            continue
        lines += [f"## {model} — target: {title}", "", *RANK_COLUMNS]
        for budget in sorted({p["budget"] for p in policies}, reverse=True):
            group = [p for p in policies if p["budget"] == budget and p["index"] in target]
            for proxy in ("adaptive_bn", "refit", *sorted(k for k in scores if k.startswith("finetune_")),
                          "pruningnet"):
                have = [p for p in group if p["index"] in scores.get(proxy, {})]
                if len(have) < 3:
                    continue
                lines.append(f"| {budget:.0%} | {proxy} | {len(have)} | " + rank_agreement(
                    [scores[proxy][p["index"]][0] for p in have], [target[p["index"]] for p in have],
                    [scores[proxy][p["index"]][1] for p in have]) + " |")
        lines += ["", "Paired difference in τ against `adaptive_bn` (same bootstrap resamplings of the policies; "
                  "an interval that contains 0: the data cannot tell the two proxies apart):", "",
                  "| budget | proxy | τ − τ(adaptive_bn) | 90% interval |", "|---|---|---|---|"]
        for budget in sorted({p["budget"] for p in policies}, reverse=True):
            group = [p for p in policies if p["budget"] == budget and p["index"] in target]
            # the proxies measured on every policy here (ResNet-56 has no fine-tune proxies)
            names = [k for k in ("adaptive_bn", "refit", "finetune_50")
                     if all(p["index"] in scores.get(k, {}) for p in group)]
            if len(group) < 3 or names[:1] != ["adaptive_bn"] or len(names) < 2:
                continue
            y = [target[p["index"]] for p in group]
            xs = [[scores[k][p["index"]][0] for p in group] for k in names]
            taus = bootstrap_tau(xs, y)
            point = [stats.kendalltau(x, y)[0] for x in xs]
            for j, name in enumerate(names[1:], start=1):
                low, high = np.nanpercentile(taus[:, j] - taus[:, 0], [5, 95])
                lines.append(f"| {budget:.0%} | {name} | {point[j] - point[0]:+.3f} | [{low:+.2f}, {high:+.2f}] |")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
