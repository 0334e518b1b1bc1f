"""A real two-node Ray cluster on loopback: a search spread over both nodes, its driver killed, resumed."""

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

import pytest
import yaml

from autoprune.search import count_recorded, read_ledger

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
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], env=env,
                       check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address={address}", *common], env=env, check=True, capture_output=True,
                       timeout=180)
        yield address, env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def test_search_on_two_nodes_survives_a_killed_driver(cluster, tmp_path):
    address, env = cluster
    config = {"model": {"name": "resnet20", "train_epochs": 0.5}, "data": {"name": "digits", "val_size": 200},
              "budget": {"flops": 0.5}, "search": {"backend": "random", "evaluations": EVALUATIONS,
                                                   "workers": 2, "address": address, "options": {"batch_size": 2}},
              "evaluation": {"val_size": 200, "bn_batches": 1}}
    path, run_dir = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "autoprune.cli"]
    driver = subprocess.Popen([*cli, "search", str(path), "--run-dir", str(run_dir), "--quiet", "--no-report"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while count_recorded(run_dir) < 3:
        assert driver.poll() is None, driver.stderr.read().decode()[-1500:]
        assert time.monotonic() < deadline, "the search on the cluster never got going"
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = read_ledger(run_dir)
    assert "2 Ray workers on 2 node(s)" in (run_dir / "log.txt").read_text()

    done = subprocess.run([*cli, "resume", str(run_dir), "--quiet", "--no-report"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    after = read_ledger(run_dir)
    assert len(after) == EVALUATIONS and len({json.dumps(r.policy.to_dict(), sort_keys=True) for r in after}) == 8
    assert [r.policy for r in after[:len(before)]] == [r.policy for r in before]
    assert json.loads((run_dir / "result.json").read_text())["meets_budget"]
