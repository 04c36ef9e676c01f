"""The active relay's periodic chore between passes: the purge of retained published events.
(Backlog samples are taken by the lease keeper's timer, `outbox.relay.timer`, so that they go
on while the loop waits for the broker; `sample` is there for a relay run without it.)"""

from __future__ import annotations

import logging
import time

from outbox.config import RelayConfig
from outbox.relay.observer import RelayObserver
from outbox.relay.store import OutboxStore

logger = logging.getLogger("outbox.relay")

#: Seconds between backlog samples (a COUNT query) reported to the observer.
BACKLOG_INTERVAL = 5.0
#: Seconds between purges of retained published events.
PURGE_INTERVAL = 60.0


class Housekeeping:
    """Runs each chore when it is due; called by the loop after a pass (lease held)."""

    def __init__(self, config: RelayConfig, store: OutboxStore, observer: RelayObserver) -> None:
        self.config = config
        self.store = store
        self.observer = observer
        self._next_backlog = 0.0
        self._next_purge = 0.0

    def run(self, sample: bool = True) -> None:
        """The chores that are due; backlog samples only with `sample` (no timer running)."""
        now = time.monotonic()
        if sample and now >= self._next_backlog:
            self._next_backlog = now + BACKLOG_INTERVAL
            report_backlog(self.store, self.observer)
        if self.config.retention > 0 and now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL
            purged = self.store.purge(self.config.retention)
            if purged:
                logger.info(
                    "purged %d published events older than %ss", purged, self.config.retention
                )


def report_backlog(store: OutboxStore, observer: RelayObserver) -> None:
    """Count the backlog (one COUNT query) and report it to the observer."""
    status = store.status()
    observer.backlog(status.pending, status.oldest_pending_age_seconds)


__all__ = ["BACKLOG_INTERVAL", "Housekeeping", "report_backlog"]
