"""Progress bars with an ETA for every long step, on a terminal and in a log file alike.

On a terminal `progress_bar()` is rich's live bar (description, bar, done/total, elapsed, eta, info).
When the output is a pipe or a file (`make demo | tee demo.log`, CI, a background job), rich draws
nothing until the bar stops, so a long step would be minutes of silence; there the same bar prints one
plain line every `log_seconds` (and when a task finishes):

    pretraining vision tower: 120/800 (15%) elapsed 1:02 eta 5:51 loss 2.314
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_SECONDS = 20.0


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LoggedProgress(Progress):
    """rich's Progress that, when its console is not a terminal, prints a plain line per task every
    `log_seconds` of wall time instead of drawing (a task's `info` field is appended)."""

    def __init__(self, *columns, log_seconds: float = LOG_SECONDS, console: Console | None = None,
                 disable: bool = False, **kwargs) -> None:
        console = console or Console(stderr=False)
        self._log = not disable and not console.is_terminal
        self._log_seconds = log_seconds
        self._last: dict[TaskID, float] = {}
        super().__init__(*columns, console=console, disable=disable or self._log, **kwargs)

    def update(self, task_id: TaskID, **kwargs) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._maybe_log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def add_task(self, description: str, *args, **kwargs) -> TaskID:  # type: ignore[override]
        kwargs.setdefault("info", "")
        task_id = super().add_task(description, *args, **kwargs)
        if self._log:
            self._last[task_id] = time.monotonic()
            total = self._tasks[task_id].total
            self.console.print(f"{description}: started ({_count(total)} to do)")
        return task_id

    def _maybe_log(self, task_id: TaskID) -> None:
        if not self._log:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if done and self._last.get(task_id) is None:
            return  # already logged as finished
        if not done and now - self._last.get(task_id, 0.0) < self._log_seconds:
            return
        self._last[task_id] = None if done else now  # type: ignore[assignment]
        share = f" ({task.completed / task.total:.0%})" if task.total else ""
        info = task.fields.get("info", "")
        eta = "done" if done else f"eta {_clock(task.time_remaining)}"
        self.console.print(f"{task.description}: {_count(task.completed)}/{_count(task.total)}{share} "
                           f"elapsed {_clock(task.elapsed)} {eta}{' ' + info if info else ''}")


def _count(v: float | None) -> str:
    return "?" if v is None else str(int(v))


def progress_bar(console: Console | None = None, *, enabled: bool = True, transient: bool = False,
                 log_seconds: float = LOG_SECONDS) -> LoggedProgress:
    """The project's progress bar (use as a context manager; tasks may carry an `info` field)."""
    return LoggedProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                          TextColumn("{task.fields[info]}"), console=console, disable=not enabled,
                          transient=transient, log_seconds=log_seconds)
