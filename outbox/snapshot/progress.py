"""The live progress bar of `outbox snapshot run`: rows done of the estimate, rows/s, ETA."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from outbox.snapshot.options import Progress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID


class ProgressBar:
    """A rich progress bar fed by the runner's `Progress` reports (a context manager)."""

    def __init__(self, console: Console, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self.label = label
        self.bar: RichProgress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        # This run's wall-clock rate (pauses and the rate cap included), from its first report.
        self._first: tuple[float, int] | None = None

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bar.stop()

    def update(self, progress: Progress) -> None:
        info = progress.info
        total = max(info.total_estimate or 0, info.rows_done)
        now = time.monotonic()
        if self._first is None:
            self._first = (now, info.rows_done)
        began, rows_then = self._first
        rate = f"{(info.rows_done - rows_then) / (now - began):,.0f}" if now > began else "-"
        if self.task is None:
            self.task = self.bar.add_task(
                self.label, total=total, completed=info.rows_done, rate=rate, note=""
            )
        self.bar.update(
            self.task,
            total=total,
            completed=info.rows_done,
            rate=rate,
            note=progress.waiting or "",
        )
