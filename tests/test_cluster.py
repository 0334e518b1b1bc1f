"""A real two-node Ray cluster on loopback: a search spread over both nodes, its driver killed and resumed;
then its second node killed mid-search, and the search finishing on the first."""

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

from autoprune.search import count_recorded, read_ledger
from tests.test_search_cli import FAST_SMOKE

pytestmark = pytest.mark.ray  # make test runs these alone, after the parallel part

RAY = shutil.which("ray", path=str(Path(sys.executable).parent))
EVALUATIONS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    if RAY is None:
        pytest.skip("the ray command is not installed next to this Python")
    # a short folder: Ray's Unix sockets live under it and their paths are limited to ~107 bytes
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled"}  # loopback only: no tokens to share
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        # the head has room for a worker the second node loses; the actors spread, one per node
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", "--num-cpus=2",
                        *common], env=env, check=True, capture_output=True, timeout=180)
        head = _ray_processes(tmp)
        subprocess.run([RAY, "start", f"--address={address}", "--num-cpus=1", *common], env=env, check=True,
                       capture_output=True, timeout=180)
        yield SimpleNamespace(address=address, env=env, second_node=_ray_processes(tmp) - head)
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def _ray_processes(tmp: str) -> set[int]:
    """Ray's daemons of the cluster whose sockets and logs are under ``tmp``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and tmp in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def _config(address: str) -> dict:
    return {**FAST_SMOKE, "search": {"backend": "random", "evaluations": EVALUATIONS, "workers": 2,
                                     "address": address, "options": {"batch_size": 2}}}


def _start(cluster, tmp_path: Path) -> tuple[list[str], Path, subprocess.Popen]:
    """A search on the cluster, once it has recorded 3 evaluations."""
    path, run_dir = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(_config(cluster.address)))
    cli = [sys.executable, "-m", "autoprune.cli"]
    driver = subprocess.Popen([*cli, "search", str(path), "--run-dir", str(run_dir), "--quiet", "--no-report"],
                              env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while count_recorded(run_dir) < 3:
        assert driver.poll() is None, driver.stderr.read()[-1500:]
        assert time.monotonic() < deadline, "the search on the cluster never got going"
        time.sleep(0.1)
    return cli, run_dir, driver


def _exactly_once(run_dir: Path, before: list) -> None:
    after = read_ledger(run_dir)
    assert len(after) == EVALUATIONS and len({json.dumps(r.policy.to_dict(), sort_keys=True) for r in after}) == 8
    assert [r.policy for r in after[:len(before)]] == [r.policy for r in before]
    assert json.loads((run_dir / "result.json").read_text())["meets_budget"]


def test_search_on_two_nodes_survives_a_killed_driver(cluster, tmp_path):
    cli, run_dir, driver = _start(cluster, tmp_path)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = read_ledger(run_dir)
    assert "2 Ray workers on 2 node(s)" in (run_dir / "log.txt").read_text()

    done = subprocess.run([*cli, "resume", str(run_dir), "--quiet", "--no-report"], env=cluster.env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    _exactly_once(run_dir, before)


def test_search_finishes_on_the_first_node_when_the_second_dies(cluster, tmp_path):
    # runs last: the cluster keeps only its head afterwards
    assert cluster.second_node, "the second node's processes were not found"
    _, run_dir, driver = _start(cluster, tmp_path)
    before = read_ledger(run_dir)
    for pid in cluster.second_node:  # the whole node at once, as a lost machine
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-1500:]  # Ray restarted its worker on the head and re-ran its evaluation
    _exactly_once(run_dir, before)
