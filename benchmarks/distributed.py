"""Parallel evaluations on Ray and crash recovery, on the reference ResNet-20 / Fashion-MNIST.

1. Throughput: the same seeded random search (batches of 2) scored in-process, on one Ray
   actor and on two Ray actors; evaluations per hour of each, and Ray's overhead per evaluation
   as a fraction of the evaluation's time, two ways: end to end (one actor's wall time per
   evaluation vs in-process) and dispatch only (wall time per evaluation vs the evaluation's own
   time inside the actor; the rest of the end-to-end figure is the evaluation itself running
   slower in the actor's process, e.g. next to Ray's daemons on a small machine).
   The same for DDPG with 2 lockstep episodes per step (in-process vs 2 workers).
2. Resume: a CLI search killed with SIGKILL after k evaluations, then ``autoprune resume``;
   time from the resume's start until it is evaluating again (loading config, data, model,
   ledger and checkpoint), from its wall time minus the evaluations it ran.

    python benchmarks/distributed.py --evaluations 16

Writes ``benchmarks/results/distributed.{json,md}`` with the machine's core count: on a machine
with fewer free cores than workers, two workers cannot scale.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml
from reference import reference_setup  # benchmarks/reference.py: run as python benchmarks/<name>.py

from autoprune.budget import Budget
from autoprune.evaluation import Evaluator
from autoprune.parallel_evaluation import RayEvaluator
from autoprune.search import count_recorded, create_searcher, read_ledger


def _throughput(evaluator, workers: int | None, n: int, backend: str = "random",  # type: ignore[no-untyped-def]
                options: dict | None = None) -> dict:
    """Wall time of a seeded search of ``n`` evaluations; ``workers=None`` = in-process."""
    start = time.perf_counter()
    scorer = evaluator if workers is None else RayEvaluator(evaluator, workers=workers)
    startup = time.perf_counter() - start
    scorer.map([evaluator.space.uniform(0.1)] * (workers or 1))  # warm each actor: imports, path choice
    with tempfile.TemporaryDirectory() as d:
        searcher = create_searcher(backend, evaluator=scorer, seed=0, ledger=d, **(options or {"batch_size": 2}))
        t = time.perf_counter()
        searcher.run(n, show_progress=False)
        wall = time.perf_counter() - t
        inside = sum(r.seconds["total"] for r in searcher.ledger.results)
    if workers is not None:
        scorer.shutdown()
    return {"backend": backend, "workers": workers or 0, "evaluations": n, "wall_s": wall,
            "evals_per_hour": n / wall * 3600, "eval_s_inside": inside / n,
            "ray_startup_s": startup if workers else 0.0}


def _resume_time(k: int, total: int, val_size: int) -> dict:
    config = {"model": {"name": "resnet20"}, "data": {"name": "fashion_mnist", "val_size": 5000},
              "budget": {"flops": 0.5}, "search": {"backend": "tpe", "evaluations": total},
              "evaluation": {"val_size": val_size, "bn_batches": 8}}
    with tempfile.TemporaryDirectory() as d:
        path, run_dir = Path(d) / "c.yaml", Path(d) / "run"
        path.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "autoprune.cli"]
        child = subprocess.Popen([*cmd, "search", str(path), "--run-dir", str(run_dir), "--quiet", "--no-report"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while count_recorded(run_dir) < k:
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        before = len(read_ledger(run_dir))
        t0, t = time.time(), time.perf_counter()
        subprocess.run([*cmd, "resume", str(run_dir), "--quiet", "--no-report"], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        results = read_ledger(run_dir)
        ran = sum(r.seconds["total"] for r in results[before:])
        # the run logs "resumed ..." once its searcher is restored, just before it evaluates again
        stamp = [line[:23] for line in (run_dir / "log.txt").read_text().splitlines() if " resumed " in line][-1]
        restored = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return {"killed_after": before, "total": len(results), "resume_wall_s": wall,
                "evaluations_after_resume_s": ran, "time_to_resume_s": restored - t0,
                "distinct": len({tuple(sorted(r.policy.items())) for r in results}) == len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluations", type=int, default=16)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, splits, space = reference_setup()
    evaluator = Evaluator(model, space, train_data=splits.train, val_data=splits.val, budget=Budget(flops=0.5),
                          val_size=args.val_size, bn_batches=8, path="exact")
    local = _throughput(evaluator, None, args.evaluations)
    one = _throughput(evaluator, 1, args.evaluations)
    two = _throughput(evaluator, 2, args.evaluations)
    ddpg = {"backend": "ddpg", "options": {"parallel_episodes": 2, "warmup": args.evaluations // 2}}
    ddpg_local = _throughput(evaluator, None, args.evaluations, **ddpg)  # type: ignore[arg-type]
    ddpg_two = _throughput(evaluator, 2, args.evaluations, **ddpg)  # type: ignore[arg-type]
    overhead = (one["wall_s"] - local["wall_s"]) / local["wall_s"]
    dispatch = (one["wall_s"] / one["evaluations"] - one["eval_s_inside"]) / one["eval_s_inside"]
    resume = _resume_time(k=4, total=8, val_size=args.val_size)
    result = {"command": "python benchmarks/distributed.py " + " ".join(sys.argv[1:]), "cpu_count": os.cpu_count(),
              "in_process": local, "ray_1_worker": one, "ray_2_workers": two,
              "ray_overhead_per_evaluation": overhead, "ray_dispatch_overhead_per_evaluation": dispatch,
              "speedup_2_workers": local["wall_s"] / two["wall_s"], "ddpg_in_process": ddpg_local,
              "ddpg_ray_2_workers": ddpg_two, "ddpg_speedup_2_workers": ddpg_local["wall_s"] / ddpg_two["wall_s"],
              "resume": resume}
    out = Path(args.out)
    (out / "distributed.json").write_text(json.dumps(result, indent=2))
    rows = [("random, in-process", local), ("random, Ray, 1 worker", one), ("random, Ray, 2 workers", two),
            ("DDPG (2 lockstep episodes), in-process", ddpg_local), ("DDPG (2 lockstep episodes), Ray, 2 workers",
                                                                     ddpg_two)]
    (out / "distributed.md").write_text("\n".join([
        "# Parallel evaluations on Ray and resume: ResNet-20 / Fashion-MNIST", "",
        f"Command: `{result['command']}` on a machine with {os.cpu_count()} CPU cores (1 torch thread per worker).",
        "", "| search, scoring | evaluations | wall | evaluations / hour | one evaluation, inside | Ray start-up |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {r['evaluations']} | {r['wall_s']:.1f} s | {r['evals_per_hour']:.0f} "
          f"| {r['eval_s_inside']:.2f} s | {r['ray_startup_s']:.1f} s |" for name, r in rows], "",
        f"Ray's overhead per evaluation, 1 worker vs in-process: {overhead:+.1%} end to end (target <= 5%), "
        f"of which dispatch (wall time per evaluation vs the evaluation's time inside the actor) {dispatch:+.1%}; "
        "the rest is the same evaluation running slower in the actor's process. "
        f"Speed-up with 2 workers: random {result['speedup_2_workers']:.2f}x, DDPG "
        f"{result['ddpg_speedup_2_workers']:.2f}x (target >= 1.6x on >= 2 free cores; "
        "the driver also needs CPU time, so on exactly 2 cores the workers share with it).", "",
        f"Resume after SIGKILL at {resume['killed_after']} of {resume['total']} evaluations: "
        f"{resume['time_to_resume_s']:.1f} s from launching `autoprune resume` until its searcher was restored "
        "(Python start-up and imports, data, model, search space, ledger, checkpoint); the whole resume took "
        f"{resume['resume_wall_s']:.1f} s, of which {resume['evaluations_after_resume_s']:.1f} s evaluations and the "
        "rest the final test-split scoring; "
        f"all evaluations distinct: {resume['distinct']}.", ""]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
