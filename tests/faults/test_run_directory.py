"""The run directory's guarantees: one writer at a time (a lock the kernel frees when its holder dies) and a
configuration that cannot drift between start and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from autoprune import cli
from autoprune.evaluation import Evaluator
from autoprune.run_directory import ConfigChangedError, RunInUseError, check_unchanged, freeze, hold
from autoprune.search import count_recorded, read_ledger
from tests.test_search_cli import FAST_SMOKE, _trials, _write

HOLDER = ("import sys, time\nfrom autoprune.run_directory import hold\n"
          "with hold(sys.argv[1], 'autoprune search'):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _hold_in_another_process(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_refuses_a_second_writer_naming_the_holder(tmp_path):
    holder = _hold_in_another_process(tmp_path)
    try:
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}") as info, hold(tmp_path, "autoprune resume"):
            pass
        assert "autoprune search" in str(info.value) and "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    holder = _hold_in_another_process(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    with hold(tmp_path, "autoprune resume"):
        pass
    assert time.monotonic() - start < 1.0


def test_resume_and_search_on_a_held_run_exit_2_with_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(FAST_SMOKE))
    holder = _hold_in_another_process(run_dir)
    try:
        assert cli.main(["resume", str(run_dir), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"pid {holder.pid}" in err and len(err.splitlines()) == 1
        assert cli.main(["search", _write(tmp_path, FAST_SMOKE), "--run-dir", str(run_dir), "--quiet"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err  # not "use resume", which would race the holder
    finally:
        holder.kill()
        holder.wait()


def test_an_edited_config_is_refused_listing_the_changed_keys(tmp_path):
    config = {"budget": {"flops": 0.5}, "search": {"evaluations": 30, "backend": "tpe"}}
    freeze(tmp_path, config)
    check_unchanged(tmp_path, json.loads(json.dumps(config)))  # unchanged: fine
    edited = {"budget": {"flops": 0.3}, "search": {"evaluations": 12, "backend": "tpe"}}
    with pytest.raises(ConfigChangedError, match=r"budget\.flops \(0\.5 -> 0\.3\).*search\.evaluations"):
        check_unchanged(tmp_path, edited)


def test_resume_refuses_an_edited_budget_and_extends_with_its_option(tmp_path, capsys, monkeypatch):
    run_dir = _interrupted_run(tmp_path, monkeypatch, FAST_SMOKE, 3)
    capsys.readouterr()
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("flops: 0.5", "flops: 0.3"))
    assert cli.main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "budget.flops (0.5 -> 0.3)" in err and len(err.strip().splitlines()) == 1
    assert _trials(run_dir) == 2  # nothing was evaluated under the edited budget
    (run_dir / "config.yaml").write_text(text)
    assert cli.main(["resume", str(run_dir), "--quiet", "--evaluations", "7", "--no-report"]) == 0
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["evaluations"] == 7 and _trials(run_dir) == 7
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["search"]["evaluations"] == 7


def test_run_dir_naming_a_file_is_a_one_line_usage_error(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("not a run")
    assert cli.main(["search", _write(tmp_path, FAST_SMOKE), "--run-dir", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and len(err.splitlines()) == 1
    assert target.read_text() == "not a run"


def test_a_start_that_fails_on_input_leaves_no_run_behind(tmp_path, capsys):
    run_dir = tmp_path / "run"
    infeasible = {**FAST_SMOKE, "budget": {"flops": 0.01}}
    assert cli.main(["search", _write(tmp_path, infeasible), "--run-dir", str(run_dir), "--quiet"]) == 2
    assert "budget" in capsys.readouterr().err
    assert not (run_dir / "config.yaml").exists()
    # the same command with a fixed budget now starts the run (no "use resume" dead end)
    assert cli.main(["search", _write(tmp_path, FAST_SMOKE), "--run-dir", str(run_dir), "--quiet", "--no-report"]) == 0
    assert _trials(run_dir) == 5


def always_raises(result, baseline):  # a user's reward with a bug (imported by the config below)
    raise ZeroDivisionError("my reward divides by zero")


def test_when_every_evaluation_fails_the_message_names_the_cause_not_the_budget(tmp_path, capsys):
    config = {**FAST_SMOKE, "reward": "tests.faults.test_run_directory:always_raises"}
    assert cli.main(["search", _write(tmp_path, config), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "5 of 5 failed with 'ZeroDivisionError: my reward divides by zero'" in err
    assert "within budget" not in err


def test_experiment_with_an_unknown_backend_is_one_line(tmp_path, capsys):
    assert cli.main(["experiment", _write(tmp_path, FAST_SMOKE), "--name", "x", "--backends", "foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune: error: search.backend:") and len(err.splitlines()) == 1


def test_report_refuses_a_best_policy_the_space_does_not_know(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["search", _write(tmp_path, FAST_SMOKE), "--run-dir", str(run_dir), "--quiet", "--no-report"]) == 0
    policy = json.loads((run_dir / "best_policy.json").read_text())
    for bad, message in (({**policy, "no_such_group": 0.2}, "unknown group"),
                         ({k: 1.5 for k in policy}, "outside its bounds")):
        (run_dir / "best_policy.json").write_text(json.dumps(bad))
        assert cli.main(["report", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_log_txt_records_the_settings_the_progress_and_the_result(tmp_path):
    run_dir = tmp_path / "run"
    assert cli.main(["search", _write(tmp_path, FAST_SMOKE), "--run-dir", str(run_dir), "--quiet", "--no-report"]) == 0
    log = (run_dir / "log.txt").read_text()
    assert "random search for 5 evaluations" in log and "5/5 evaluations; best so far" in log
    assert "result: 5 evaluations; FLOPs" in log and "budget met" in log


def _interrupted_run(tmp_path, monkeypatch, config, after: int):
    """A search killed (KeyboardInterrupt) on its ``after``-th evaluation."""
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    original = Evaluator.__call__

    def interrupting(self, policy):
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return original(self, policy)

    monkeypatch.setattr(Evaluator, "__call__", interrupting)
    assert cli.main(["search", _write(tmp_path, config), "--run-dir", str(run_dir), "--quiet"]) == 130
    monkeypatch.setattr(Evaluator, "__call__", original)
    return run_dir


def test_a_damaged_ledger_names_its_backup_and_the_run_continues_from_it(tmp_path, monkeypatch, capsys):
    import autoprune.run

    monkeypatch.setattr(autoprune.run, "BACKUP_SECONDS", 0.0)  # back up after every step
    run_dir = _interrupted_run(tmp_path, monkeypatch, {**FAST_SMOKE, "search": {"backend": "tpe", "evaluations": 8}}, 5)
    assert (run_dir / "ledger.db.bak").exists() and _trials(run_dir) == 4
    data = (run_dir / "ledger.db").read_bytes()
    (run_dir / "ledger.db").write_bytes(data[: len(data) // 3])  # truncated, as by a full disk or a bad copy
    capsys.readouterr()
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is damaged" in err and "holds 4 completed evaluations" in err and len(err.splitlines()) == 1
    command = err[err.index("cp "):]
    subprocess.run(command.replace("&& autoprune resume", "&& true"), shell=True, check=True)
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 0
    # exactly the requested count of distinct evaluations, the 4 backed-up ones not re-run
    assert count_recorded(run_dir) == 8
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["evaluations"] == 8


def test_trials_a_killed_run_left_running_are_closed_and_run_again_once_on_resume(tmp_path, monkeypatch):
    import optuna

    from autoprune.search import read_ledger

    run_dir = _interrupted_run(tmp_path, monkeypatch, {**FAST_SMOKE, "search": {"backend": "tpe", "evaluations": 6}}, 3)
    storage = f"sqlite:///{run_dir / 'ledger.db'}"
    study = optuna.load_study(study_name="autoprune", storage=storage)
    distributions = study.trials[0].distributions
    interrupted = {name: d.high for name, d in distributions.items()}  # within budget: evaluated as it is
    study.enqueue_trial(interrupted)
    study.ask(distributions)  # another trial as a SIGKILL between ask and tell leaves it
    assert len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,))) == 2  # with the interrupted one
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 0
    study = optuna.load_study(study_name="autoprune", storage=storage)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    results = read_ledger(run_dir)
    assert len(results) == 6 and dict(results[3].policy) == pytest.approx(interrupted)  # run again first
    assert sum(dict(r.policy) == pytest.approx(interrupted) for r in results) == 1  # and once
    assert "closed (failed) and run again" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("code, words", [(28, "the disk is full"), (30, "the file system is read-only")])
def test_a_full_disk_or_read_only_run_dir_loses_nothing_and_says_what_to_do(tmp_path, monkeypatch, capsys, code,
                                                                           words):
    import errno

    import autoprune.run

    assert code == {"the disk is full": errno.ENOSPC, "the file system is read-only": errno.EROFS}[words]
    run_dir = tmp_path / "run"
    original = autoprune.run.save_checkpoint
    calls = {"n": 0}

    def failing(searcher, where):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint write finds the disk full
            raise OSError(code, os.strerror(code), str(where / "searcher.ckpt.tmp"))
        return original(searcher, where)

    monkeypatch.setattr(autoprune.run, "save_checkpoint", failing)
    config = _write(tmp_path, {**FAST_SMOKE, "search": {"backend": "tpe", "evaluations": 6}})
    assert cli.main(["search", config, "--run-dir", str(run_dir), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and f"autoprune resume {run_dir}" in err and len(err.splitlines()) == 1
    done = _trials(run_dir)
    assert done == 3  # every evaluation finished before the fault is in the ledger
    monkeypatch.setattr(autoprune.run, "save_checkpoint", original)
    assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 0
    results = read_ledger(run_dir)  # distinct evaluations (a re-proposed policy is a cached trial, not one more)
    assert len(results) == 6 and len({json.dumps(r.policy.to_dict(), sort_keys=True) for r in results}) == 6


def test_a_stopped_driver_keeps_its_run_and_finishes_after_sigcont(tmp_path, capsys):
    """SIGSTOP (Ctrl-Z, a paused VM): the run is still held, so a resume attempted meanwhile is refused
    instead of racing it; after SIGCONT the search finishes with exactly the requested count."""
    run_dir = tmp_path / "run"
    config = _write(tmp_path, {**FAST_SMOKE, "search": {"backend": "random", "evaluations": 12}})
    child = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", config, "--run-dir", str(run_dir),
                              "--quiet", "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while count_recorded(run_dir) < 2:  # safe to poll while the search creates its ledger
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGSTOP)
        assert cli.main(["resume", str(run_dir), "--quiet", "--no-report"]) == 2
        assert f"pid {child.pid}" in capsys.readouterr().err
        os.kill(child.pid, signal.SIGCONT)
        assert child.wait(timeout=180) == 0
    finally:
        if child.poll() is None:
            child.kill()
    results = read_ledger(run_dir)
    assert len(results) == 12 and len({json.dumps(r.policy.to_dict(), sort_keys=True) for r in results}) == 12
