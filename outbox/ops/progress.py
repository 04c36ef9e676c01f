"""One INFO line a minute while the relay publishes, so that a log shows that events go out.

``published 1200 events in the last 60 s, 35 pending``: nothing while nothing is published (an
idle relay stays quiet), at most one line per interval however busy it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from outbox.relay.observer import RelayObserver

#: Seconds between progress lines.
PROGRESS_INTERVAL = 60.0


class ProgressObserver(RelayObserver):
    """Counts acknowledged events and logs them once per `interval` (the clock is injectable)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger if logger is not None else logging.getLogger("outbox.relay")
        self.interval = interval
        self._clock = clock
        self._window_start = clock()
        self._published = 0
        self._pending: int | None = None

    def published(self, topic: str, count: int, delays: Sequence[float]) -> None:
        self._published += count
        self._maybe_log()

    def backlog(self, pending: int, oldest_age_seconds: float | None) -> None:
        self._pending = pending
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = self._clock()
        if now - self._window_start < self.interval:
            return
        if self._published:
            pending = "" if self._pending is None else f", {self._pending} pending"
            self.log.info(
                "published %d event%s in the last %g s%s",
                self._published,
                "" if self._published == 1 else "s",
                self.interval,
                pending,
                extra={"published": self._published, "pending": self._pending},
            )
        self._window_start = now
        self._published = 0


__all__ = ["PROGRESS_INTERVAL", "ProgressObserver"]
