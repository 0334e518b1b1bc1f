"""Ray Tune experiments: several searches as trials, the driver killed, the experiment restored."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from autoprune.search import read_ledger

EVALUATIONS = 6
DRIVER = """
import sys
from autoprune.config import Config
from autoprune.experiments import experiment_grid, resume_experiment, run_experiment
results_dir, mode, EVALUATIONS = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "run":
    base = Config.model_validate({
        "model": {"name": "resnet20", "train_epochs": 0.3}, "data": {"name": "digits", "val_size": 200},
        "budget": {"flops": 0.5}, "search": {"backend": "random", "evaluations": EVALUATIONS},
        "evaluation": {"val_size": 200, "bn_batches": 1}})
    small = {"evolution": {"population": 4, "top_k": 2, "n_mutation": 1, "n_crossover": 1}}
    grid = run_experiment(experiment_grid(base, backends=["random", "evolution"], seeds=[0], options=small),
                          name="exp", results_dir=results_dir, max_concurrent=2)
else:
    grid = resume_experiment(f"{results_dir}/exp")
print("errors:", [str(r.error) for r in grid if r.error])
"""


@pytest.mark.slow
def test_experiment_killed_mid_way_is_restored_and_every_search_completes(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run = [sys.executable, "-c", DRIVER, str(tmp_path)]
    driver = subprocess.Popen([*run, "run", str(EVALUATIONS)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    runs = tmp_path / "exp" / "runs"
    deadline = time.monotonic() + 600
    while not any(runs.glob("*/searcher.ckpt")):  # a trial has checkpointed at least once
        assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done = subprocess.run([*run, "resume", str(EVALUATIONS)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "errors: []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "WARNING" not in done.stderr and "ray" not in done.stderr.lower(), done.stderr[-2000:]  # all in log.txt
    assert (tmp_path / "exp" / "log.txt").stat().st_size > 0
    for run_dir in sorted(runs.iterdir()):
        results = read_ledger(run_dir)
        assert len(results) == EVALUATIONS, run_dir.name
        assert len({json.dumps(r.policy.to_dict(), sort_keys=True) for r in results}) == EVALUATIONS
        assert json.loads((run_dir / "result.json").read_text())["meets_budget"]
    assert sorted(p.name.split("-")[0] for p in runs.iterdir()) == ["evolution", "random"]
