"""What the inbox runner reports, for metrics and logs. The base class ignores everything."""

from __future__ import annotations


class InboxObserver:
    """Override the calls you need; every one is made on the runner's thread."""

    def applied(self, topic: str, event_type: str | None, seconds: float) -> None:
        """A record's handlers ran and its transaction committed."""

    def duplicate(self, topic: str) -> None:
        """A record whose event id was already applied was dropped."""

    def parked(self, topic: str) -> None:
        """A record was parked (handler failed every attempt, or no event id)."""

    def held(self, topic: str) -> None:
        """A record was held behind a parked event of its key."""

    def lag(self, topic: str, partition: int, lag: int) -> None:
        """Records of a partition not yet applied (high watermark minus stored offset)."""

    def state(self, component: str, up: bool) -> None:
        """The database became unreachable (False) or reachable again (True)."""
