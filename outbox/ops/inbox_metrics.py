"""Prometheus metrics for the inbox, as an `InboxObserver` (prometheus-client is optional).

Each observer owns its registry, like the relay's `PrometheusObserver`. Labels carry topics,
partitions and event types, never event ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from outbox.inbox.observer import InboxObserver
from outbox.ops.exposition import Exposition

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Handler transaction time: from a one-row insert (a millisecond) up to a slow handler.
HANDLER_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

METRIC_NAMES: tuple[str, ...] = (
    "outbox_inbox_events_applied",
    "outbox_inbox_duplicates_dropped",
    "outbox_inbox_events_parked",
    "outbox_inbox_events_held",
    "outbox_inbox_handler_duration_seconds",
    "outbox_inbox_lag",
    "outbox_inbox_up",
)


class InboxPrometheusObserver(InboxObserver):
    """Counts what the inbox runner reports; `render` gives the exposition for ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._exposition = Exposition(registry)
        prom = self._exposition.prom
        self.registry = self._exposition.registry
        r = self.registry
        self.applied_total = prom.Counter(
            "outbox_inbox_events_applied",
            "Events whose handlers ran and committed.",
            ["topic", "type"],
            registry=r,
        )
        self.duplicates_total = prom.Counter(
            "outbox_inbox_duplicates_dropped",
            "Records dropped because their event id was already applied.",
            ["topic"],
            registry=r,
        )
        self.parked_total = prom.Counter(
            "outbox_inbox_events_parked",
            "Events parked (handler failed every attempt, or no event id).",
            ["topic"],
            registry=r,
        )
        self.held_total = prom.Counter(
            "outbox_inbox_events_held",
            "Events held behind a parked event of their key.",
            ["topic"],
            registry=r,
        )
        self.duration = prom.Histogram(
            "outbox_inbox_handler_duration_seconds",
            "Seconds to apply one event (dedup, handlers, offset, commit).",
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.lag_gauge = prom.Gauge(
            "outbox_inbox_lag",
            "Records of a partition not yet applied (high watermark minus stored offset).",
            ["topic", "partition"],
            registry=r,
        )
        self.up = prom.Gauge(
            "outbox_inbox_up", "1 while the component is reachable.", ["component"], registry=r
        )
        self.up.labels("database").set(1)

    def applied(self, topic: str, event_type: str | None, seconds: float) -> None:
        self.applied_total.labels(topic, event_type or "").inc()
        self.duration.observe(seconds)

    def duplicate(self, topic: str) -> None:
        self.duplicates_total.labels(topic).inc()

    def parked(self, topic: str) -> None:
        self.parked_total.labels(topic).inc()

    def held(self, topic: str) -> None:
        self.held_total.labels(topic).inc()

    def lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag_gauge.labels(topic, str(partition)).set(lag)

    def state(self, component: str, up: bool) -> None:
        self.up.labels(component).set(1 if up else 0)

    def render(self) -> tuple[bytes, str]:
        return self._exposition.render()
