"""Crash safety: a search killed with SIGKILL at any moment resumes without losing or repeating work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoprune import cli
from autoprune.search import count_recorded, read_ledger
from tests.test_search_cli import FAST_SMOKE

EVALUATIONS = 12
OPTIONS = {"ddpg": {"warmup": 4}, "tpe": {"n_startup_trials": 4}, "nsga2": {},
           "evolution": {"population": 6, "top_k": 3, "n_mutation": 2, "n_crossover": 2}, "random": {}}


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "resnet20_digits.pt"
    assert cli.main(["train", "--model", "resnet20", "--dataset", "digits", "--epochs", "1", "--val-size", "200",
                     "--out", str(path)]) == 0
    return path


def _config(tmp_path: Path, backend: str, checkpoint: Path) -> str:
    data = {"model": {"name": "resnet20", "checkpoint": str(checkpoint)}, "data": {"name": "digits", "val_size": 200},
            "budget": {"flops": 0.5}, "search": {"backend": backend, "evaluations": EVALUATIONS,
                                                 "options": OPTIONS[backend]},
            "evaluation": FAST_SMOKE["evaluation"]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _kill_after(run_dir: Path, config: str, k: int) -> list:
    """Start a search in a child process and SIGKILL it once ``k`` evaluations are in the ledger."""
    child = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", config, "--run-dir", str(run_dir),
                              "--quiet", "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while count_recorded(run_dir) < k:
        assert child.poll() is None, child.stderr.read().decode()[-1000:]
        assert time.monotonic() < deadline, "the search never reached k evaluations"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return read_ledger(run_dir)


# random and nsga2 resume through the same Optuna ask/tell ledger as tpe: those two run with `make test-all`
@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.slow if b in ("random", "nsga2") else [])
                                     for b in OPTIONS])
def test_search_killed_with_sigkill_resumes_to_exactly_n_distinct_evaluations(backend, tmp_path, dense_checkpoint):
    run_dir = tmp_path / "run"
    before = _kill_after(run_dir, _config(tmp_path, backend, dense_checkpoint), k=5)
    assert 5 <= len(before) < EVALUATIONS
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 0
    after = read_ledger(run_dir)
    keys = [tuple(json.dumps(r.policy.to_dict(), sort_keys=True)) for r in after]
    assert len(after) == EVALUATIONS and len(set(keys)) == EVALUATIONS  # none lost, none evaluated twice
    assert [r.policy for r in after[:len(before)]] == [r.policy for r in before]  # finished work kept as is
    best_before = max(r.reward for r in before if r.ok)
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["done"] and summary["best"]["reward"] >= best_before and summary["meets_budget"]


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, dense_checkpoint, monkeypatch):
    """A torn write of searcher.ckpt.tmp (the kill came mid-write) must not stop the resume."""
    run_dir = tmp_path / "run"
    _kill_after(run_dir, _config(tmp_path, "tpe", dense_checkpoint), k=5)
    (run_dir / "searcher.ckpt.tmp").write_bytes(b"\x80\x04half a pickle")
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 0
    assert len(read_ledger(run_dir)) == EVALUATIONS


def test_a_corrupted_checkpoint_is_a_clear_error_and_loses_no_data(tmp_path, dense_checkpoint, capsys):
    run_dir = tmp_path / "run"
    before = _kill_after(run_dir, _config(tmp_path, "random", dense_checkpoint), k=5)
    (run_dir / "searcher.ckpt").write_bytes(b"not a checkpoint")
    code = cli.main(["resume", str(run_dir), "--quiet", "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "searcher.ckpt" in err and "\n" not in err
    assert len(read_ledger(run_dir)) == len(before)  # the ledger is untouched
    (run_dir / "searcher.ckpt").unlink()  # what the message says to do
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 0
    after = read_ledger(run_dir)
    assert len(after) == EVALUATIONS and [r.policy for r in after[:len(before)]] == [r.policy for r in before]
