"""What reaches the terminal during long work: a rich progress bar on a terminal, plain log lines elsewhere
(CI, files), and other libraries' chatter (:func:`stderr_into`) kept out of it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

__all__ = ["ProgressTask", "bar_columns", "stderr_into", "track_progress"]


class ProgressTask:
    """Handle returned by :func:`track_progress`; call :meth:`advance` as work completes."""

    def __init__(self, description: str, total: int, bar: Progress | None, console: Console | None,
                 log_every_s: float) -> None:
        self.description, self.total, self.done = description, total, 0
        self._bar, self._console, self._log_every_s = bar, console, log_every_s
        self._task = bar.add_task(description, total=total, info="") if bar else None
        self._last_log = time.perf_counter()

    def advance(self, n: int = 1, **info: float | str) -> None:
        """Mark ``n`` more units done; ``info`` (e.g. ``loss=0.3``) is shown beside the bar."""
        self.done += n
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=n, info=text)
            return
        if self._console is None:  # disabled
            return
        now = time.perf_counter()
        if now - self._last_log >= self._log_every_s or self.done >= self.total:
            self._last_log = now
            self._console.print(f"{self.description}: {self.done}/{self.total} {text}".rstrip(), highlight=False)


def bar_columns() -> tuple[ProgressColumn, ...]:
    """The bar's columns: fixed widths first, so elapsed time and ETA fit an 80-column terminal; the free-text
    info (loss, best so far, the phase) takes what is left and is cut with an ellipsis."""
    return (TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)), BarColumn(bar_width=10),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=22)))


@contextmanager
def track_progress(description: str, total: int, *, enabled: bool = True,
                   log_every_s: float = 10.0) -> Iterator[ProgressTask]:
    """Show progress of ``total`` units of work.

    On a terminal this is a rich progress bar with ETA; when stderr is not a terminal it prints one
    plain line at most every ``log_every_s`` seconds, so CI logs stay readable.
    """
    console = Console(stderr=True)
    if not enabled:  # a silent task: same interface, prints nothing
        yield ProgressTask(description, total, None, None, log_every_s)
        return
    if console.is_terminal and sys.stderr.isatty():
        with Progress(*bar_columns(), console=console, transient=False) as bar:
            yield ProgressTask(description, total, bar, console, log_every_s)
    else:
        yield ProgressTask(description, total, None, console, log_every_s)



@contextmanager
def stderr_into(sink: BinaryIO) -> Iterator[None]:
    """Send everything written to the process's stderr during the block into ``sink``: file descriptor 2
    itself, because Ray's C++ core and its worker-launch notices write there, below Python's ``sys.stderr``."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
