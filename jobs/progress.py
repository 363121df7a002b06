"""Progress bars on stderr while long commands run, only when stderr is a terminal.

Jobs report through `ctx.progress(task, done, total)` (`jobs.context.Progress`): the sync per
table (rows read), link-orphans (leads linked), journeys (journeys run). Nothing is shown, and
nothing costs, when stderr is a file or a pipe (the scheduler, `--json`, CI): `bars` then gives
None and the jobs skip the call. Drawn by rich, on stderr, so stdout stays the command's output.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from jobs.context import Progress as Report


def on_terminal() -> bool:
    """Whether progress should be drawn: stderr is an interactive terminal."""
    return sys.stderr.isatty()


class _Bars:
    """One bar per task label; a task without a total pulses and counts."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __call__(self, task: str, done: int, total: int | None = None) -> None:
        with self._lock:
            if task not in self._tasks:
                self._tasks[task] = self._progress.add_task(task, total=total)
            self._progress.update(self._tasks[task], completed=done, total=total)


@contextmanager
def bars(enabled: bool) -> Iterator[Report | None]:
    """Progress bars for the block when `enabled` (see `on_terminal`), else None."""
    if not enabled:
        yield None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:>10,.0f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with progress:
        yield _Bars(progress)


@contextmanager
def spinner(message: str, enabled: bool) -> Iterator[None]:
    """A spinner with `message` for a step whose progress cannot be counted (demo seeding)."""
    if not enabled:
        yield
        return
    with Console(stderr=True).status(message):
        yield
