"""The active relay's periodic chores between passes: backlog samples for the observer, and
the purge of retained published events."""

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

    def run(self) -> None:
        now = time.monotonic()
        if now >= self._next_backlog:
            self._next_backlog = now + BACKLOG_INTERVAL
            status = self.store.status()
            self.observer.backlog(status.pending, status.oldest_pending_age_seconds)
        if self.config.retention > 0 and now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL
            purged = self.store.purge(self.config.retention)
            if purged:
                logger.info(
                    "purged %d published events older than %ss", purged, self.config.retention
                )


__all__ = ["Housekeeping"]
