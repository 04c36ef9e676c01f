"""What a relay knows about its own health: the state the probes report (``/livez``,
``/readyz``) and the one-line description of what it is waiting for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from outbox.config import RelayConfig
from outbox.errors import PublishError
from outbox.relay.lease import first_line
from outbox.relay.observer import RelayObserver


@dataclass
class RelayState:
    """What the health endpoints report."""

    #: None until first checked, so that the first state is reported too.
    database: bool | None = None
    broker: bool | None = None
    lease: bool = False
    started: bool = False
    last_loop: float = field(default_factory=time.monotonic)
    detail: str = ""


class RelayHealth:
    """Keeps a `RelayState` and tells the observer each change of a component, once."""

    def __init__(self, config: RelayConfig, observer: RelayObserver) -> None:
        self.config = config
        self.observer = observer
        self.state = RelayState()
        # Per component: when its silence began, if the report that it is down said so.
        self._silent_since: dict[str, float] = {}

    def mark(self, component: str, up: bool, detail: str = "", since: float | None = None) -> None:
        """Record that `component` ("database" or "broker") is up or down; `since` (by
        `time.monotonic`): when the silence that makes it down began, if known.

        A change is reported to the observer; so is every repeated report of "down" (the
        observer logs changes, and at most a reminder a minute, never one line per report)."""
        if getattr(self.state, component) is not up:
            setattr(self.state, component, up)
            if not up and since is not None:
                self._silent_since[component] = since
            silent = self._silent_since.pop(component, None) if up else None
            if silent is not None:
                detail = detail or (
                    f"down for {time.monotonic() - silent:.1f}s since the first unacknowledged send"
                )
            self.observer.state(component, up, detail)
        elif not up:
            self.observer.state(component, up, detail)

    def failed(self, error: BaseException) -> None:
        """A transient failure: the component it came from is down."""
        component = "broker" if isinstance(error, PublishError) else "database"
        self.mark(component, False, self.describe(error))

    def describe(self, error: BaseException) -> str:
        """What the relay is waiting for, in one line (for the logs and /readyz)."""
        if isinstance(error, PublishError):
            return f"waiting for the broker at {self.config.bootstrap_servers}: {error}"
        return f"waiting for the database {self.config.masked_db_url}: {first_line(error)}"

    def alive(self) -> bool:
        """The loop has turned recently (liveness probe)."""
        return time.monotonic() - self.state.last_loop < max(30.0, self.config.lease_ttl * 5)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Database and broker reachable (readiness probe), with the lease state."""
        s = self.state
        info = {
            "database": s.database,
            "broker": s.broker,
            "lease": "active" if s.lease else "standby",
        }
        return bool(s.started and s.database and s.broker), info


__all__ = ["RelayHealth", "RelayState"]
