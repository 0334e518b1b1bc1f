"""The run directory: every file of a run, and its guarantees (one writer, a ledger that survives damage,
a configuration that cannot drift).

``RUN_DIR/`` holds ``config.yaml`` (resolved) and ``config.frozen.json`` (as started), ``ledger.db`` (every
evaluation) and its backup ``ledger.db.bak``, ``searcher.ckpt`` (the backend's state after its last step),
``.lock``, ``log.txt``, ``pruningnet.pt`` (a PruningNet evaluator's generators, when the run uses one), and
once finished ``best_policy.json``, ``pruned.pt``, ``result.json``; later ``finetuned-N.pt`` /
``finetuned.pt``, ``export/``, ``report.html``.

* **Lock** (:func:`hold`): every command that writes into a run (``search``, ``resume``, ``finetune``,
  ``export``, ``report``) holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as it runs. The
  kernel releases it when the holder exits or dies, so a killed run never blocks the next one; a second
  command on a held run stops at once with :class:`RunInUseError`, naming the holder.
* **A ledger that survives damage** (:func:`backup_ledger`, :func:`check_ledger`): the SQLite ledger is
  copied with SQLite's online backup API while the search runs (``ledger.db.bak``, replaced atomically);
  a damaged ledger is detected before the run opens it, with one line naming the backup, how many
  evaluations it holds, and the command that continues from it.
* **Frozen configuration** (:func:`freeze`, :func:`check_unchanged`): a run records the configuration
  it was started with (``config.frozen.json``). ``resume`` refuses a ``config.yaml`` edited since: every
  key decides what was or will be evaluated. The safe changes are options of ``resume`` (``--evaluations``
  to extend the search, ``--workers``, ``--address``), which update both files together.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import pickle
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["BACKUP", "CHECKPOINT", "FROZEN", "LATENCY_CALIBRATION", "LEDGER", "LOCK", "PRUNINGNET",
           "CheckpointDamagedError",
           "ConfigChangedError", "LedgerDamagedError", "RunInUseError", "backup_ledger", "check_ledger",
           "check_unchanged", "freeze", "hold", "holding", "load_state", "logging_into", "save_state"]

T = TypeVar("T")

LOCK = ".lock"
FROZEN = "config.frozen.json"
LEDGER = "ledger.db"
CHECKPOINT = "searcher.ckpt"
BACKUP = "ledger.db.bak"
LATENCY_CALIBRATION = "latency_calibration.json"  # the search's measured latency limit, kept for a resume
PRUNINGNET = "pruningnet.pt"  # the trained PruningNet of an ``evaluation.kind: pruningnet`` run (and its checkpoint)


class RunInUseError(ValueError):
    """Another process holds the run directory."""


class CheckpointDamagedError(ValueError):
    """The searcher's checkpoint cannot be read."""


class LedgerDamagedError(ValueError):
    """The run's SQLite ledger cannot be read."""


class ConfigChangedError(ValueError):
    """``config.yaml`` was edited in keys that decide what the run evaluates."""


@contextmanager
def hold(run_dir: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold ``run_dir`` exclusively while the block runs (see the module docstring).

    Raises:
        RunInUseError: another live process holds it; the message names it and what to do.
    """
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir} holds no run (no such directory); start one with 'autoprune search CONFIG'")
    path = Path(run_dir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunInUseError(
            f"{Path(run_dir)} is in use by '{holder.get('command', '?')}' (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to end, or stop it "
            f"(kill {holder.get('pid', 'PID')}) and then 'autoprune resume {Path(run_dir)}'") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock (the kernel does the same if we die)


def holding(command: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a function whose first argument is a run directory to :func:`hold` it while it runs."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def held(run_dir: str | os.PathLike[str], *args: Any, **kwargs: Any) -> T:
            with hold(run_dir, command):
                return fn(run_dir, *args, **kwargs)
        return held
    return wrap


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return dict(json.loads(os.pread(fd, 4096, 0).decode() or "{}"))
    except (ValueError, OSError):
        return {}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a kill or a full disk leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def freeze(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Record the configuration a run is (re)started with (written atomically)."""
    write_atomically(Path(run_dir) / FROZEN, json.dumps(config, indent=2, sort_keys=True, default=str))


def check_unchanged(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Compare ``config`` (as read from ``config.yaml``) with the frozen one.

    Raises:
        ConfigChangedError: a key differs; one line lists them and the way out.
    """
    path = Path(run_dir) / FROZEN
    if not path.exists():  # a run started before configurations were frozen: freeze what is there now
        freeze(run_dir, config)
        return
    before = _flatten(json.loads(path.read_text()))
    now = _flatten(json.loads(json.dumps(config, default=str)))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed[:4])
        raise ConfigChangedError(
            f"{Path(run_dir) / 'config.yaml'} was edited since the run started: {shown}"
            f"{' and more' if len(changed) > 4 else ''}; undo the edit (a run evaluates one configuration), start a "
            "new run with 'autoprune search', or use resume's own options --evaluations, --workers, --address")


def _completed(path: Path) -> int:
    """Completed trials in a SQLite ledger (read-only); raises ``sqlite3.DatabaseError`` when damaged."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        ok = db.execute("pragma quick_check").fetchone()[0]
        if ok != "ok":
            raise sqlite3.DatabaseError(ok)
        tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
        return int(db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]) \
            if "trials" in tables else 0


def backup_ledger(run_dir: str | os.PathLike[str]) -> None:
    """Copy ``ledger.db`` consistently (SQLite's online backup) to ``ledger.db.bak``, atomically."""
    source, target = Path(run_dir) / LEDGER, Path(run_dir) / BACKUP
    if not source.exists():
        return
    tmp = target.with_suffix(".tmp")
    with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
        src.backup(dst)
    os.replace(tmp, target)


def check_ledger(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`LedgerDamagedError` (one line: the backup and the way back) if ``ledger.db`` is damaged."""
    path, backup = Path(run_dir) / LEDGER, Path(run_dir) / BACKUP
    if not path.exists():
        return
    try:
        _completed(path)
        return
    except sqlite3.DatabaseError as e:
        problem = str(e) or type(e).__name__
    try:
        saved = _completed(backup) if backup.exists() else None
    except sqlite3.DatabaseError:
        saved = None
    if saved is None:
        raise LedgerDamagedError(f"{path} is damaged ({problem}) and has no readable backup; move it away to "
                                 "search again from scratch in this run")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.stat().st_mtime))
    raise LedgerDamagedError(f"{path} is damaged ({problem}); its backup of {when} holds {saved} completed "
                             f"evaluations (later ones are lost): cp {backup} {path} && autoprune resume {run_dir}")


def save_state(run_dir: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write a searcher's state to ``searcher.ckpt`` atomically (a kill mid-write leaves the previous one)."""
    tmp = Path(run_dir) / (CHECKPOINT + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(run_dir) / CHECKPOINT)


def load_state(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The searcher's state saved in ``run_dir``, or None when there is none.

    Raises:
        CheckpointDamagedError: the file cannot be read; the message says how to continue without it.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            return dict(pickle.load(f))
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as e:
        raise CheckpointDamagedError(f"{path} is damaged ({type(e).__name__}); delete it to continue from the "
                                     "ledger alone (recorded evaluations are kept and not re-run; the searcher "
                                     "restarts)") from e


@contextmanager
def logging_into(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Send autoprune's log lines to ``run_dir/log.txt`` while the block runs (the file is closed after)."""
    handler = logging.FileHandler(Path(run_dir) / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("autoprune")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
