"""A lease on a run whose ledger lives in a shared database (PostgreSQL), so one process writes it,
whichever host it runs on.

A run directory's ``flock`` (:func:`autoprune.run_directory.hold`) only sees processes of one machine.
When the ledger is a study in a database several hosts reach, the run is also leased in that database:
a row of ``autoprune_leases`` names the holder (pid, host, command, since) and the database time of its
last heartbeat. A background thread renews it every quarter of the lease; a holder that dies stops
renewing, and after :data:`LEASE_SECONDS` anyone may take the run over (at once, on the host it died
on). Times are the database's own clock, so hosts with skewed clocks agree. A holder that was stalled
(stopped, swapped out, cut off) for longer than the lease and was taken over learns it before its next
ledger write (:meth:`Lease.check`) and stops without writing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

__all__ = ["LEASE_SECONDS", "Lease", "LeaseLostError", "RunLeasedError", "lease"]

log = logging.getLogger(__name__)
# How long a lease outlives its holder's last heartbeat: the wait before a dead holder's run can be resumed
# from another host. AUTOPRUNE_LEASE_SECONDS overrides it (tests use a few seconds).
LEASE_SECONDS = float(os.environ.get("AUTOPRUNE_LEASE_SECONDS", "60"))

_TABLE = "autoprune_leases"
_NOW = {  # the database's clock in seconds since the epoch
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


class RunLeasedError(ValueError):
    """Another live process, perhaps on another host, holds the run's lease."""


class LeaseLostError(RunLeasedError):
    """This process was stalled for longer than its lease and another one took the run over."""


class Lease:
    """A held lease; :meth:`check` raises :class:`LeaseLostError` once another process has taken it."""

    def __init__(self, engine: sa.Engine, run: str, token: str, seconds: float) -> None:
        self.engine, self.run, self.token, self.seconds = engine, run, token, seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="autoprune-lease", daemon=True)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease is no longer ours (asks the database)."""
        if not self._lost.is_set():
            self._renew()
        if self._lost.is_set():
            raise LeaseLostError(
                f"run {self.run} was taken over by another process while this one was stalled for over "
                f"{self.seconds:g} s; this one stopped without recording more (nothing is lost: the other continues)")

    def _renew(self) -> None:
        now = _NOW[self.engine.dialect.name]
        try:
            with self.engine.begin() as db:
                renewed = db.execute(sa.text(f"update {_TABLE} set beat = {now} where run = :run and token = :token"),
                                     {"run": self.run, "token": self.token}).rowcount
        except sa.exc.SQLAlchemyError as e:  # the database is away: nobody else can take the lease either
            log.warning("lease of %s not renewed (%s); retrying", self.run, type(e).__name__)
            return
        if not renewed:
            self._lost.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 4) and not self._lost.is_set():
            self._renew()

    def _release(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            with self.engine.begin() as db:
                db.execute(sa.text(f"delete from {_TABLE} where run = :run and token = :token"),
                           {"run": self.run, "token": self.token})
        except sa.exc.SQLAlchemyError:  # it expires by itself
            pass
        self.engine.dispose()


@contextmanager
def lease(url: str, run: str, command: str, *, seconds: float | None = None) -> Iterator[Lease]:
    """Hold the lease on ``run`` in the database at ``url`` while the block runs.

    Raises:
        RunLeasedError: another process's lease is live; the message names it and what to do.
    """
    seconds = LEASE_SECONDS if seconds is None else seconds
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name not in _NOW:
        engine.dispose()
        raise ValueError(f"search.storage {url.split('://')[0]}: leases need PostgreSQL or SQLite; use one of them")
    now, token = _NOW[engine.dialect.name], uuid.uuid4().hex
    holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    with engine.begin() as db:
        db.execute(sa.text(f"create table if not exists {_TABLE} (run varchar(512) primary key, token varchar(64) "
                           "not null, holder text not null, beat double precision not null)"))
    with engine.begin() as db:  # one statement: two processes cannot both take it
        db.execute(sa.text(f"insert into {_TABLE} (run, token, holder, beat) values (:run, :token, :holder, {now}) "
                           "on conflict (run) do update set token = excluded.token, holder = excluded.holder, "
                           f"beat = excluded.beat where {_TABLE}.beat < {now} - :seconds"),
                   {"run": run, "token": token, "holder": holder, "seconds": seconds})
        row = _holder_row(db, run, now)
    if row[0] != token and _died_here(json.loads(row[1])):  # its process is gone: no need to wait for expiry
        with engine.begin() as db:
            db.execute(sa.text(f"update {_TABLE} set token = :token, holder = :holder, beat = {now} "
                               "where run = :run and token = :old"),
                       {"run": run, "token": token, "holder": holder, "old": row[0]})
            row = _holder_row(db, run, now)
    if row[0] != token:
        engine.dispose()
        raise RunLeasedError(_in_use(run, json.loads(row[1]), float(row[2]), seconds))
    held = Lease(engine, run, token, seconds)
    held._thread.start()
    try:
        yield held
    finally:
        held._release()


def _holder_row(db: sa.Connection, run: str, now: str) -> Any:
    """(token, holder JSON, seconds since the last heartbeat) of the lease on ``run``."""
    return db.execute(sa.text(f"select token, holder, {now} - beat from {_TABLE} where run = :run"), {"run": run}).one()


def _died_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran on this host and its process no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _in_use(run: str, holder: dict[str, Any], age: float, seconds: float) -> str:
    return (f"run {run} is in use by '{holder.get('command', '?')}' (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')}; its lease in the ledger database was "
            f"renewed {age:.0f} s ago); wait for it to end or stop it; if it died, its lease expires "
            f"{max(0.0, seconds - age):.0f} s from now and then 'autoprune resume' continues the run")
