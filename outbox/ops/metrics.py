"""Prometheus metrics for the relay, as a `RelayObserver`.

prometheus-client is an optional extra (``sqlalchemy-outbox[metrics]``), imported by
`ops.exposition` only, where each observer gets a registry of its own. Labels carry topics and
kinds, never event ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from outbox.ops.exposition import Exposition
from outbox.relay.observer import RelayObserver

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Recording-to-ack delay: from a healthy 1 ms up to a minute-long outage.
DELAY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Every metric family the observer exports (without the _total/_bucket/... sample suffixes).
METRIC_NAMES: tuple[str, ...] = (
    "outbox_events_published",
    "outbox_publish_errors",
    "outbox_events_parked",
    "outbox_pending_events",
    "outbox_oldest_pending_age_seconds",
    "outbox_publish_delay_seconds",
    "outbox_batch_size",
    "outbox_batch_duration_seconds",
    "outbox_lease_held",
    "outbox_relays_live",
    "outbox_partitions_held",
    "outbox_partition_moves",
    "outbox_rebalances",
    "outbox_up",
)


class PrometheusObserver(RelayObserver):
    """Counts what the relay reports; `render` gives the exposition for ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._exposition = Exposition(registry)
        prom = self._exposition.prom
        self.registry = self._exposition.registry
        r = self.registry
        self.published_total = prom.Counter(
            "outbox_events_published", "Events acknowledged by the broker.", ["topic"], registry=r
        )
        self.errors_total = prom.Counter(
            "outbox_publish_errors",
            "Failed sends; kind is unavailable (outage, retried) or rejected (this event).",
            ["topic", "kind"],
            registry=r,
        )
        self.parked_total = prom.Counter(
            "outbox_events_parked",
            "Events set aside after a permanent rejection (see `outbox parked`).",
            ["topic"],
            registry=r,
        )
        self.pending = prom.Gauge(
            "outbox_pending_events", "Events waiting to be published.", registry=r
        )
        self.oldest_age = prom.Gauge(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none): the lag to alert on.",
            registry=r,
        )
        self.delay = prom.Histogram(
            "outbox_publish_delay_seconds",
            "Seconds from recording an event to the broker's acknowledgement.",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "outbox_batch_size", "Events per relay batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = prom.Histogram(
            "outbox_batch_duration_seconds",
            "Seconds to read, send and mark one batch.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.lease_held = prom.Gauge(
            "outbox_lease_held", "1 while this relay is the active one, else 0.", registry=r
        )
        self.relays_live = prom.Gauge(
            "outbox_relays_live",
            "Relays of this table (this one included) that beat within the lease TTL.",
            registry=r,
        )
        self.up = prom.Gauge(
            "outbox_up",
            "1 while the component (database, broker) is reachable, else 0.",
            ["component"],
            registry=r,
        )
        self.partitions_held = prom.Gauge(
            "outbox_partitions_held",
            "Partitioned mode: partitions this relay holds (of 64).",
            registry=r,
        )
        self.partition_moves = prom.Counter(
            "outbox_partition_moves",
            "Partitions this relay claimed, released, or lost (paused past the lease).",
            ["kind"],
            registry=r,
        )
        self.rebalances = prom.Counter(
            "outbox_rebalances",
            "Rebalance rounds that changed the partitions this relay holds.",
            registry=r,
        )
        self.lease_held.set(0)

    def published(self, topic: str, count: int, delays: Sequence[float]) -> None:
        self.published_total.labels(topic).inc(count)
        observe = self.delay.observe
        for seconds in delays:
            # Clocks of the writer and the relay's database may differ by a little.
            observe(max(seconds, 0.0))

    def publish_failed(self, topic: str, kind: str, count: int) -> None:
        self.errors_total.labels(topic, kind).inc(count)

    def parked(self, topic: str, count: int, reason: str = "") -> None:
        self.parked_total.labels(topic).inc(count)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def backlog(self, pending: int, oldest_age_seconds: float | None) -> None:
        self.pending.set(pending)
        self.oldest_age.set(0.0 if oldest_age_seconds is None else max(oldest_age_seconds, 0.0))

    def lease(self, held: bool, released: bool = False) -> None:
        self.lease_held.set(1 if held else 0)

    def state(self, component: str, up: bool, detail: str = "") -> None:
        self.up.labels(component).set(1 if up else 0)

    def relays(self, live: int) -> None:
        self.relays_live.set(live)

    def partitions(self, held: int, claimed: int, released: int, lost: int) -> None:
        self.partitions_held.set(held)
        for kind, count in (("claimed", claimed), ("released", released), ("lost", lost)):
            if count:
                self.partition_moves.labels(kind).inc(count)
        self.rebalances.inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition of this observer's registry and its content type."""
        return self._exposition.render()
