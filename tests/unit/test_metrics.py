"""PrometheusObserver: feed it the relay's reports, read the numbers back from the exposition."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from outbox.errors import ConfigurationError
from outbox.ops.metrics import METRIC_NAMES, PrometheusObserver
from outbox.relay.observer import RelayObserver

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(observer: PrometheusObserver) -> Samples:
    body, content_type = observer.render()
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_it_is_a_relay_observer() -> None:
    assert isinstance(PrometheusObserver(), RelayObserver)


def test_counters_by_topic_and_kind() -> None:
    observer = PrometheusObserver()
    observer.published("orders", 3, [0.002, 0.004, 0.2])
    observer.published("orders", 2, [0.5, 70.0])
    observer.published("users", 1, [0.0005])
    observer.publish_failed("orders", "unavailable", 4)
    observer.publish_failed("orders", "rejected", 1)
    observer.parked("orders", 1)
    samples = scrape(observer)
    assert value(samples, "outbox_events_published_total", topic="orders") == 5
    assert value(samples, "outbox_events_published_total", topic="users") == 1
    assert value(samples, "outbox_publish_errors_total", topic="orders", kind="unavailable") == 4
    assert value(samples, "outbox_publish_errors_total", topic="orders", kind="rejected") == 1
    assert value(samples, "outbox_events_parked_total", topic="orders") == 1


def test_publish_delay_histogram() -> None:
    observer = PrometheusObserver()
    observer.published("orders", 4, [0.0005, 0.004, 0.2, 70.0])
    # A writer clock slightly ahead of the database gives a negative delay: counted as 0.
    observer.published("orders", 1, [-0.01])
    samples = scrape(observer)
    assert value(samples, "outbox_publish_delay_seconds_count") == 5
    assert value(samples, "outbox_publish_delay_seconds_sum") == pytest.approx(70.2045)
    assert value(samples, "outbox_publish_delay_seconds_bucket", le="0.001") == 2
    assert value(samples, "outbox_publish_delay_seconds_bucket", le="0.005") == 3
    assert value(samples, "outbox_publish_delay_seconds_bucket", le="0.25") == 4
    assert value(samples, "outbox_publish_delay_seconds_bucket", le="60.0") == 4
    assert value(samples, "outbox_publish_delay_seconds_bucket", le="+Inf") == 5


def test_batches() -> None:
    observer = PrometheusObserver()
    observer.batch(1000, 0.08)
    observer.batch(3, 0.002)
    samples = scrape(observer)
    assert value(samples, "outbox_batch_size_count") == 2
    assert value(samples, "outbox_batch_size_sum") == 1003
    assert value(samples, "outbox_batch_size_bucket", le="5.0") == 1
    assert value(samples, "outbox_batch_duration_seconds_sum") == pytest.approx(0.082)
    assert value(samples, "outbox_batch_duration_seconds_bucket", le="0.005") == 1


def test_gauges_follow_the_latest_report() -> None:
    observer = PrometheusObserver()
    samples = scrape(observer)
    assert value(samples, "outbox_lease_held") == 0
    observer.backlog(42, 12.5)
    observer.lease(True)
    observer.relays(3)
    observer.state("database", True)
    observer.state("broker", False, "connection refused")
    samples = scrape(observer)
    assert value(samples, "outbox_relays_live") == 3
    assert value(samples, "outbox_pending_events") == 42
    assert value(samples, "outbox_oldest_pending_age_seconds") == 12.5
    assert value(samples, "outbox_lease_held") == 1
    assert value(samples, "outbox_up", component="database") == 1
    assert value(samples, "outbox_up", component="broker") == 0
    observer.backlog(0, None)
    observer.lease(False)
    observer.relays(2)
    observer.state("broker", True)
    samples = scrape(observer)
    assert value(samples, "outbox_relays_live") == 2
    assert value(samples, "outbox_pending_events") == 0
    assert value(samples, "outbox_oldest_pending_age_seconds") == 0
    assert value(samples, "outbox_lease_held") == 0
    assert value(samples, "outbox_up", component="broker") == 1


def test_every_declared_family_is_exported_and_no_label_holds_an_id() -> None:
    observer = PrometheusObserver()
    observer.published("t", 1, [0.01])
    observer.publish_failed("t", "rejected", 1)
    observer.parked("t", 1)
    observer.batch(1, 0.01)
    observer.backlog(1, 1.0)
    observer.lease(True)
    observer.state("database", True)
    families = {f.name: f for f in text_string_to_metric_families(observer.render()[0].decode())}
    assert set(METRIC_NAMES) <= set(families)
    labels = {label for f in families.values() for s in f.samples for label in s.labels}
    assert labels <= {"topic", "kind", "component", "le"}


def test_observers_do_not_share_a_registry() -> None:
    first, second = PrometheusObserver(), PrometheusObserver()
    first.published("orders", 2, [])
    assert ("outbox_events_published_total", (("topic", "orders"),)) not in scrape(second)
    assert value(scrape(first), "outbox_events_published_total", topic="orders") == 2


def test_a_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    observer.backlog(7, 1.0)
    assert registry.get_sample_value("outbox_pending_events") == 7
    # The same names twice in one registry is the caller's mistake; prometheus-client says so.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusObserver(registry)


def test_missing_prometheus_client_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"install sqlalchemy-outbox\[metrics\]"):
        PrometheusObserver()
