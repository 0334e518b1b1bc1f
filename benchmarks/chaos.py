"""Chaos benchmark: searches killed at random moments and resumed until done; is anything lost or repeated?

For each scenario (a backend, with or without 2 Ray workers) a search runs as a child process
(``autoprune search``, then ``autoprune resume``) and is killed with SIGKILL at a random moment after
it starts recording evaluations: the driver, or (with Ray workers) one worker, whose death the search
must survive on its own. Resumed until ``result.json`` says done. Then, from the SQLite ledger:

* lost: an evaluation recorded before a kill that is missing at the end (target 0);
* duplicated: a policy evaluated (not served from the cache) more than once (target 0);
* the final count of distinct evaluations against the one asked for;
* the wall-time overhead of the kills (every restart's start-up included) against one uninterrupted run.

Usage: ``python benchmarks/chaos.py`` (about 15 minutes on one core; writes
``benchmarks/results/chaos.{json,md}``). ``--kills-per-scenario`` sets how many kills each scenario takes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

RESULTS = Path(__file__).parent / "results"
OPTIONS = {"random": {}, "tpe": {"n_startup_trials": 4}, "nsga2": {}, "ddpg": {"warmup": 4},
           "evolution": {"population": 6, "top_k": 3, "n_mutation": 2, "n_crossover": 2}}


def _recorded(run_dir: Path) -> list[str]:
    """Policies of the evaluations in the ledger (cache hits left out), as canonical JSON, in trial order."""
    path = run_dir / "ledger.db"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "select t.trial_id, a.value_json from trials t join trial_user_attributes a "
                "on a.trial_id = t.trial_id where a.key = 'result' and not exists (select 1 from "
                "trial_user_attributes c where c.trial_id = t.trial_id and c.key = 'cached' and "
                "c.value_json = 'true') order by t.trial_id").fetchall()
    except sqlite3.Error:
        return []
    return [json.dumps(json.loads(json.loads(v))["policy"], sort_keys=True) for _, v in rows]


def _command(run_dir: Path, config: Path) -> list[str]:
    cli = [sys.executable, "-m", "autoprune.cli"]
    if (run_dir / "config.yaml").exists():
        return [*cli, "resume", str(run_dir), "--quiet", "--no-report"]
    return [*cli, "search", str(config), "--run-dir", str(run_dir), "--quiet", "--no-report"]


def _worker_pids(parent: int) -> list[int]:
    """Ray evaluation workers started for this search (their command line names the actor)."""
    out = subprocess.run(["pgrep", "-f", "ray::_EvaluatorActor"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != parent]


def run_scenario(backend: str, workers: int, evaluations: int, kills: int, checkpoint: Path, work: Path,
                 rng: random.Random) -> dict[str, Any]:
    data = {"model": {"name": "resnet20", "checkpoint": str(checkpoint)}, "data": {"name": "digits", "val_size": 200},
            "budget": {"flops": 0.5}, "search": {"backend": backend, "evaluations": evaluations,
                                                 "options": OPTIONS[backend], "workers": workers},
            "evaluation": {"val_size": 200, "bn_batches": 1}}
    config = work / f"{backend}-{workers}.yaml"
    config.write_text(yaml.safe_dump(data))
    # the uninterrupted reference run
    ref_dir = work / f"{backend}-{workers}-ref"
    start = time.perf_counter()
    subprocess.run(_command(ref_dir, config), check=True, capture_output=True)
    reference_s = time.perf_counter() - start
    reference_count = len(set(_recorded(ref_dir)))  # DDPG may stop early once it only re-proposes cached policies

    run_dir = work / f"{backend}-{workers}-chaos"
    seen: set[str] = set()  # every evaluation ever seen recorded before a kill
    driver_kills = worker_kills = restarts = 0
    start = time.perf_counter()
    while not (run_dir / "result.json").exists():
        child = subprocess.Popen(_command(run_dir, config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
        restarts += 1
        while driver_kills + worker_kills < kills and child.poll() is None:
            before = len(_recorded(run_dir))
            while child.poll() is None and len(_recorded(run_dir)) == before:  # wait until it records again
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))  # then a random moment: mid-evaluation, mid-commit, mid-checkpoint
            if child.poll() is not None:
                break
            seen.update(_recorded(run_dir))
            pids = _worker_pids(child.pid) if workers > 1 else []
            if pids and rng.random() < 0.5:  # a worker dies: the search must go on by itself
                os.kill(rng.choice(pids), signal.SIGKILL)
                worker_kills += 1
            else:
                os.kill(child.pid, signal.SIGKILL)
                driver_kills += 1
                subprocess.run(["pkill", "-9", "-f", "ray::"], capture_output=True)  # its workers die with it
        _, err = child.communicate()
        if child.returncode not in (0, -signal.SIGKILL):
            raise RuntimeError(f"{backend}/{workers}: exit {child.returncode}: {err[-800:]}")
    chaos_s = time.perf_counter() - start
    final = _recorded(run_dir)
    counts = Counter(final)
    summary = json.loads((run_dir / "result.json").read_text())
    return {"backend": backend, "workers": workers, "evaluations_asked": evaluations,
            "driver_kills": driver_kills, "worker_kills": worker_kills, "processes": restarts,
            "distinct_evaluations": len(counts), "reference_evaluations": reference_count,
            "lost": len(seen - set(final)),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            "finished": bool(summary.get("done")), "meets_budget": bool(summary.get("meets_budget")),
            "reference_s": reference_s, "chaos_s": chaos_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(OPTIONS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--evaluations", type=int, default=80)
    parser.add_argument("--kills-per-scenario", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "chaos"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of other scenarios already in the output and replace these")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="chaos") as tmp:
        work = Path(tmp)
        checkpoint = work / "resnet20_digits.pt"
        subprocess.run([sys.executable, "-m", "autoprune.cli", "train", "--model", "resnet20", "--dataset", "digits",
                        "--epochs", "1", "--val-size", "200", "--out", str(checkpoint)], check=True,
                       capture_output=True)
        for workers in args.workers:
            for backend in args.backends:
                row = run_scenario(backend, workers, args.evaluations, args.kills_per_scenario, checkpoint, work, rng)
                rows.append(row)
                print(f"{backend} x{workers}: {row['driver_kills']} driver + {row['worker_kills']} worker kills, "
                      f"{row['distinct_evaluations']}/{row['evaluations_asked']} evaluations, lost {row['lost']}, "
                      f"duplicated {row['duplicated']}, {row['chaos_s']:.0f} s vs {row['reference_s']:.0f} s",
                      flush=True)
    out = Path(args.out)
    if args.merge and out.with_suffix(".json").exists():
        done = {(r["backend"], r["workers"]) for r in rows}
        rows = [r for r in json.loads(out.with_suffix(".json").read_text())["rows"]
                if (r["backend"], r["workers"]) not in done] + rows
    total = {"kills": sum(r["driver_kills"] + r["worker_kills"] for r in rows),
             "driver_kills": sum(r["driver_kills"] for r in rows), "worker_kills": sum(r["worker_kills"] for r in rows),
             "lost": sum(r["lost"] for r in rows), "duplicated": sum(r["duplicated"] for r in rows),
             "exact_count": sum(r["distinct_evaluations"] == r["evaluations_asked"] for r in rows),
             "as_uninterrupted": sum(r["distinct_evaluations"] >= r.get("reference_evaluations", r["evaluations_asked"])
                                     for r in rows),
             "scenarios": len(rows), "command": "python benchmarks/chaos.py " + " ".join(sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"summary": total, "rows": rows}, indent=2))
    lines = ["# Chaos: searches killed at random moments, resumed until done", "",
             f"Command: `{total['command'].strip()}` (1 torch thread per process; ResNet-20 on digits, "
             f"{args.evaluations} evaluations per search, 200 validation images).", "",
             f"- **{total['kills']} kills survived** ({total['driver_kills']} of the driver, "
             f"{total['worker_kills']} of a Ray worker); **{total['lost']} evaluations lost, "
             f"{total['duplicated']} duplicated**; "
             f"{total['exact_count']} of {total['scenarios']} searches ended with exactly the requested count, "
             f"{total['as_uninterrupted']} with as many as their uninterrupted run (DDPG stops early once it only "
             "re-proposes evaluated policies)", "",
             "| backend | Ray workers | driver kills | worker kills | processes | distinct evaluations "
             "| uninterrupted run | lost | duplicated | wall s (chaos) | wall s (no kill) | overhead |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['workers'] if r['workers'] > 1 else '-'} | {r['driver_kills']} "
                     f"| {r['worker_kills']} | {r['processes']} | {r['distinct_evaluations']}/{r['evaluations_asked']} "
                     f"| {r.get('reference_evaluations', '?')} | {r['lost']} | {r['duplicated']} | {r['chaos_s']:.0f} "
                     f"| {r['reference_s']:.0f} "
                     f"| {r['chaos_s'] / r['reference_s'] - 1:+.0%} |")
    lines += ["", "The overhead is mostly start-up: every killed driver's successor imports torch, loads the data, "
              "rebuilds the search space (and starts Ray) before it evaluates again."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(total, indent=2))
    return 0 if total["lost"] == 0 and total["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
