"""What a relay reports while it runs. Metrics and logs subscribe through this interface.

Every method is called from the relay's own thread (`relays` and `lease` also from its
lease-keeper thread), must return quickly and must not raise.
The base class does nothing, so an observer overrides only what it needs.
"""

from __future__ import annotations

from collections.abc import Sequence


class RelayObserver:
    def published(self, topic: str, count: int, delays: Sequence[float]) -> None:
        """`count` events acknowledged on `topic`; `delays` are seconds from recording to ack."""

    def publish_failed(self, topic: str, kind: str, count: int) -> None:
        """`count` sends failed; kind is "unavailable" (outage) or "rejected" (this event)."""

    def parked(self, topic: str, count: int, reason: str = "") -> None:
        """`count` events were parked after a permanent rejection; `reason` names the first."""

    def batch(self, size: int, seconds: float) -> None:
        """A batch of `size` events was read, sent and marked in `seconds`."""

    def backlog(self, pending: int, oldest_age_seconds: float | None) -> None:
        """The pending backlog, sampled now and then (not on every batch)."""

    def lease(self, held: bool, released: bool = False) -> None:
        """This relay became (True) or stopped being (False) the active relay; `released` when
        it gave the lease up itself (a clean stop) rather than losing it."""

    def state(self, component: str, up: bool, detail: str = "") -> None:
        """A dependency ("database" or "broker") became reachable or unreachable."""

    def relays(self, live: int) -> None:
        """`live` relays of this table (this one included) beat within the lease TTL; reported
        after each heartbeat. May be called from the relay's lease-keeper thread."""


class CompositeObserver(RelayObserver):
    """Fans every report out to several observers."""

    def __init__(self, observers: Sequence[RelayObserver]) -> None:
        self._observers = tuple(observers)

    def published(self, topic: str, count: int, delays: Sequence[float]) -> None:
        for o in self._observers:
            o.published(topic, count, delays)

    def publish_failed(self, topic: str, kind: str, count: int) -> None:
        for o in self._observers:
            o.publish_failed(topic, kind, count)

    def parked(self, topic: str, count: int, reason: str = "") -> None:
        for o in self._observers:
            o.parked(topic, count, reason)

    def batch(self, size: int, seconds: float) -> None:
        for o in self._observers:
            o.batch(size, seconds)

    def backlog(self, pending: int, oldest_age_seconds: float | None) -> None:
        for o in self._observers:
            o.backlog(pending, oldest_age_seconds)

    def lease(self, held: bool, released: bool = False) -> None:
        for o in self._observers:
            o.lease(held, released)

    def state(self, component: str, up: bool, detail: str = "") -> None:
        for o in self._observers:
            o.state(component, up, detail)

    def relays(self, live: int) -> None:
        for o in self._observers:
            o.relays(live)
