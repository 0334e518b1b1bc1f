"""The lease on a run whose ledger is in a shared database (here a SQLite file; PostgreSQL in test_postgres.py)."""

import os
import time

import pytest
import sqlalchemy as sa

from autoprune.run_lease import LeaseLostError, RunLeasedError, lease


def test_a_second_holder_is_refused_with_the_first_ones_pid_host_and_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with lease(url, "autoprune/run", "autoprune search"):
        with pytest.raises(RunLeasedError) as refused, lease(url, "autoprune/run", "autoprune resume"):
            pass
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "'autoprune search'" in message and "\n" not in message
        with lease(url, "autoprune/other", "autoprune search"):  # another run in the same database
            pass
    with lease(url, "autoprune/run", "autoprune resume"):  # released at the end of the block
        pass


def test_a_dead_holders_lease_expires_and_a_stalled_holder_learns_it_was_taken_over(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with lease(url, "r", "autoprune search", seconds=1.0) as first:
        first._stop.set()  # as a stopped or dead process: no more heartbeats
        first._thread.join()
        time.sleep(1.2)
        with lease(url, "r", "autoprune resume", seconds=1.0) as second:
            with pytest.raises(LeaseLostError, match="taken over"):
                first.check()  # before its next ledger write, the stalled one stops
            second.check()  # the new holder is fine


def test_heartbeats_keep_a_live_lease(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with lease(url, "r", "autoprune search", seconds=0.4) as held:
        time.sleep(1.0)  # 2.5 lease lengths: renewed in the background
        with pytest.raises(RunLeasedError):
            with lease(url, "r", "autoprune resume", seconds=0.4):
                pass
        held.check()
    engine = sa.create_engine(url)
    with engine.connect() as db:
        assert db.execute(sa.text("select count(*) from autoprune_leases")).scalar() == 0  # released
    engine.dispose()


def test_a_holder_that_died_on_this_host_is_replaced_at_once(tmp_path):
    import json
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with lease(url, "r", "autoprune search"):
        pass
    engine = sa.create_engine(url)
    with engine.begin() as db:  # a lease as a SIGKILLed process leaves it: fresh, never released
        holder = json.dumps({"pid": int(dead.stdout), "host": __import__("socket").gethostname(),
                             "command": "autoprune search", "since": "then"})
        db.execute(sa.text("insert into autoprune_leases values ('r', 'old', :h, 1e12)"), {"h": holder})
    engine.dispose()
    with lease(url, "r", "autoprune resume") as held:
        held.check()
