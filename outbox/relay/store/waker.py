"""The relay's wait for new events between reads: the portable one, a timer. PostgreSQL's
wake-up on commit (`postgresql.PostgresWaker`) extends it."""

from __future__ import annotations

import threading


class Waker:
    """Waits for new events. This one simply sleeps: polling is the fallback everywhere."""

    def __init__(self) -> None:
        self._interrupt = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when woken early."""
        woken = self._interrupt.wait(timeout)
        self._interrupt.clear()
        return woken

    def interrupt(self) -> None:
        self._interrupt.set()

    def close(self) -> None:
        self.interrupt()
