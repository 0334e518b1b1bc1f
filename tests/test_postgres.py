"""The ledger on a real PostgreSQL server (Debian's postgresql, started on loopback by the test)."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from autoprune.search import LedgerSpec, read_ledger
from tests.test_search_cli import FAST_SMOKE

EVALUATIONS = 10


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as the package's own user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on loopback: ``.url`` for the ledger, ``.restart()`` to restart it."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql where apt works)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install -e '.[dev]')")
    data = Path(tempfile.mkdtemp(prefix="pg"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "autoprune",
                                 "--auth=trust"]), check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                                 "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data}",
                                 "start"]), check=True, capture_output=True, timeout=120)
    def restart() -> None:
        # -l again: without it the restarted server writes to (and holds open) pg_ctl's stdout
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"),
                                     "-m", "fast", "-w", "restart"]), check=True, capture_output=True, timeout=120)

    try:
        yield SimpleNamespace(url=f"postgresql+psycopg2://autoprune@127.0.0.1:{port}/postgres", restart=restart)
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres):
    return postgres.url


def _count(url: str, study: str) -> int:
    import psycopg2

    try:
        with psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql")) as db, db.cursor() as cur:
            cur.execute("select count(*) from trials t join studies s on s.study_id = t.study_id "
                        "where s.study_name = %s and t.state = 'COMPLETE'", (study,))
            return cur.fetchone()[0]
    except psycopg2.Error:  # tables not created yet
        return 0


def _config(postgres_url: str) -> dict:
    return {**FAST_SMOKE, "search": {"backend": "tpe", "evaluations": EVALUATIONS, "storage": postgres_url,
                                     "options": {"n_startup_trials": 4}}}


def test_search_with_a_postgresql_ledger_is_killed_and_resumed(postgres_url, tmp_path):
    config = _config(postgres_url)
    path, run_dir = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "autoprune.cli"]
    child = subprocess.Popen([*cli, "search", str(path), "--run-dir", str(run_dir), "--quiet", "--no-report"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    study = "autoprune/run"
    deadline = time.monotonic() + 300
    while _count(postgres_url, study) < 4:
        assert child.poll() is None, child.stderr.read().decode()[-1500:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    spec = LedgerSpec(postgres_url, study)
    before = read_ledger(spec)
    assert not (run_dir / "ledger.db").exists()  # the ledger lives in PostgreSQL, not in the run directory
    done = subprocess.run([*cli, "resume", str(run_dir), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    after = read_ledger(spec)
    assert len(after) == EVALUATIONS and [r.policy for r in after[:len(before)]] == [r.policy for r in before]
    assert json.loads((run_dir / "result.json").read_text())["meets_budget"]
    assert (run_dir / "report.html").exists()  # the report reads the same PostgreSQL ledger


def _start(postgres_url: str, run_dir: Path, env: dict[str, str]) -> tuple[list[str], subprocess.Popen]:
    config = _config(postgres_url)
    path = run_dir.parent / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "autoprune.cli"]
    child = subprocess.Popen([*cli, "search", str(path), "--run-dir", str(run_dir), "--quiet", "--no-report"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while _count(postgres_url, f"autoprune/{run_dir.name}") < 3:
        assert child.poll() is None, child.stderr.read()[-1500:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return cli, child


def _exactly_once(spec: LedgerSpec, before: list) -> None:
    after = read_ledger(spec)
    assert len(after) == EVALUATIONS  # the requested count
    assert [r.policy for r in after[:len(before)]] == [r.policy for r in before]  # nothing lost
    assert len({json.dumps(dict(r.policy), sort_keys=True) for r in after}) == EVALUATIONS  # nothing twice


def test_a_run_on_a_shared_ledger_has_one_writer_on_any_host(postgres_url, tmp_path):
    # Host B has a copy of the run directory (a shared file system, or copied): its flock cannot see host A's
    # process, the lease in the database does.
    env = {**os.environ, "AUTOPRUNE_LEASE_SECONDS": "4"}
    (tmp_path / "a").mkdir()
    cli, child = _start(postgres_url, tmp_path / "a" / "leased", env)
    host_b = tmp_path / "b" / "leased"
    shutil.copytree(tmp_path / "a" / "leased", host_b, ignore=shutil.ignore_patterns(".lock"))
    refused = subprocess.run([*cli, "resume", str(host_b), "--quiet", "--no-report"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert refused.returncode == 2, refused.stderr[-1500:]
    assert f"pid {child.pid}" in refused.stderr and "'autoprune search'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    os.kill(child.pid, signal.SIGKILL)  # host A dies; its lease expires 4 s after its last heartbeat
    child.wait()
    spec = LedgerSpec(postgres_url, "autoprune/leased")
    before = read_ledger(spec)
    time.sleep(4.5)
    done = subprocess.run([*cli, "resume", str(host_b), "--quiet", "--no-report"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-1500:]
    _exactly_once(spec, before)


def test_postgresql_restarted_mid_search_loses_nothing(postgres, tmp_path):
    (tmp_path / "a").mkdir()
    run_dir = tmp_path / "a" / "restarted"
    cli, child = _start(postgres.url, run_dir, dict(os.environ))
    spec = LedgerSpec(postgres.url, "autoprune/restarted")
    before = read_ledger(spec)
    postgres.restart()
    _, err = child.communicate(timeout=600)
    print(f"search after the restart: exit {child.returncode}; {err.strip()[-300:]}")  # pytest -s shows which way
    # the pool replaces the dropped connections; a write caught by the restart stops the run with one line
    assert child.returncode == 0 or (child.returncode == 1 and "could not be reached (" in err
                                     and "autoprune resume" in err and len(err.strip().splitlines()) == 1), err[-1500:]
    done = subprocess.run([*cli, "resume", str(run_dir), "--quiet", "--no-report"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    _exactly_once(spec, before)
