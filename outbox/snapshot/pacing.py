"""Pacing between chunks: the adaptive chunk size, the rate cap, the backlog pause."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from outbox.snapshot.options import SnapshotOptions

#: A chunk's transaction holds its rows' locks, and the application's writes to them wait: a
#: chunk slower than this halves the next one (down to `MIN_CHUNK`), a chunk under half of it
#: grows the next one back towards `chunk_size`.
TARGET_CHUNK_SECONDS = 0.1
MIN_CHUNK = 10


def next_limit(limit: int, seconds: float, ceiling: int) -> int:
    """The next chunk's size after a chunk of `limit` rows took `seconds`."""
    if seconds > TARGET_CHUNK_SECONDS:
        return max(min(MIN_CHUNK, ceiling), limit // 2)
    if seconds < TARGET_CHUNK_SECONDS / 2:
        return min(ceiling, limit * 2)
    return limit


class Pacer:
    """Waits between chunks: for the relay (``max_pending``) and for the rate cap."""

    def __init__(self, options: SnapshotOptions, stop: threading.Event) -> None:
        self.options = options
        self.stop = stop

    def wait_for_backlog(
        self, pending_over: Callable[[int], int], report: Callable[[str], None]
    ) -> None:
        """Return once at most ``max_pending`` events wait for the relay (or on stop)."""
        limit = self.options.max_pending
        if limit is None:
            return
        while not self.stop.is_set():
            if pending_over(limit) <= limit:
                return
            report(f"paused: over {limit} events wait for the relay")
            self.stop.wait(0.5)

    def throttle(self, started: float, rows: int) -> None:
        """Sleep until `rows` since `started` are within ``max_rows_per_second``."""
        rate = self.options.max_rows_per_second
        if rate is None:
            return
        ahead = rows / rate - (time.monotonic() - started)
        if ahead > 0:
            self.stop.wait(ahead)
